"""What a model executor's ``with`` may hold, checked at validation (the executors'
documentation: `workers.models.textgen`, `workers.models.vllmgen`, `workers.models.imagegen`). A value holding a ``{{ template }}`` is checked
when it is rendered, by the executor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuiflow.engine.expr import clip, has_template

#: dtypes a task may ask for (`workers.models.textgen.DTYPES`: the worker does not import here)
DTYPES = ("auto", "float32", "float16", "bfloat16")
MAX_NEW_TOKENS = 1_000_000

_FIELDS = {
    "transformers": ("model", "prompts", "max_tokens", "temperature", "top_p", "seed", "stop", "dtype", "merge"),
    "vllm": (
        "model", "prompts", "max_tokens", "temperature", "top_p", "seed", "stop", "dtype", "merge",
        "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager",
    ),
    "diffusers": (
        "model", "prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height",
        "num_images", "dtype", "scheduler", "image", "strength", "merge",
    ),
}  # fmt: skip
MAX_IMAGES = 64
MAX_SIDE = 8192


def check_model_spec(executor: str, spec: dict[str, Any], issue_at: Callable[[str, str], None]) -> None:
    """Add an issue (field ``with.<key>``) for each problem of a model executor's `spec`."""
    known = _FIELDS[executor]
    for key in spec:
        if key not in known:
            issue_at(f"with.{key}", f"unknown field of the {executor} executor (known: {', '.join(known)})")
    if not isinstance(spec.get("model"), str) or not spec["model"].strip():
        issue_at("with.model", f"the {executor} executor needs with.model: a model directory or hub id")
    _number(spec, "seed", int, 0, 2**63 - 1, issue_at)
    if "merge" in spec and not isinstance(spec["merge"], bool):
        issue_at("with.merge", f"expected true or false, got {clip(repr(spec['merge']), 40)}")
    dtype = spec.get("dtype", "auto")
    if dtype not in DTYPES and not has_template(dtype):
        issue_at("with.dtype", f"expected one of {', '.join(DTYPES)}, got {clip(repr(dtype), 40)}")
    if executor == "diffusers":
        _check_imagegen(spec, issue_at)
    else:
        _check_textgen(spec, issue_at)
    if executor == "vllm":
        _check_engine_args(spec, issue_at)


def _check_textgen(spec: dict[str, Any], issue_at: Callable[[str, str], None]) -> None:
    prompts = spec.get("prompts")
    if prompts is None:
        issue_at(
            "with.prompts",
            "needs with.prompts: a string, a chat (a list of {role, content}) or a list of them",
        )
    elif not _prompts_ok(prompts):
        issue_at(
            "with.prompts", f"expected a string, a chat or a list of them, got {clip(repr(prompts), 60)}"
        )
    _number(spec, "max_tokens", int, 1, MAX_NEW_TOKENS, issue_at)
    _number(spec, "temperature", float, 0.0, 100.0, issue_at)
    _number(spec, "top_p", float, 0.0, 1.0, issue_at)
    stop = spec.get("stop")
    if stop is not None and not has_template(stop):
        if isinstance(stop, str):
            spec["stop"] = [stop]
        elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
            issue_at("with.stop", "expected a string or a list of non-empty strings")


def _check_engine_args(spec: dict[str, Any], issue_at: Callable[[str, str], None]) -> None:
    _number(spec, "max_model_len", int, 1, 10_000_000, issue_at)
    _number(spec, "gpu_memory_utilization", float, 0.01, 1.0, issue_at)
    _number(spec, "tensor_parallel_size", int, 1, 1024, issue_at)
    if (
        "enforce_eager" in spec
        and not isinstance(spec["enforce_eager"], bool)
        and not has_template(spec["enforce_eager"])
    ):
        issue_at("with.enforce_eager", f"expected true or false, got {clip(repr(spec['enforce_eager']), 40)}")


def _check_imagegen(spec: dict[str, Any], issue_at: Callable[[str, str], None]) -> None:
    for key in ("prompt", "negative_prompt"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            issue_at(f"with.{key}", f"expected a string, got {clip(repr(spec[key]), 40)}")
    if spec.get("prompt") is None:
        issue_at("with.prompt", "the diffusers executor needs with.prompt: the text of the image")
    _number(spec, "steps", int, 1, 1000, issue_at)
    _number(spec, "guidance", float, 0.0, 100.0, issue_at)
    _number(spec, "num_images", int, 1, MAX_IMAGES, issue_at)
    _number(spec, "strength", float, 0.0, 1.0, issue_at)
    image = spec.get("image")
    if image is not None and not (isinstance(image, str) and image.strip()):
        issue_at("with.image", f"expected the path of an image, got {clip(repr(image), 40)}")
    elif image is None and "strength" in spec:
        issue_at("with.strength", "applies to image-to-image only: set with.image too")
    for side in ("width", "height"):
        value = spec.get(side)
        _number(spec, side, int, 8, MAX_SIDE, issue_at)
        if isinstance(value, int) and value % 8:
            issue_at(f"with.{side}", f"must be a multiple of 8 (the pipeline's latent grid), got {value}")
    scheduler = spec.get("scheduler")
    if scheduler is not None and not (isinstance(scheduler, str) and scheduler.isidentifier()):
        issue_at(
            "with.scheduler",
            f"expected the name of a diffusers scheduler class, got {clip(repr(scheduler), 40)}",
        )


def _prompts_ok(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if _is_chat(value):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(p, str) or _is_chat(p) for p in value)


def _is_chat(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value)
    )


def _number(
    spec: dict[str, Any], key: str, kind: type, low: float, high: float, issue_at: Callable[[str, str], None]
) -> None:
    value = spec.get(key)
    if value is None or has_template(value):
        return
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (kind is float or isinstance(value, int))
    )
    if not ok or not low <= value <= high:
        what = "a whole number" if kind is int else "a number"
        issue_at(f"with.{key}", f"expected {what} from {low:g} to {high:g}, got {clip(repr(value), 40)}")
