"""The GPU analysis (`analyzer.gpu`): lanes, GPU-seconds per task, per-model throughput, on
synthetic traces whose answers can be worked out by hand; its view and its place in the
report; `tuiflow trace analyze -f gpu`; what `tuiflow doctor` says each slot holds."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from analyzer import analyze, build_report, load_trace, render, to_text
from analyzer.contract import READY_SPAN
from analyzer.fmt import fmt_model, fmt_residency, fmt_share
from analyzer.gpu import gpu_usage
from analyzer.gpuview import render_gpu
from analyzer.lanes import lane_segments, state_seconds
from analyzer.synthetic import DEFAULT_EPOCH, Child, SyntheticWorkflow, model_call
from spool import Home
from spool.liveness import HeartbeatWriter
from tuiflow.cli.main import app
from tuiflow.fixtures import demo

T0 = DEFAULT_EPOCH


def usage_of(wf: SyntheticWorkflow):
    return gpu_usage(load_trace(wf.dir))


def lane(usage, worker: str, gpu: int | None):
    return next(x for x in usage.lanes if (x.worker, x.gpu) == (worker, gpu))


def task(usage, name: str):
    return next(t for t in usage.tasks if t.task == name)


def batch_of_four(wf: SyntheticWorkflow, *, ids: bool = True, members: int = 4) -> None:
    """Four diffusers tasks merged into one call on GPU 0: a 1 s load, then a 2 s
    generation making 4 images, written once under the first member."""
    for k in range(members):
        children = model_call(1.0, load=1.0, execute=2.0, model="/m/sd", images=4) if k == 0 else []
        children.append(Child(READY_SPAN, 4.0, 4.1))
        wf.attempt(
            f"v[{k}]",
            start=0.5,
            end=4.2,
            ready_at=0.0,
            executor="diffusers",
            gpus=[0],
            batch_id="b1" if ids else None,
            batch_size=4,
            model="/m/sd",
            children=children,
        )


# --- GPU-seconds per task ------------------------------------------------------------------------


def test_a_merged_batch_splits_its_load_and_generation_equally(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    batch_of_four(wf)
    usage = usage_of(wf)
    assert [t.task for t in usage.tasks] == ["v[0]", "v[1]", "v[2]", "v[3]"]
    for t in usage.tasks:
        assert (t.batch_size, t.devices) == (4, 1)
        assert t.load_seconds == pytest.approx(0.25)
        assert t.execute_seconds == pytest.approx(0.5)
        assert t.gpu_seconds == pytest.approx(0.75)  # (1 s + 2 s) / 4
    assert usage.gpu_seconds == pytest.approx(3.0)
    gpu0 = lane(usage, "w1", 0)
    # the batch's one generation counts once on its lane, not once per member
    assert (gpu0.busy_seconds, gpu0.loading_seconds) == pytest.approx((2.0, 1.0))
    assert gpu0.attempts == 4


def test_the_batch_size_falls_back_to_the_attribute_when_members_are_missing(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    batch_of_four(wf, members=1)  # the other three members' files are gone
    assert task(usage_of(wf), "v[0]").gpu_seconds == pytest.approx(0.75)
    wf = SyntheticWorkflow(tmp_path / "wf2")
    batch_of_four(wf, ids=False, members=1)  # no batch id at all, a size
    assert task(usage_of(wf), "v[0]").gpu_seconds == pytest.approx(0.75)


def test_gpu_seconds_count_every_gpu_and_every_attempt(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    # tensor parallel on two GPUs: 0.5 s load + 2 s generation on each
    wf.attempt("tp", start=0.0, end=3.0, executor="vllm", gpus=[0, 1], model="m",
               children=model_call(0.1, load=0.5, execute=2.0, output_tokens=100))  # fmt: skip
    # a retried task: both attempts held the GPU
    wf.attempt("flaky", 0, start=3.0, end=4.0, executor="transformers", gpus=[0], outcome="failed",
               children=model_call(3.1, execute=0.5))  # fmt: skip
    wf.attempt("flaky", 1, start=4.0, end=5.0, executor="transformers", gpus=[0],
               children=model_call(4.1, execute=0.75))  # fmt: skip
    # a shell task on a GPU: its execute span is its busy time; it names no model
    wf.attempt("train", start=0.0, end=2.0, executor="shell", gpus=[2],
               children=[Child("execute", 0.5, 1.5)])  # fmt: skip
    usage = usage_of(wf)
    assert task(usage, "tp").gpu_seconds == pytest.approx(5.0)
    assert task(usage, "tp").devices == 2
    assert lane(usage, "w1", 0).busy_seconds == pytest.approx(2.0 + 0.5 + 0.75)
    assert lane(usage, "w1", 1).busy_seconds == pytest.approx(2.0)
    flaky = task(usage, "flaky")
    assert (flaky.attempts, flaky.gpu_seconds) == (2, pytest.approx(1.25))
    assert task(usage, "train").gpu_seconds == pytest.approx(1.0)
    assert lane(usage, "w1", 2).busy_seconds == pytest.approx(1.0)
    assert [m.executor for m in usage.models] == ["transformers", "vllm"]  # not the shell task
    assert usage.gpu_seconds == pytest.approx(5.0 + 1.25 + 1.0)


def test_spans_nested_below_a_child_still_count(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    nested = Child(
        "executor setup", 0.1, 2.0, children=[Child("model load", 0.2, 0.7), Child("execute", 0.8, 1.8)]
    )
    wf.attempt("deep", start=0.0, end=2.0, executor="transformers", gpus=[0], children=[nested])
    wf.attempt(
        "flat", start=2.0, end=3.0, executor="transformers", gpus=[0], children=model_call(2.0, execute=0.5)
    )
    usage = usage_of(wf)
    assert task(usage, "deep").gpu_seconds == pytest.approx(1.5)
    assert task(usage, "flat").gpu_seconds == pytest.approx(0.5)
    assert lane(usage, "w1", 0).busy_seconds == pytest.approx(1.5)


def test_model_runs_without_gpus_have_a_cpu_lane_and_count_as_one_device(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    wf.attempt("chat", start=1.0, end=3.0, executor="transformers", model="/models/tiny-llama/",
               children=model_call(1.1, load=0.5, execute=1.0, output_tokens=10))  # fmt: skip
    wf.attempt("plain", start=0.0, end=1.0, executor="shell")  # neither a GPU nor a model
    usage = usage_of(wf)
    [cpu] = usage.lanes
    assert (cpu.worker, cpu.gpu, cpu.label) == ("w1", None, "cpu")
    assert (cpu.utilization, cpu.memory_peak_bytes) == (None, None)
    [row] = usage.tasks
    assert (row.task, row.devices, row.gpu_seconds) == ("chat", 0, pytest.approx(1.5))
    text = to_text(render_gpu(usage), width=120)
    assert "cpu" in text and "tiny-llama" in text and "/models" not in text


# --- lanes -------------------------------------------------------------------------------------------


def test_a_lane_idle_while_a_gpu_task_waited_is_the_schedulers_fault(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    wf.attempt("a", start=0.0, end=2.0, queue="gpu", executor="transformers", gpus=[0],
               children=model_call(0.0, load=1.0, execute=0.5))  # fmt: skip
    # queued at 2.5, started at 4.0: 1.5 s with GPU 0 free and work waiting
    wf.attempt("b", start=4.0, end=5.0, ready_at=2.5, queue="gpu", executor="transformers", gpus=[0],
               children=model_call(4.0, execute=1.0))  # fmt: skip
    # waiting meanwhile, but no use to GPU 0: a CPU task, and a GPU task of a queue w1 never serves
    wf.attempt("cpu-job", start=4.5, end=4.6, ready_at=2.0, queue="gpu", worker="w2", executor="shell")
    wf.attempt("other", start=4.5, end=4.6, ready_at=2.0, queue="big", worker="w2", gpus=[0])
    usage = usage_of(wf)
    gpu0 = lane(usage, "w1", 0)
    assert (gpu0.start, gpu0.end) == (T0, T0 + 5.0)
    assert gpu0.busy_seconds == pytest.approx(1.5)
    assert gpu0.loading_seconds == pytest.approx(1.0)
    assert gpu0.other_seconds == pytest.approx(0.5)  # held by "a" after its generation
    assert gpu0.idle_claimable_seconds == pytest.approx(1.5)
    assert gpu0.idle_seconds == pytest.approx(0.5)  # 2.0 -> 2.5: nothing to do
    total = gpu0.busy_seconds + gpu0.loading_seconds + gpu0.other_seconds
    assert total + gpu0.idle_claimable_seconds + gpu0.idle_seconds == pytest.approx(gpu0.window_seconds)
    assert [s.state for s in gpu0.segments] == ["loading", "busy", "other", "idle", "claimable", "busy"]
    # w2's own lane waited on nothing it could have taken
    assert lane(usage, "w2", 0).idle_claimable_seconds == 0.0


def test_load_share_utilisation_and_memory(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    wf.attempt("a", start=0.0, end=3.0, executor="vllm", gpus=[2, 5], model="m",
               children=model_call(0.0, load=1.0, execute=1.0, utilization=[0.1, 0.5], memory=[7, 9]))  # fmt: skip
    wf.attempt("b", start=3.0, end=7.0, executor="vllm", gpus=[5], model="m",
               children=model_call(3.0, execute=3.0, utilization=[0.9], memory=[8]))  # fmt: skip
    usage = usage_of(wf)
    gpu5 = lane(usage, "w1", 5)
    assert gpu5.load_share == pytest.approx(1.0 / (1.0 + 4.0))
    assert gpu5.utilization == pytest.approx((0.5 * 1.0 + 0.9 * 3.0) / 4.0)  # weighted by duration
    assert gpu5.memory_peak_bytes == 9
    assert lane(usage, "w1", 2).utilization == pytest.approx(0.1)
    assert usage.load_share == pytest.approx(2.0 / (2.0 + 5.0))  # both lanes of "a" loaded
    [model] = usage.models
    assert (model.calls, model.loads) == (2, 1)
    assert model.load_share == pytest.approx(1.0 / (1.0 + 4.0))  # wall seconds, not per GPU


def test_tokens_and_images_per_second_per_model(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    wf.attempt("t1", start=0.0, end=2.0, executor="transformers", gpus=[0], model="llm",
               children=model_call(0.0, execute=1.5, output_tokens=90))  # fmt: skip
    wf.attempt("t2", start=2.0, end=3.0, executor="transformers", gpus=[0], model="llm",
               children=model_call(2.0, execute=0.5, output_tokens=30))  # fmt: skip
    batch_of_four(wf)
    by_model = {m.model: m for m in usage_of(wf).models}
    llm = by_model["llm"]
    assert (llm.output_tokens, llm.images) == (120, None)
    assert llm.tokens_per_second == pytest.approx(60.0)  # 120 tokens / 2 s generating
    sd = by_model["/m/sd"]
    assert (sd.images, sd.attempts, sd.calls) == (4, 4, 1)
    assert sd.images_per_second == pytest.approx(2.0)  # 4 images / 2 s
    assert sd.tokens_per_second is None


def test_lane_states_take_the_first_that_holds():
    segs = lane_segments(
        (0.0, 10.0),
        busy=[(2.0, 4.0), (3.0, 5.0)],  # overlapping intervals of one kind merge
        loading=[(1.0, 3.0)],  # under busy from 2.0
        held=[(1.0, 6.0)],
        waiting=[(5.5, 8.0), (-5.0, 0.5)],  # clipped to the window
    )
    assert [(s.start, s.end, s.state) for s in segs] == [
        (0.0, 0.5, "claimable"),
        (0.5, 1.0, "idle"),
        (1.0, 2.0, "loading"),
        (2.0, 5.0, "busy"),
        (5.0, 6.0, "other"),
        (6.0, 8.0, "claimable"),
        (8.0, 10.0, "idle"),
    ]
    assert state_seconds(segs) == {"busy": 3.0, "loading": 1.0, "other": 1.0, "claimable": 2.5, "idle": 2.5}
    assert lane_segments((1.0, 1.0), busy=[], loading=[], held=[(1.0, 1.0)], waiting=[]) == []


# --- the view and the report -------------------------------------------------------------------


def test_no_gpu_and_no_model_says_what_would_fill_the_view(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    wf.attempt("a", start=0.0, end=1.0)
    analysis = analyze(load_trace(wf.dir))
    assert analysis.gpu.empty
    text = " ".join(to_text(render(analysis, "gpu"), width=100).split())
    assert "GPU: no attempt held a GPU or ran a model executor (diffusers, transformers, vllm)" in text
    assert "`gpus:`" in text
    assert "GPU lanes" not in to_text(render(analysis, "rich"), width=140)
    assert build_report(analysis)["gpu"]["lanes"] == []


def test_the_report_carries_the_gpu_section_without_lane_segments(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf")
    batch_of_four(wf)
    analysis = analyze(load_trace(wf.dir))
    report = json.loads(render(analysis, "json"))
    gpu = report["gpu"]
    assert gpu["gpu_seconds"] == pytest.approx(3.0)
    assert set(gpu["lanes"][0]) >= {"worker", "gpu", "busy_seconds", "idle_claimable_seconds", "load_share"}
    assert "segments" not in gpu["lanes"][0]
    assert gpu["tasks"][0]["gpu_seconds"] == pytest.approx(0.75)
    assert gpu["models"][0]["images_per_second"] == pytest.approx(2.0)
    assert "GPU lanes" in to_text(render(analysis, "rich"), width=140)


@pytest.mark.parametrize("width", [80, 100, 140])
def test_the_view_fits_its_width(tmp_path, width):
    wf = SyntheticWorkflow(tmp_path / "wf")
    batch_of_four(wf)
    wf.attempt("chat", start=5.0, end=6.0, worker="a-rather-long-worker-name-on-gpu-node-7",
               executor="transformers", gpus=[1], children=model_call(5.0, execute=0.5, output_tokens=5))  # fmt: skip
    text = to_text(render_gpu(usage_of(wf), limit=2), width=width)
    assert max(map(len, text.splitlines())) <= width
    assert "… 3 more task(s)" in " ".join(text.split())
    bars = [line for line in text.splitlines() if "█" in line and "idle while" not in line]  # not the legend
    assert len(bars) == 2  # one per lane


def test_fmt_helpers_for_models_and_shares():
    assert fmt_model("/models/tiny-llama/") == "tiny-llama"
    assert fmt_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen2.5-0.5B-Instruct"
    assert fmt_model(None) == "-"
    assert (fmt_share(0.184), fmt_share(0.001), fmt_share(None)) == ("18%", "<1%", "-")
    held = {
        "1": [["diffusers", "/m/sd", "float16"]],
        "0": [["transformers", "/m/llama", "f"], ["d", "/m/sd", "f"]],
    }
    assert fmt_residency(held) == "0: sd, llama · 1: sd"  # most recently used first
    assert fmt_residency({"0": [], "10": [["x", "/m/a"]], "2": [["x", "/m/b"]]}) == "0: - · 2: b · 10: a"
    # heartbeats are other processes' records: junk is skipped, never raised
    for junk in (None, {}, [], "models", {"0": "llama"}, {"0": [[1]], "1": [None, 5]}):
        fmt_residency(junk)
    assert fmt_residency(None) == "-"


# --- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Home:
    return demo.build(str(tmp_path_factory.mktemp("demo") / "home"), fanout_tasks=10)


def tuiflow(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return result.output


def test_trace_analyze_gpu_prints_lanes_models_and_tasks(demo_home):
    out = tuiflow("trace", "analyze", demo.IDS["inference"], "-f", "gpu", "--home", demo_home.root)
    flat = " ".join(out.split())
    assert "GPU time 25.8 s over 12 task(s) on 2 lane(s)" in flat
    assert re.search(r"gpu-node-1-4242-a1b2\s+0\s+[▓█▒░· ]+\s+9\.50 s\s+6\.50 s", out)
    assert re.search(r"tiny-llama\s+3\s+2\s+56%\s+32\.9 tokens/s", out)
    assert re.search(r"variation\[0\]\s+tiny-sd\s+1\s+4\s+1\.62 s", out)
    empty = tuiflow("trace", "analyze", demo.IDS["diamond"], "-f", "gpu", "--home", demo_home.root)
    assert "no attempt held a GPU or ran a model executor" in " ".join(empty.split())
    report = json.loads(
        tuiflow("trace", "analyze", demo.IDS["inference"], "-f", "json", "--home", demo_home.root)
    )
    assert report["gpu"]["lanes"][0]["idle_claimable_seconds"] == pytest.approx(1.2)


def test_doctor_lists_what_each_slot_holds(tmp_path):
    home = Home.open(tmp_path / "home")
    models = {
        "0": [["transformers", "/models/tiny-llama", "float16"], ["diffusers", "/models/tiny-sd", "float16"]],
        "1": [],
        "2": [["vllm", "/models/evil\x1b[2J", "bfloat16"]],
    }
    for worker, info in (("gpu-w", {"models": models}), ("cpu-w", {})):
        writer = HeartbeatWriter(home.workers_dir, worker)
        writer.beat({"host": "node", "queues": ["default"], "slots": 3, "running": [], **info})
        writer.close()
    out = tuiflow("doctor", "--home", home.root)
    assert "models 0: tiny-sd, tiny-llama · 1: - · 2: evil␛[2J" in out
    assert "\x1b" not in out
    assert out.count("models ") == 1  # the cpu worker has no model hosts
    report = json.loads(tuiflow("doctor", "--json", "--home", home.root))
    by_id = {w["id"]: w for w in report["workers"]}
    assert by_id["gpu-w"]["models"]["0"][0] == ["transformers", "/models/tiny-llama", "float16"]
    assert by_id["cpu-w"]["models"] == {}
