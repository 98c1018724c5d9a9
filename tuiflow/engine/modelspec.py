"""What a model executor's ``with`` may hold, checked at validation (the executors'
documentation: `workers.models.textgen`). A value holding a ``{{ template }}`` is checked
when it is rendered, by the executor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuiflow.engine.expr import clip, has_template

#: dtypes a task may ask for (`workers.models.textgen.DTYPES`: the worker does not import here)
DTYPES = ("auto", "float32", "float16", "bfloat16")
MAX_NEW_TOKENS = 1_000_000

_TEXTGEN_FIELDS = ("model", "prompts", "max_tokens", "temperature", "top_p", "seed", "stop", "dtype")


def check_model_spec(executor: str, spec: dict[str, Any], issue_at: Callable[[str, str], None]) -> None:
    """Add an issue (field ``with.<key>``) for each problem of a model executor's `spec`."""
    for key in spec:
        if key not in _TEXTGEN_FIELDS:
            issue_at(
                f"with.{key}",
                f"unknown field of the {executor} executor (known: {', '.join(_TEXTGEN_FIELDS)})",
            )
    if not isinstance(spec.get("model"), str) or not spec["model"].strip():
        issue_at("with.model", f"the {executor} executor needs with.model: a model directory or hub id")
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
    _number(spec, "seed", int, 0, 2**63 - 1, issue_at)
    stop = spec.get("stop")
    if stop is not None and not has_template(stop):
        if isinstance(stop, str):
            spec["stop"] = [stop]
        elif not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
            issue_at("with.stop", "expected a string or a list of non-empty strings")
    dtype = spec.get("dtype", "auto")
    if dtype not in DTYPES and not has_template(dtype):
        issue_at("with.dtype", f"expected one of {', '.join(DTYPES)}, got {clip(repr(dtype), 40)}")


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
