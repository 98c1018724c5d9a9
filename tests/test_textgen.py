"""The transformers executor on CPU, with a tiny Llama built in code (no model hub): real
`tuiflow run-local` processes, the model loaded once per slot and kept warm, outputs equal
to transformers' own greedy generation, GenAI attributes on the spans, failures local."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.engine import cli, write_wf

from spool import Home, layout
from tuiflow.engine.client import Client

pytest.importorskip("torch", reason="the model executors' tests need `pip install 'tuiflow[transformers]'`")
pytest.importorskip(
    "transformers", reason="the model executors' tests need `pip install 'tuiflow[transformers]'`"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    from support.tiny_models import tiny_llama as build

    return build(tmp_path_factory.mktemp("models") / "tiny-llama")


def _spans(home: Home, wf: str, task: str) -> list[dict]:
    directory = Client(home).attempt_dir(wf, task)
    lines = Path(layout.attempt_log(directory, layout.SPANS_FILE)).read_text().splitlines()
    return [json.loads(line) for line in lines]


def _run(tmp_path: Path, text: str) -> tuple[Home, str, object]:
    home = Home.open(tmp_path / "home")
    r = cli("run-local", write_wf(tmp_path, text), "--workers", 1, "--json", home=home.root, timeout=300)
    (summary,) = Client(home).store.summaries()
    return home, summary["id"], r


def _reference(model_dir: str, prompts: list[str], max_tokens: int) -> list[str]:
    """transformers' own greedy generation, in this process, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = []
    for prompt in prompts:
        batch = tok([prompt], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        ids = out[0, batch["input_ids"].shape[1] :].tolist()
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
        texts.append(tok.decode(ids, skip_special_tokens=True))
    return texts


def test_five_tasks_on_one_model_load_it_once_and_match_transformers_and_a_chat_uses_its_template(
    tmp_path, tiny_llama
):
    prompts = ["describe a scene", "suggest a style", "hello world", "the quick brown fox", "a quiet harbour"]
    tasks = "\n".join(
        f"  - name: gen{k}\n    executor: transformers\n    with: {{model: {json.dumps(tiny_llama)}, "
        f"prompts: {json.dumps(p)}, max_tokens: 8, seed: 1, merge: false}}"
        for k, p in enumerate(prompts)
    )
    chat = [{"role": "user", "content": "hi there"}]
    tasks += (
        f"\n  - name: ask\n    executor: transformers\n    depends_on: [gen4]\n"
        f"    with: {{model: {json.dumps(tiny_llama)}, prompts: {json.dumps(chat)}, max_tokens: 4}}"
    )
    home, wf, r = _run(tmp_path, f"name: textgen\ntasks:\n{tasks}\n")
    assert r.returncode == 0, r.stderr[-3000:]
    # a chat is rendered with the model's chat template
    ask = next(v for v in Client(home).tasks(wf) if v.name == "ask")
    assert ask.output["texts"] == _reference(tiny_llama, ["<|user|>hi there<|end|><|assistant|>"], 4)
    execute = next(s for s in _spans(home, wf, "ask") if s["name"] == "execute")
    assert execute["attributes"]["gen_ai.operation.name"] == "chat"
    want = _reference(tiny_llama, prompts, 8)
    loads = 0
    for k, prompt in enumerate(prompts):
        view = next(v for v in Client(home).tasks(wf) if v.name == f"gen{k}")
        assert view.state == "completed", view
        output = view.output
        assert output["texts"] == [want[k]], (prompt, output)
        assert output["finish_reasons"][0] in ("stop", "length")
        assert output["output_tokens"][0] <= 8 and output["input_tokens"][0] > 0
        spans = _spans(home, wf, f"gen{k}")
        loads += sum(s["name"] == "model load" for s in spans)
        generation = next(s for s in spans if s["name"] == "execute")
        attrs = generation["attributes"]
        assert attrs["gen_ai.request.model"] == tiny_llama
        assert attrs["gen_ai.request.max_tokens"] == 8 and attrs["gen_ai.request.seed"] == 1
        assert attrs["gen_ai.usage.output_tokens"] == output["output_tokens"][0]
        assert attrs["tuiflow.model.warm"] is (k > 0)
        root = next(s for s in spans if s["parent_id"] is None or s["name"] == "task")
        assert "tuiflow.batch.id" not in root["attributes"]  # merge: false runs each alone
    assert loads == 1  # one worker, one slot: the model stayed loaded for the four others


def test_eight_tasks_of_one_model_run_as_one_merged_call(tmp_path, tiny_llama):
    prompts = [f"{p} {k}" for k, p in enumerate(["describe a scene", "suggest a style"] * 4)]
    tasks = "\n".join(
        f"  - name: gen{k}\n    executor: transformers\n    with: {{model: {json.dumps(tiny_llama)}, "
        f"prompts: {json.dumps(p)}, max_tokens: 6}}"
        for k, p in enumerate(prompts)
    )
    home, wf, r = _run(tmp_path, f"name: merged\ntasks:\n{tasks}\n")
    assert r.returncode == 0, r.stderr[-3000:]
    want = _reference(tiny_llama, prompts, 6)
    views = {v.name: v for v in Client(home).tasks(wf)}
    batch_ids, sizes, generations, loads = set(), set(), 0, 0
    for k in range(8):
        assert views[f"gen{k}"].state == "completed", views[f"gen{k}"]
        assert views[f"gen{k}"].output["texts"] == [want[k]]  # its own output, as if alone
        spans = _spans(home, wf, f"gen{k}")
        root = next(s for s in spans if s["name"] == "task")
        batch_ids.add(root["attributes"]["tuiflow.batch.id"])
        sizes.add(root["attributes"]["tuiflow.batch.size"])
        assert root["attributes"]["gen_ai.usage.output_tokens"] == views[f"gen{k}"].output["output_tokens"][0]
        generations += sum(s["name"] == "execute" for s in spans)
        loads += sum(s["name"] == "model load" for s in spans)
        assert any(s["name"] == "write outputs" for s in spans)  # each its own output
    assert len(batch_ids) == 1 and sizes == {8}
    assert generations == 1 and loads == 1  # one call for the eight, written once


def test_merge_max_bounds_a_batch(tmp_path, tiny_llama, procs):
    """A worker started with --merge-max 3 runs 7 tasks of one model as calls of 3, 3 and 1."""
    from support.engine import start, wait_for

    from tuiflow.engine.compiler import load_workflow

    home = Home.open(tmp_path / "home")
    tasks = "".join(
        f"  - {{name: gen{k}, executor: transformers, with: {{model: {json.dumps(tiny_llama)}, "
        f"prompts: 'hello {k}', max_tokens: 2}}}}\n"
        for k in range(7)
    )
    wf = Client(home).submit(load_workflow(write_wf(tmp_path, f"name: m\ntasks:\n{tasks}")))
    procs.append(start("coordinator", home=home.root, log=tmp_path / "c.log"))
    procs.append(start("worker", "--merge-max", 3, home=home.root, log=tmp_path / "w.log"))
    run = wait_for(lambda: (r := Client(home).run(wf)).terminal and r, timeout=120, what="the workflow")
    assert run.state == "completed", (tmp_path / "w.log").read_text()[-3000:]
    sizes: dict[str, int] = {}
    for k in range(7):
        attrs = next(s for s in _spans(home, wf, f"gen{k}") if s["name"] == "task")["attributes"]
        sizes[attrs.get("tuiflow.batch.id", f"alone{k}")] = attrs.get("tuiflow.batch.size", 1)
    assert sorted(sizes.values()) == [1, 3, 3]


def test_a_model_that_does_not_exist_fails_its_task_and_the_next_one_runs(tmp_path, tiny_llama, monkeypatch):
    """...with the host's traceback in the failed task's stderr log (not in the worker's
    output), and no file of the hosts' left behind in the temporary directory."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    text = (
        "name: bad\ntasks:\n"
        f"  - {{name: missing, executor: transformers, with: {{model: {json.dumps(str(tmp_path / 'nope'))}, prompts: hi}}}}\n"
        f"  - {{name: fine, executor: transformers, "
        f"with: {{model: {json.dumps(tiny_llama)}, prompts: hi, max_tokens: 2}}}}\n"
    )
    home, wf, r = _run(tmp_path, text)
    views = {v.name: v for v in Client(home).tasks(wf)}
    assert views["missing"].state == "failed" and "nope" in (views["missing"].reason or ""), views["missing"]
    assert views["fine"].state == "completed", views["fine"]
    assert "Traceback" not in r.stderr
    stderr = (Path(Client(home).attempt_dir(wf, "missing")) / layout.STDERR_FILE).read_text()
    assert "Traceback" in stderr and "nope" in stderr
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(
    ("with_", "field", "message"),
    [
        ("{prompts: hi}", "with.model", "needs with.model"),
        ("{model: m}", "with.prompts", "needs with.prompts"),
        ("{model: m, prompts: hi, max_tokens: 0}", "with.max_tokens", "expected a whole number from 1"),
        ("{model: m, prompts: hi, temperature: -1}", "with.temperature", "from 0 to 100"),
        ("{model: m, prompts: hi, dtype: float8}", "with.dtype", "expected one of auto"),
        ("{model: m, prompts: hi, max_token: 3}", "with.max_token", "unknown field"),
        ("{model: m, prompts: [[1, 2]]}", "with.prompts", "expected a string, a chat"),
    ],
)
def test_what_the_executor_needs_is_checked_at_validation(tmp_path, with_, field, message):
    path = write_wf(tmp_path, f"name: v\ntasks:\n  - {{name: t, executor: transformers, with: {with_}}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "validate", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert field in r.stderr and message in r.stderr, r.stderr


_ONE_MODEL_PER_HOST = """
import workers.executors.models as models

models.TransformersExecutor.one_model_per_host = True  # test-only: as the vllm executor
"""


# (the default, 2 per slot, keeps A and B: 2 loads; see test_worker_parts for the LRU itself)
@pytest.mark.parametrize(("per_slot", "one_per_host", "loads"), [(1, False, 3), (2, True, 3)])
def test_models_per_slot_bounds_what_a_host_keeps(
    tmp_path, tiny_llama, procs, monkeypatch, per_slot, one_per_host, loads
):
    """A → B → A on one slot: kept both (the default 2), B evicts A (1) and A loads again;
    an executor whose host holds one model (vllm's) ends the host for B and again for A."""
    import shutil

    from support.engine import start, wait_for

    if one_per_host:  # loaded into the worker process through PYTHONPATH
        (tmp_path / "inject").mkdir()
        (tmp_path / "inject" / "sitecustomize.py").write_text(_ONE_MODEL_PER_HOST)
        monkeypatch.setenv("PYTHONPATH", str(tmp_path / "inject"))

    other = shutil.copytree(tiny_llama, tmp_path / "other-llama")
    home = Home.open(tmp_path / "home")
    steps = [("one", tiny_llama, None), ("two", str(other), "one"), ("three", tiny_llama, "two")]
    tasks = "".join(
        f"  - name: {name}\n    executor: transformers\n"
        + (f"    depends_on: [{after}]\n" if after else "")
        + f"    with: {{model: {json.dumps(model)}, prompts: hi, max_tokens: 2}}\n"
        for name, model, after in steps
    )
    from tuiflow.engine.compiler import load_workflow

    wf = Client(home).submit(load_workflow(write_wf(tmp_path, f"name: lru\ntasks:\n{tasks}")))
    procs.append(start("coordinator", home=home.root, log=tmp_path / "c.log"))
    procs.append(start("worker", "--models-per-slot", per_slot, home=home.root, log=tmp_path / "w.log"))
    run = wait_for(lambda: (r := Client(home).run(wf)).terminal and r, timeout=120, what="the workflow")
    assert run.state == "completed", (tmp_path / "w.log").read_text()[-3000:]
    assert sum(s["name"] == "model load" for name, _, _ in steps for s in _spans(home, wf, name)) == loads


@pytest.mark.parametrize(
    ("worker_args", "gpus", "models", "loads"),
    [
        # two slots: each model stays in the slot that loaded it (A, A, B, B, A: two loads)
        (["--slots", 2], 0, "AABBA", 2),
        # two slots, two GPUs, one each: a slot gets its own GPU back, its host stays warm
        (["--slots", 2, "--gpus", "0,1"], 1, "AAAA", 1),
    ],
)
def test_a_task_goes_to_the_slot_that_holds_its_model(
    tmp_path, tiny_llama, procs, worker_args, gpus, models, loads
):
    import shutil

    from support.engine import start, wait_for

    from tuiflow.engine.compiler import load_workflow

    paths = {"A": tiny_llama, "B": str(shutil.copytree(tiny_llama, tmp_path / "b-llama"))}
    home = Home.open(tmp_path / "home")
    tasks = "".join(
        f"  - name: t{k}\n    executor: transformers\n    gpus: {gpus}\n"
        + (f"    depends_on: [t{k - 1}]\n" if k else "")
        + f"    with: {{model: {json.dumps(paths[m])}, prompts: hi, max_tokens: 2}}\n"
        for k, m in enumerate(models)
    )
    wf = Client(home).submit(load_workflow(write_wf(tmp_path, f"name: route\ntasks:\n{tasks}")))
    procs.append(start("coordinator", home=home.root, log=tmp_path / "c.log"))
    procs.append(start("worker", *worker_args, home=home.root, log=tmp_path / "w.log"))
    run = wait_for(lambda: (r := Client(home).run(wf)).terminal and r, timeout=120, what="the workflow")
    assert run.state == "completed", (tmp_path / "w.log").read_text()[-3000:]
    found = sum(s["name"] == "model load" for k in range(len(models)) for s in _spans(home, wf, f"t{k}"))
    assert found == loads


_INJECT_OOM = '''
"""Test-only: CUDA running out of memory on a model call of more than OOM_ABOVE tasks, or
on any call with a "huge" prompt (a task that does not fit even alone)."""
import os

import workers.models.textgen as textgen

_generate_batch = textgen.generate_batch


def generate_batch(loaded, specs):
    if len(specs) > int(os.environ["OOM_ABOVE"]) or any("huge" in str(s["prompts"]) for s in specs):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
    return _generate_batch(loaded, specs)


textgen.generate_batch = generate_batch
'''


def test_out_of_memory_halves_a_batch_and_fails_only_the_task_that_does_not_fit(
    tmp_path, tiny_llama, procs, monkeypatch
):
    """A batch of 8 on a card that holds 2 at a time: halves are tried (8 -> 4 -> 2), the
    task that does not fit even alone fails with error.type cuda_oom, the other 7 complete
    with their own outputs, and the slot's host starts afresh for the next task."""
    from support.engine import start, wait_for

    from tuiflow.engine.compiler import load_workflow

    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_INJECT_OOM)
    monkeypatch.setenv("PYTHONPATH", str(inject))
    monkeypatch.setenv("OOM_ABOVE", "2")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    home = Home.open(tmp_path / "home")
    prompts = [f"hello {k}" for k in range(7)]
    prompts.insert(5, "a huge prompt")
    tasks = "".join(
        f"  - {{name: t{k}, executor: transformers, with: {{model: {json.dumps(tiny_llama)}, "
        f"prompts: {json.dumps(p)}, max_tokens: 3}}}}\n"
        for k, p in enumerate(prompts)
    )
    wf = Client(home).submit(load_workflow(write_wf(tmp_path, f"name: oom\ntasks:\n{tasks}")))
    procs.append(start("coordinator", home=home.root, log=tmp_path / "c.log"))
    procs.append(start("worker", home=home.root, log=tmp_path / "w.log"))
    run = wait_for(lambda: (r := Client(home).run(wf)).terminal and r, timeout=120, what="the workflow")
    views = {v.name: v for v in Client(home).tasks(wf)}
    want = _reference(tiny_llama, prompts, 3)
    for k, prompt in enumerate(prompts):
        if prompt == "a huge prompt":
            assert views[f"t{k}"].state == "failed" and "out of memory" in views[f"t{k}"].reason
            root = next(s for s in _spans(home, wf, f"t{k}") if s["name"] == "task")
            assert root["attributes"]["error.type"] == "cuda_oom"
        else:
            assert views[f"t{k}"].state == "completed", views[f"t{k}"]
            assert views[f"t{k}"].output["texts"] == [want[k]]
    assert run.state == "failed"
    calls = sum(s["name"] == "execute" for k in range(8) for s in _spans(home, wf, f"t{k}"))
    assert calls == 4  # three pairs and the huge task's partner alone

    after = Client(home).submit(
        load_workflow(
            write_wf(tmp_path, tasks.split("\n")[0].join(["name: next\ntasks:\n", "\n"]), "next.yaml")
        )
    )
    wait_for(lambda: Client(home).run(after).terminal, timeout=60, what="the next workflow")
    (view,) = Client(home).tasks(after)
    assert view.state == "completed", view
    assert any(s["name"] == "model load" for s in _spans(home, after, "t0"))  # a fresh host
    assert not list((tmp_path / "tmp").iterdir())  # the hosts' output file has no name, restarts or not
