"""Model executors benchmark: what tuiflow costs around a model call, against the raw
library call on the same prompts and model, measured in the same run.

    python benchmarks/gpu_bench.py [--json] [--tasks 32] [--executor transformers|diffusers|both]
                                   [--model-dir DIR] [--llm DIR] [--diffusion DIR]
                                   [--merge-max 8] [--rounds 2] [--threads 1]

The models: a tiny Llama and a tiny Stable Diffusion pipeline built in code
(`tests/support/tiny_models.py`) in a temp dir (in `--model-dir`, and reused from there
when already built), or real model directories (`--llm`, `--diffusion`), so that the same
script runs on a GPU machine. Each executor gets a fresh home with one `tuiflow
coordinator` process and one `tuiflow worker` process (1 slot, `--merge-max`), as a user
runs them: a real worker, its model host, the coordinator's dispatch. The figures come
from the attempts' spans. On a CPU, torch gets `--threads` threads (default 1) here and in
the model host alike: on tiny models more threads only add synchronisation, and on a
shared 2-core VM they make every figure swing several-fold.

1. overhead: `--tasks` warm tasks with ``merge: false`` (each task one call, like the raw
   loop; `max_tokens` 64 / a 64x64 image in 8 steps), each a workflow of its own and each
   next to a raw call of its prompt in this process (which of the two goes first
   alternates), so that both see the same machine: a shared VM's speed drifts by tens of
   per cent within a minute. The raw call: the model loaded once and one uncounted call
   made first; then transformers: tokenize, ``generate`` (greedy), decode; diffusers: the
   pipeline call. overhead % = median warm task (its root span: from its start, just
   after its claim, to its end) / median raw call - 1; paired: the median of each task's
   own ratio. That includes the attempt's directory and spans, the request and reply over
   the pipe to the slot's model host, the host's prompt building, writing the output (for
   diffusers also the PNGs' encoding and their asset rows: the raw loop keeps PIL
   images), and the model call as the host makes it. Around the call: the task less its
   "execute" span, against the raw call: tuiflow's own time, which the machine's noise
   in the model call does not blur. In a row: a task plus the gap between two tasks of a
   workflow of `--tasks` (its completion sent, the next message claimed; the
   coordinator dispatched them all ahead). In CPU time: the model host's, the worker's and
   the coordinator's CPU seconds per task over those workflows against the raw call's.
2. cold vs warm: the first task on the fresh worker (a workflow of its own: the model
   host's start, then the "model load" span, which includes importing the library, then
   the first call) against the median warm task.
3. merged vs one by one: `--tasks` small tasks of one model (`max_tokens` 16 / a 32x32
   image in 2 steps) merged by the worker into calls of up to `--merge-max`, against the
   same tasks with ``merge: false``, `--rounds` times each in turns. Wall time from the
   workflow's start (all its tasks ready) to its last completion applied by the
   coordinator, medians; speedup = one by one / merged.
4. warm start latency: for each warm task, from its root span's start (just after its
   claim) to the model host's first phase ("build prompts" for transformers, "execute"
   for diffusers): median and p95.

Targets: warm overhead <= 5 % of raw; merged >= 2x one by one; a warm task's start <= 20 ms
after its claim. The load average before and after is printed: other work on the machine
skews every wall-clock figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# the libraries' progress bars and advice go nowhere: stdout is the report (or the JSON)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from analyzer import contract as c  # noqa: E402
from spool import Home, layout  # noqa: E402
from tuiflow.engine.client import Client  # noqa: E402
from tuiflow.engine.store import is_terminal  # noqa: E402
from tuiflow.sdk.builder import Workflow  # noqa: E402
from workers.models.imagegen import DEFAULT_GUIDANCE  # noqa: E402

TARGET_OVERHEAD_PCT = 5.0
TARGET_MERGE_SPEEDUP = 2.0
TARGET_START_MS = 20.0
#: the model host's phases, in the order they run
HOST_PHASES = (c.MODEL_LOAD_SPAN, c.PROMPT_SPAN, c.EXECUTE_SPAN, c.POSTPROCESS_SPAN)
SUBJECTS = ["a quiet harbour at dawn", "a red fox in snow", "boats and gulls", "a lighthouse at night"]


def prompt(k: int) -> str:
    return f"describe a scene: {SUBJECTS[k % len(SUBJECTS)]}, take {k}"


# ---------------------------------------------------------------------------- models
def build_models(directory: Path, executors: list[str]) -> dict[str, str]:
    """The tiny models under `directory`, built there unless they already are."""
    from support.tiny_models import tiny_llama, tiny_sd

    built = {}
    if "transformers" in executors:
        path = directory / "tiny-llama"
        built["transformers"] = str(path) if (path / "config.json").exists() else tiny_llama(path)
    if "diffusers" in executors:
        path = directory / "tiny-sd"
        built["diffusers"] = str(path) if (path / "model_index.json").exists() else tiny_sd(path)
    return built


def _device_and_dtype() -> tuple[Any, str, Any]:
    """torch, the device and the dtype the model host picks for ``dtype: auto``."""
    import torch

    from workers.models.textgen import torch_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch, device, torch_dtype(torch, "auto", device)


class RawTransformers:
    """The raw loop's call: the tokenizer and the model loaded once in this process, then
    per prompt the tokenizer, ``generate`` (greedy) and decode."""

    def __init__(self, model: str, max_tokens: int):
        torch, device, dtype = _device_and_dtype()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.device, self.max_tokens = torch, device, max_tokens
        self.tok = AutoTokenizer.from_pretrained(model)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()

    def call(self, k: int) -> str:
        batch = self.tok([prompt(k)], return_tensors="pt", padding=True).to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=self.max_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id
            )
        ids = out[0, batch["input_ids"].shape[1] :].tolist()  # .tolist() waits for the GPU
        if self.tok.eos_token_id in ids:
            ids = ids[: ids.index(self.tok.eos_token_id)]
        return self.tok.decode(ids, skip_special_tokens=True)


class RawDiffusers:
    """The raw loop's call: the pipeline loaded once in this process, then one pipeline
    call per prompt, with a CPU generator seeded as the task's is."""

    def __init__(self, model: str, steps: int, size: int):
        torch, device, dtype = _device_and_dtype()
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            pipe = AutoPipelineForText2Image.from_pretrained(model, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        self.torch, self.pipe, self.steps, self.size = torch, pipe.to(device), steps, size

    def call(self, k: int) -> Any:
        return self.pipe(
            prompt=[prompt(k)],
            num_inference_steps=self.steps,
            guidance_scale=DEFAULT_GUIDANCE,  # the executor's, as the tasks name none
            generator=[self.torch.Generator("cpu").manual_seed(k)],
            width=self.size,
            height=self.size,
        ).images  # PIL images: the GPU is done


# ---------------------------------------------------------------------------- tasks
def task_with(
    executor: str, model: str, k: int, *, small: bool, merge: bool, args: argparse.Namespace
) -> dict:
    spec: dict[str, Any]
    if executor == "transformers":
        spec = {
            "model": model,
            "prompts": prompt(k),
            "max_tokens": args.small_tokens if small else args.max_tokens,
        }
    else:
        size = args.small_size if small else args.size
        steps = args.small_steps if small else args.steps
        spec = {"model": model, "prompt": prompt(k), "steps": steps, "width": size, "height": size, "seed": k}
    if not merge:
        spec["merge"] = False
    return spec


def definition(name: str, executor: str, model: str, indices: range, *, small: bool, merge: bool, args):
    """A workflow of independent tasks `t<k>`, one per prompt index k."""
    wf = Workflow(name, base_dir=str(ROOT / "examples"))
    for k in indices:
        spec = task_with(executor, model, k, small=small, merge=merge, args=args)
        wf.task(f"t{k:03d}", executor=executor, with_=spec)
    return wf.compile()


@dataclass
class TaskTimes:
    """One task's attempt, from its spans (epoch seconds)."""

    k: int
    start: float
    end: float
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    batch: tuple[str, int] | None = None
    output: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def phase_seconds(self, name: str) -> float:
        start, end = self.phases[name]
        return end - start

    def first_host_phase(self) -> float:
        return min(self.phases[n][0] for n in HOST_PHASES if n in self.phases)


@dataclass
class Pair:
    """A warm task and the raw call of its prompt made next to it."""

    task: TaskTimes
    host_cpu: float  # the model host's CPU seconds while the task's workflow ran
    raw_seconds: float
    raw_cpu: float  # this process's CPU seconds in the raw call
    result: Any


def _iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def read_tasks(home: Home, wf: str, indices: range) -> list[TaskTimes]:
    client = Client(home)
    views = {v.name: v for v in client.tasks(wf)}
    tasks = []
    for k in indices:
        name = f"t{k:03d}"
        path = layout.attempt_log(client.attempt_dir(wf, name), layout.SPANS_FILE)
        spans = [json.loads(line) for line in Path(path).read_text().splitlines()]
        root = next(s for s in spans if s["name"] == c.TASK_SPAN)
        times = TaskTimes(
            k, _iso(root["start_time"]), _iso(root["end_time"]), output=views[name].output or {}
        )
        for s in spans:
            if s is not root:
                times.phases[s["name"]] = (_iso(s["start_time"]), _iso(s["end_time"]))
        attrs = root.get("attributes", {})
        if "tuiflow.batch.id" in attrs:
            times.batch = (attrs["tuiflow.batch.id"], int(attrs["tuiflow.batch.size"]))
        tasks.append(times)
    return tasks


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    kids = []
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


class Engine:
    """A home with a `tuiflow coordinator` and a `tuiflow worker` process (1 slot)."""

    def __init__(self, base: Path, merge_max: int):
        base.mkdir(parents=True)
        self.base = base
        self.home = Home.open(base / "home")
        self.client = Client(self.home)
        self.logs = []
        self.procs = []
        for args in (["coordinator"], ["worker", "--slots", "1", "--merge-max", str(merge_max)]):
            log = open(base / f"{args[0]}.log", "w")  # noqa: SIM115 - closed in stop()
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tuiflow", *args, "--home", self.home.root],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=ROOT,
                )
            )

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the coordinator, the worker and its model host."""
        coordinator, worker = self.procs
        return {
            "coordinator": cpu_seconds(coordinator.pid),
            "worker": cpu_seconds(worker.pid),
            "host": sum(cpu_seconds(pid) for pid in children(worker.pid)),
        }

    def run(self, definition, timeout: float = 1800) -> tuple[str, float]:
        """Submit, wait until it ends; (its id, seconds from its start to its end)."""
        wf = self.client.submit(definition)
        deadline = time.monotonic() + timeout
        # a small file, read ten times a second: no figure depends on how soon this loop
        # sees the end, and a faster poll would compete with the model host for the CPU
        while not is_terminal(self.client.store.summary(wf) or {}):
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a tuiflow process ended early: see {self.base}/*.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{definition.name} did not end within {timeout} s")
            time.sleep(0.1)
        run = self.client.run(wf)
        if run.state != "completed":
            log = (self.base / "worker.log").read_text()[-3000:]
            raise RuntimeError(f"{definition.name} ended {run.state}: {run.reason}\n{log}")
        return wf, run.ended_at - run.started_at

    def stop(self) -> None:
        for p in reversed(self.procs):  # the worker first: it drains and ends its model host
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


# ---------------------------------------------------------------------------- figures
def _ms(seconds: float) -> float:
    return seconds * 1000


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(len(ordered) * 0.95) - 1)]


def bench_executor(executor: str, model: str, args: argparse.Namespace, base: Path, log) -> dict:
    n, rounds = args.tasks, args.rounds
    p = executor + "_"
    r: dict[str, Any] = {p + "model": model}

    def run(
        name: str, indices: range, *, small: bool = False, merge: bool = False
    ) -> tuple[float, list[TaskTimes]]:
        wf, wall = engine.run(definition(name, executor, model, indices, small=small, merge=merge, args=args))
        return wall, read_tasks(engine.home, wf, indices)

    def warm_task(k: int) -> tuple[TaskTimes, float]:
        """Task k alone in a workflow, and the CPU seconds its model host used meanwhile."""
        before = engine.cpu()["host"]
        _, (task,) = run(f"{executor}-warm-{k}", range(k, k + 1))
        return task, engine.cpu()["host"] - before

    log(f"{executor}: loading the model in this process for the raw calls")
    if executor == "transformers":
        raw = RawTransformers(model, args.max_tokens)
    else:
        raw = RawDiffusers(model, args.steps, args.size)
    raw.call(n)  # the first call after the load (another prompt) is not counted, as the cold task is not
    log(f"{executor}: a coordinator and a worker (--merge-max {args.merge_max}); the cold task")
    engine = Engine(base / executor, args.merge_max)
    try:
        _, (cold,) = run(f"{executor}-cold", range(n, n + 1))
        # each warm task next to a raw call of its prompt, in turns (which goes first
        # alternates): both see the same machine, whose speed drifts by tens of per cent
        # within a minute when it is shared
        log(f"{executor}: {n} warm tasks, each a workflow of its own, each next to a raw call")
        paired: list[Pair] = []
        for k in range(n):
            if k % 2:
                task, host_cpu = warm_task(k)
            t, cpu = time.perf_counter(), time.process_time()
            result = raw.call(k)
            seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            if not k % 2:
                task, host_cpu = warm_task(k)
            paired.append(Pair(task, host_cpu, seconds, cpu, result))
        blocks: list[list[TaskTimes]] = []
        cpu_used = dict.fromkeys(("coordinator", "worker"), 0.0)
        for i in range(rounds):
            log(f"{executor}: a workflow of {n} warm tasks, {i + 1} of {rounds}")
            before = engine.cpu()
            blocks.append(sorted(run(f"{executor}-block-{i}", range(n))[1], key=lambda t: t.start))
            after = engine.cpu()
            for name in cpu_used:
                cpu_used[name] += after[name] - before[name]
        singles: list[tuple[float, list[TaskTimes]]] = []
        mergeds: list[tuple[float, list[TaskTimes]]] = []
        for i in range(rounds):
            log(f"{executor}: {n} small tasks one by one, then merged, {i + 1} of {rounds}")
            singles.append(run(f"{executor}-one-by-one-{i}", range(n), small=True))
            mergeds.append(run(f"{executor}-merged-{i}", range(n), small=True, merge=True))
    finally:
        engine.stop()
    del raw

    # the same outputs both ways (greedy text): the two did the same work (on a GPU, bf16
    # kernels may round differently between processes: counted, not asserted)
    if executor == "transformers":
        same = sum(x.task.output.get("texts") == [x.result] for x in paired)
        r[p + "texts_as_raw"] = f"{same}/{len(paired)}"
        r[p + "output_tokens_median"] = statistics.median(x.task.output["output_tokens"][0] for x in paired)

    # 1. overhead: each warm task against the raw call of its prompt made next to it
    warm = [x.task for x in paired]
    raw_ms = _ms(statistics.median(x.raw_seconds for x in paired))
    task_ms = _ms(statistics.median(t.seconds for t in warm))
    r[p + "raw_call_ms"] = raw_ms
    r[p + "warm_task_ms"] = task_ms
    r[p + "overhead_pct"] = (task_ms / raw_ms - 1) * 100
    ratios = [(x.task.seconds / x.raw_seconds - 1) * 100 for x in paired]
    r[p + "overhead_paired_pct"] = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    r[p + "overhead_paired_pct_quartiles"] = [round(quartiles[0], 1), round(quartiles[2], 1)]  # the spread
    # where a warm task's time goes (medians)
    execute_ms = _ms(statistics.median(t.phase_seconds(c.EXECUTE_SPAN) for t in warm))
    r[p + "execute_ms"] = execute_ms  # the model call as the host makes it
    r[p + "execute_vs_raw_pct"] = (execute_ms / raw_ms - 1) * 100
    around = _ms(statistics.median(t.seconds - t.phase_seconds(c.EXECUTE_SPAN) for t in warm))
    r[p + "around_call_ms"] = around  # the task less its model call
    r[p + "overhead_around_call_pct"] = around / raw_ms * 100
    for name, key in ((c.POSTPROCESS_SPAN, "postprocess_ms"), (c.READY_SPAN, "write_outputs_ms")):
        if all(name in t.phases for t in warm):
            r[p + key] = _ms(statistics.median(t.phase_seconds(name) for t in warm))
    last = [t.end - max(t.phases[h][1] for h in HOST_PHASES if h in t.phases) for t in warm]
    r[p + "after_host_ms"] = _ms(statistics.median(last))  # the host's last phase end -> root end
    # tasks in a row: what lies between two (the completion sent, the next message claimed)
    gaps = [b.start - a.end for tasks in blocks for a, b in itertools.pairwise(tasks)]
    r[p + "between_tasks_ms"] = _ms(statistics.median(gaps))
    r[p + "overhead_in_a_row_pct"] = ((task_ms + r[p + "between_tasks_ms"]) / raw_ms - 1) * 100
    r[p + "load_average_at_end"] = os.getloadavg()[0]
    # the same in CPU time (means): the model host's for each warm task against the raw call
    # made next to it (this process's CPU time), plus the worker's and the coordinator's per task
    # over the workflows of warm tasks (a workflow alone would add its own start and end)
    raw_cpu_ms = _ms(statistics.mean(x.raw_cpu for x in paired))
    host_cpu_ms = _ms(statistics.mean(x.host_cpu for x in paired))  # /proc counts in 10 ms ticks
    r[p + "raw_call_cpu_ms"] = raw_cpu_ms
    r[p + "host_cpu_ms_per_task"] = host_cpu_ms
    engine_cpu_ms = 0.0
    for name in ("worker", "coordinator"):
        r[p + f"{name}_cpu_ms_per_task"] = _ms(cpu_used[name] / (n * rounds))
        engine_cpu_ms += r[p + f"{name}_cpu_ms_per_task"]
    r[p + "cpu_overhead_pct"] = ((host_cpu_ms + engine_cpu_ms) / raw_cpu_ms - 1) * 100

    # 2. cold vs warm
    r[p + "cold_task_ms"] = _ms(cold.seconds)
    r[p + "cold_before_load_ms"] = _ms(cold.first_host_phase() - cold.start)  # the host's start
    load = cold.phases.get(c.MODEL_LOAD_SPAN)
    r[p + "cold_model_load_ms"] = _ms(load[1] - load[0]) if load else None  # imports included
    r[p + "cold_first_call_ms"] = _ms(cold.phase_seconds(c.EXECUTE_SPAN))
    r[p + "cold_over_warm"] = cold.seconds / statistics.median(t.seconds for t in warm)

    # 3. merged vs one by one
    single_s = statistics.median(wall for wall, _ in singles)
    merged_s = statistics.median(wall for wall, _ in mergeds)
    batches = {t.batch for _, tasks in mergeds for t in tasks if t.batch is not None}
    alone = sum(t.batch is None for _, tasks in mergeds for t in tasks)
    r[p + "one_by_one_s"] = single_s
    r[p + "one_by_one_s_rounds"] = [round(wall, 3) for wall, _ in singles]
    r[p + "merged_s"] = merged_s
    r[p + "merged_s_rounds"] = [round(wall, 3) for wall, _ in mergeds]
    r[p + "merged_calls_per_workflow"] = (len(batches) + alone) / rounds
    r[p + "merged_largest_call"] = max((size for _, size in batches), default=1)
    r[p + "one_by_one_execute_ms"] = _ms(
        statistics.median(t.phase_seconds(c.EXECUTE_SPAN) for _, tasks in singles for t in tasks)
    )
    r[p + "merged_execute_ms"] = _ms(
        statistics.median(
            t.phase_seconds(c.EXECUTE_SPAN)
            for _, tasks in mergeds
            for t in tasks
            if c.EXECUTE_SPAN in t.phases
        )
    )
    r[p + "merge_speedup"] = single_s / merged_s

    # 4. warm start latency: the claim (root start) -> the host's first phase, every warm task
    starts = [_ms(t.first_host_phase() - t.start) for t in warm + [t for tasks in blocks for t in tasks]]
    r[p + "start_ms_median"] = statistics.median(starts)
    r[p + "start_ms_p95"] = _p95(starts)
    return r


# ---------------------------------------------------------------------------- report
def checks(r: dict, executor: str) -> dict[str, tuple[str, bool]]:
    """Per figure with a target: (the target, whether it is met)."""
    e = executor + "_"
    overhead = f"<= {TARGET_OVERHEAD_PCT:g} %"
    start = f"<= {TARGET_START_MS:g} ms"
    return {
        e + "overhead_pct": (overhead, r[e + "overhead_pct"] <= TARGET_OVERHEAD_PCT),
        e + "overhead_paired_pct": (overhead, r[e + "overhead_paired_pct"] <= TARGET_OVERHEAD_PCT),
        e + "overhead_in_a_row_pct": (overhead, r[e + "overhead_in_a_row_pct"] <= TARGET_OVERHEAD_PCT),
        e + "overhead_around_call_pct": (overhead, r[e + "overhead_around_call_pct"] <= TARGET_OVERHEAD_PCT),
        e + "cpu_overhead_pct": (overhead, r[e + "cpu_overhead_pct"] <= TARGET_OVERHEAD_PCT),
        e + "merge_speedup": (
            f">= {TARGET_MERGE_SPEEDUP:g}x",
            r[e + "merge_speedup"] >= TARGET_MERGE_SPEEDUP,
        ),
        e + "start_ms_median": (start, r[e + "start_ms_median"] <= TARGET_START_MS),
        e + "start_ms_p95": (start, r[e + "start_ms_p95"] <= TARGET_START_MS),
    }


def _shown(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        return " ".join(map(_shown, v))
    return str(v)


def print_table(r: dict, executors: list[str], targets: dict[str, tuple[str, bool]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    common = {k: v for k, v in r.items() if not k.startswith(tuple(executors)) and not k.endswith("_meets")}
    console.print("  ".join(f"{k}: {_shown(v)}" for k, v in common.items()))
    table = Table(title="model executors benchmark")
    table.add_column("measure")
    for e in executors:
        table.add_column(e, justify="right")
    table.add_column("target")
    measures = dict.fromkeys(
        k.removeprefix(e + "_")
        for e in executors
        for k in r
        if k.startswith(e + "_") and not k.endswith("_meets")
    )
    for m in measures:
        cells, target = [], ""
        for e in executors:
            value = _shown(r.get(f"{e}_{m}"))
            if f"{e}_{m}" in targets:
                target, met = targets[f"{e}_{m}"]
                value += " [green]meets[/]" if met else " [red]misses[/]"
            cells.append(value)
        table.add_row(m, *cells, target)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tasks", type=int, default=32, help="tasks per workflow (default 32)")
    parser.add_argument("--executor", choices=["transformers", "diffusers", "both"], default="both")
    parser.add_argument("--model-dir", help="build the tiny models here, or reuse them (default: a temp dir)")
    parser.add_argument("--llm", help="a model directory for transformers (default: the tiny Llama)")
    parser.add_argument("--diffusion", help="a pipeline directory for diffusers (default: the tiny SD)")
    parser.add_argument("--merge-max", type=int, default=8, help="the worker's --merge-max (default 8)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="workflows of warm tasks, and of small tasks each way (default 2)",
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="warm tasks' max_tokens (default 64)")
    parser.add_argument("--small-tokens", type=int, default=16, help="merge tasks' max_tokens (default 16)")
    parser.add_argument("--steps", type=int, default=8, help="warm tasks' diffusion steps (default 8)")
    parser.add_argument("--small-steps", type=int, default=2, help="merge tasks' diffusion steps (default 2)")
    parser.add_argument("--size", type=int, default=64, help="warm tasks' image size in pixels (default 64)")
    parser.add_argument("--small-size", type=int, default=32, help="merge tasks' image size (default 32)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch's CPU threads, here and in the model host (OMP_NUM_THREADS; 0: torch's default)",
    )
    args = parser.parse_args()
    if args.tasks < 2 or args.rounds < 1:
        parser.error("--tasks must be at least 2 and --rounds at least 1")
    executors = ["transformers", "diffusers"] if args.executor == "both" else [args.executor]
    if args.threads:  # before torch is imported, here and in the worker's model host (inherited)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    base = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    r: dict[str, Any] = {"tasks": args.tasks, "rounds": args.rounds, "merge_max": args.merge_max}
    r["load_average_before"] = os.getloadavg()[0]  # other work on the machine skews every figure
    try:
        given = {"transformers": args.llm, "diffusers": args.diffusion}
        missing = [e for e in executors if not given[e]]
        models = {e: given[e] for e in executors if given[e]}
        if missing:
            log(f"the tiny models for {', '.join(missing)} (built unless --model-dir has them)")
            models.update(build_models(Path(args.model_dir) if args.model_dir else base / "models", missing))
        torch, device, dtype = _device_and_dtype()
        r["device"] = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
        r["dtype"] = str(dtype).removeprefix("torch.")
        r["torch_threads"] = torch.get_num_threads()
        for e in executors:
            r.update(bench_executor(e, models[e], args, base, log))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    r["load_average_after"] = os.getloadavg()[0]
    targets = {k: v for e in executors for k, v in checks(r, e).items()}
    for name, (_, met) in targets.items():
        r[name + "_meets"] = met
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
        return
    print_table(r, executors, targets)


if __name__ == "__main__":
    main()
