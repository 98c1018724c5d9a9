"""Text generation with transformers (`generate`), for laptops and CPUs where vLLM is absent.

What a task's ``with`` holds (checked at validation, `tuiflow.engine.modelspec`)::

    model         a local directory or a hub id           (required)
    prompts       a string, a list of chat messages ([{role, content}, ...]), or a list of
                  either; chat messages are rendered with the model's chat template
    max_tokens    new tokens per prompt (default 64)
    temperature   0 (the default) is greedy; above 0 samples
    top_p         nucleus sampling (with temperature > 0)
    seed          seeds sampling (torch.manual_seed) so a run can be repeated
    stop          strings: the text is cut at the first one generated
    dtype         auto (fp16/bf16 on CUDA, fp32 on CPU), float32, float16, bfloat16

The output: ``texts``, ``finish_reasons`` ("stop": end of sequence or a stop string;
"length": max_tokens reached), ``input_tokens``, ``output_tokens``, ``token_ids`` (per
prompt) and ``tokens_per_s`` (generated tokens over generation seconds).

Tasks of one model run as one merged call (`generate_batch`): their prompts are padded on
the left into one batch, so greedy ids are those each prompt gets alone.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from analyzer import contract as c
from workers.models.libraries import require
from workers.models.residency import module_bytes

#: the dtypes a task may name
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_MAX_TOKENS = 64


@dataclasses.dataclass
class LoadedModel:
    tokenizer: Any
    model: Any
    device: str

    def footprint(self) -> int:
        return module_bytes(self.model)


def key(spec: dict[str, Any]) -> tuple[str, ...]:
    """What two tasks must share to share a loaded model."""
    return ("transformers", str(spec["model"]), str(spec.get("dtype", "auto")))


def _libraries() -> list[Any]:
    return require("transformers", "torch", "transformers")


def load(spec: dict[str, Any]) -> LoadedModel:
    """Load the tokenizer and the model of `spec` onto the host's device."""
    torch, transformers = _libraries()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch_dtype(torch, spec.get("dtype", "auto"), device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model"])
    tokenizer.padding_side = "left"  # generation continues each prompt from its right end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype).to(device).eval()
    return LoadedModel(tokenizer, model, device)


def torch_dtype(torch: Any, name: str, device: str) -> Any:
    """The torch dtype a task names; "auto": bf16 (or fp16) on CUDA, fp32 on a CPU."""
    if name != "auto":
        return getattr(torch, name)
    if device != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _prompt_texts(tokenizer: Any, prompts: Any) -> list[tuple[str, bool]]:
    """Each prompt as text, and whether it is a rendered chat (a list of {role, content}
    through the chat template, which already holds the special tokens the model expects)."""
    if isinstance(prompts, str) or _is_chat(prompts):
        prompts = [prompts]
    return [
        (tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False), True)
        if _is_chat(p)
        else (p, False)
        for p in prompts
    ]


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def merge_key(spec: dict[str, Any]) -> tuple[str, ...]:
    """What tasks must share to run in one merged call: the model (`key`); prompts with
    other sampling settings than their batch's first are generated in a call of their own
    inside the batch (`generate_batch`)."""
    return key(spec)


def _sampling(spec: dict[str, Any]) -> tuple[int, float, float, int | None]:
    """What one `generate` call applies to all its prompts: max tokens, temperature,
    top_p and seed (transformers has no per-prompt setting for them)."""
    seed = spec.get("seed")
    return (
        int(spec.get("max_tokens", DEFAULT_MAX_TOKENS)),
        float(spec.get("temperature", 0.0)),
        float(spec.get("top_p", 1.0)),
        int(seed) if seed is not None else None,
    )


def generate_batch(
    loaded: LoadedModel, specs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[tuple]]:
    """Generate for every prompt of every spec: (each spec's output, the shared timed
    phases). Specs that sample alike share one `generate` call (one generation phase);
    others get one call each, in order."""
    torch, _ = _libraries()
    tok = loaded.tokenizer
    t0 = time.time()
    texts = [_prompt_texts(tok, spec["prompts"]) for spec in specs]
    phases: list[tuple] = [(c.PROMPT_SPAN, t0, time.time(), {})]
    calls: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        sampling = _sampling(spec)
        # greedy prompts merge whatever their seeds; a sampled one gets a call of its own,
        # so that its seed gives what it gives alone
        calls.setdefault(sampling if sampling[1] == 0 else (*sampling, i), []).append(i)
    outputs: list[dict[str, Any]] = [{} for _ in specs]
    for sampling, members in calls.items():
        prompts = [text for i in members for text in texts[i]]
        t1 = time.time()
        stops = [specs[i].get("stop") or [] for i in members for _ in texts[i]]
        result = _generate(torch, loaded, prompts, sampling, stops)
        t2 = time.time()
        at = 0
        for i, n in ((i, len(texts[i])) for i in members):
            outputs[i] = {name: values[at : at + n] for name, values in result.items()}
            outputs[i]["tokens_per_s"] = sum(outputs[i]["output_tokens"]) / (t2 - t1) if t2 > t1 else 0.0
            at += n
        phases.append((c.EXECUTE_SPAN, t1, t2, _attributes(specs[members[0]], sampling, result)))
    return outputs, phases


def _generate(
    torch: Any, loaded: LoadedModel, prompts: list[tuple[str, bool]], sampling: tuple, stops: list[list[str]]
) -> dict[str, list]:
    tok, model = loaded.tokenizer, loaded.model
    max_tokens, temperature, top_p, seed = sampling[:4]
    # a rendered chat gets no second BOS: the same token ids vLLM's LLM.chat feeds the model
    encoded = [tok(text, add_special_tokens=not chat) for text, chat in prompts]
    batch = tok.pad(encoded, padding=True, return_tensors="pt").to(loaded.device)
    options: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        options = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id, **options)
    return _decode(tok, out[:, batch["input_ids"].shape[1] :], batch["attention_mask"], stops)


def _attributes(spec: dict[str, Any], sampling: tuple, result: dict[str, list]) -> dict[str, Any]:
    """The OpenTelemetry GenAI attributes of one generation call."""
    max_tokens, temperature, _, seed = sampling[:4]
    attributes = {
        c.ATTR_GENAI_OPERATION: "text_completion" if not _is_chat(spec["prompts"]) else "chat",
        c.ATTR_GENAI_MODEL: str(spec["model"]),
        c.ATTR_GENAI_MAX_TOKENS: max_tokens,
        c.ATTR_GENAI_TEMPERATURE: temperature,
        c.ATTR_GENAI_INPUT_TOKENS: sum(result["input_tokens"]),
        c.ATTR_GENAI_OUTPUT_TOKENS: sum(result["output_tokens"]),
        c.ATTR_GENAI_FINISH_REASONS: list(result["finish_reasons"]),
    }
    if "top_p" in spec:
        attributes[c.ATTR_GENAI_TOP_P] = float(spec["top_p"])
    if seed is not None:
        attributes[c.ATTR_GENAI_SEED] = seed
    return attributes


def _decode(tok: Any, new: Any, attention: Any, stops: list[list[str]]) -> dict[str, list]:
    """Per prompt: text, finish reason, token counts and the generated ids (`stops`: each
    prompt's stop strings)."""
    texts, reasons, outputs, ids_out = [], [], [], []
    for row, stop in zip(new.tolist(), stops, strict=True):
        ended = tok.eos_token_id in row
        ids = row[: row.index(tok.eos_token_id)] if ended else [t for t in row if t != tok.pad_token_id]
        text = tok.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            text, ended = text[:cut], True
        texts.append(text)
        reasons.append("stop" if ended else "length")
        outputs.append(len(ids))
        ids_out.append(ids)
    return {
        "texts": texts,
        "finish_reasons": reasons,
        "input_tokens": [int(n) for n in attention.sum(dim=1).tolist()],
        "output_tokens": outputs,
        "token_ids": ids_out,
    }
