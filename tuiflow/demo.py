"""Deterministic demo homes: the fixtures of the dashboard's tests, screenshots and benchmark.

`build(root, now=...)` writes a home whose every timestamp is derived from `now`, so a
dashboard given the same clock draws the same picture every time:

* ``ml-pipeline`` completed, with outputs, logs and a full trace (spans, assets, lineage);
* ``fanout`` running: 1,002 tasks in every state, two retries, two failures;
* ``diamond`` failed (a skip, an any-policy join, a retried task, a failure and its
  upstream_failed dependent);
* ``nightly-eval`` cancelled, ``sweep`` pending (waiting for admission);
* two live workers and a dead one; queues with ready, claimed and one poison message.

``python -m tuiflow.demo DIR`` builds one to play with: ``tuiflow --home DIR``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any

import msgpack

from analyzer import contract as c
from spool import Home, Settings
from spool.atomic import atomic_write
from spool.liveness import HeartbeatWriter
from workers import protocol as p

from .builder import Workflow
from .dag import Run
from .model import Definition
from .store import WorkflowStore

NOW = 1_795_400_000.0  # 2026-11-23 05:33:20 UTC: the fixed "now" of snapshots
IDS = {
    "ml-pipeline": "mlp7x2q4",
    "fanout": "fan0ut9k",
    "diamond": "d1amnd5r",
    "nightly-eval": "n1ghtly3",
    "sweep": "sw33pq8v",
}


# ----------------------------------------------------------------- definitions
def ml_pipeline() -> Definition:
    wf = Workflow("ml-pipeline", params={"target_mae": 0.1}, base_dir="/demo/examples")
    wf.task("prep/load", call="ml:load_dataset", kwargs={"rows": 2000})
    wf.task("prep/featurize", call="ml:featurize", depends_on=["prep/load"])
    wf.task("train/rf", call="ml:train", kwargs={"model": "random_forest"}, depends_on=["prep/featurize"])
    wf.task("train/gnn", call="ml:train", kwargs={"model": "gnn"}, depends_on=["prep/featurize"], gpus=1)
    wf.task("train/sweep", call="ml:train", foreach=[1, 2, 3, 4], depends_on=["prep/featurize"])
    wf.task(
        "eval/compare",
        call="ml:compare",
        depends_on=["train/rf", "train/gnn"],
        dep_policy="any",
        condition='inputs["train/rf"].mae < params.target_mae or inputs["train/gnn"].mae < params.target_mae',
    )
    wf.task("eval/sweep-best", call="ml:best_of", depends_on=["train/sweep"])
    wf.task("eval/report", run="python report.py", depends_on=["eval/compare", "eval/sweep-best"])
    return wf.compile()


def fanout(n: int) -> Definition:
    wf = Workflow("fanout", base_dir="/demo/examples")
    wf.task("start", call="tasks:noop")
    wf.task("work", call="tasks:noop", foreach={"range": n}, depends_on=["start"], num_retries=1)
    wf.task("join", call="tasks:count_inputs", depends_on=["work"])
    return wf.compile()


def diamond() -> Definition:
    wf = Workflow("diamond", params={"threshold": 0.28}, base_dir="/demo/examples")
    wf.task("score", call="tasks:score", kwargs={"value": 0.31})
    wf.task("high", run="echo high", depends_on=["score"], condition="inputs.score.value > params.threshold")
    wf.task("low", run="echo low", depends_on=["score"], condition="inputs.score.value <= params.threshold")
    wf.task("either", run="echo either", depends_on=["high", "low"], dep_policy="any")
    wf.task("flaky", run="test $TUIFLOW_ATTEMPT -ge 1", depends_on=["score"], num_retries=2)
    wf.task("broken", run="exit 1", depends_on=["flaky"])
    wf.task("publish", run="echo never", depends_on=["broken", "either"])
    return wf.compile()


def nightly() -> Definition:
    wf = Workflow("nightly-eval", base_dir="/demo/examples")
    wf.task("fetch", run="python fetch.py")
    wf.task("eval/llm", run="python eval.py --model llm", depends_on=["fetch"], queue="gpu", gpus=2)
    wf.task("eval/vlm", run="python eval.py --model vlm", depends_on=["fetch"], queue="gpu", gpus=1)
    wf.task("summarize", run="python summarize.py", depends_on=["eval/llm", "eval/vlm"])
    return wf.compile()


def sweep() -> Definition:
    wf = Workflow("sweep", base_dir="/demo/examples")
    wf.task("train", call="ml:train", foreach={"range": 24}, kwargs={"model": "ridge", "seed": "{{ item }}"})
    return wf.compile()


# -------------------------------------------------------------------- helpers
class _Sim:
    """Drives a Run through events with explicit times, recording attempt windows."""

    def __init__(self, store: WorkflowStore, definition: Definition, wf_id: str, created: float):
        self.store = store
        self.run = Run(definition, wf_id, created, load_ref=store.load_ref)
        self.d = definition
        self.wf_id = wf_id
        # (task, attempt) -> (worker, ready_at, start, end, outcome, error)
        self.attempts: dict[tuple[str, int], dict[str, Any]] = {}

    def idx(self, name: str) -> int:
        return self.d.index[name]

    def start(self, t: float) -> None:
        self.run.start(t)

    def begin(self, name: str, worker: str, t: float) -> None:
        i = self.idx(name)
        a = self.run.attempt[i]
        self.attempts[(name, a)] = {"worker": worker, "ready": self.run.ready_at[i], "start": t}
        self.run.on_started(i, a, worker, t)

    def ok(self, name: str, t: float, output: Any = None) -> None:
        i = self.idx(name)
        a = self.run.attempt[i]
        self.attempts[(name, a)].update(end=t, outcome="completed", output=output)
        self.run.on_completed(i, a, self.attempts[(name, a)]["worker"], t, output=output)

    def fail(self, name: str, t: float, error: str, exit_code: int = 1, kind: str = "error") -> None:
        i = self.idx(name)
        a = self.run.attempt[i]
        self.attempts[(name, a)].update(end=t, outcome="failed" if kind == "error" else kind, error=error)
        self.run.on_failed(
            i, a, self.attempts[(name, a)]["worker"], t, error=error, exit_code=exit_code, kind=kind
        )

    def save(self) -> None:
        record = self.store.state_record(self.wf_id)
        _, version = record.read()
        self.store.write_run(self.run, version)

    # files an attempt leaves behind
    def write_files(self, home: Home, *, spans: bool = True) -> None:
        rng = random.Random(self.wf_id)
        root_spans: list[str] = []
        for (name, attempt), a in sorted(self.attempts.items(), key=lambda kv: kv[1]["start"]):
            adir = p.resolve(home.root, p.attempt_dir_rel(self.wf_id, name, attempt))
            os.makedirs(f"{adir}/{c.LOGS_DIR}", exist_ok=True)
            t = self.d.tasks[self.idx(name)]
            with open(f"{adir}/stdout.log", "w") as f:
                f.write(f"[{name}] attempt {attempt} on {a['worker']}\n")
                for k in range(3):
                    f.write(f"[{name}] step {k + 1}/3 done\n")
            if a.get("error"):
                with open(f"{adir}/stderr.log", "w") as f:
                    f.write(f'Traceback (most recent call last):\n  File "task.py", line 12\n{a["error"]}\n')
            if a.get("output") is not None:
                raw = json.dumps(a["output"]).encode()
                with open(f"{adir}/output.json", "wb") as f:
                    f.write(raw)
                self._jsonl(
                    f"{adir}/{c.LOGS_DIR}/{c.ASSETS_FILE}",
                    {
                        "path": os.path.relpath(f"{adir}/output.json", home.root),
                        "bytes": len(raw),
                        "sha256": f"{rng.getrandbits(256):064x}",
                        "owner": "demo",
                        "task": name,
                        "attempt": attempt,
                        "data_id": f"{self.wf_id}/{name}",
                    },
                )
                sources = [
                    f"{self.wf_id}/{dep}"
                    for dep in t.depends_on
                    if self.run.outputs.get(self.idx(dep)) is not None
                ]
                self._jsonl(
                    f"{adir}/{c.LOGS_DIR}/{c.LINEAGE_FILE}",
                    {"data_id": f"{self.wf_id}/{name}", "sources": sources, "task": name, "attempt": attempt},
                )
            if not spans or "end" not in a:
                continue
            root_id = rng.getrandbits(64) or 1
            attrs = {
                c.ATTR_WORKFLOW_ID: self.wf_id,
                c.ATTR_WORKFLOW_NAME: self.d.name,
                c.ATTR_RUN_ID: self.wf_id,
                c.ATTR_TASK: name,
                c.ATTR_ATTEMPT: attempt,
                c.ATTR_DEPENDS_ON: list(t.depends_on),
                c.ATTR_READY_AT: a["ready"],
                c.ATTR_WORKER: a["worker"],
                c.ATTR_HOST: a["worker"].rsplit("-", 2)[0],
                c.ATTR_QUEUE: t.queue,
                c.ATTR_GPUS: list(range(t.gpus)),
                c.ATTR_EXECUTOR: t.executor,
                c.ATTR_OUTCOME: a["outcome"],
                c.ATTR_DATA_ID: f"{self.wf_id}/{name}",
            }
            if a.get("error"):
                attrs[c.ATTR_ERROR] = a["error"]
            lines = [
                _span(
                    self.wf_id,
                    c.TASK_SPAN,
                    root_id,
                    _workflow_span_id(self.wf_id),
                    a["start"],
                    a["end"],
                    attrs,
                    error=a.get("error"),
                )
            ]
            dur = a["end"] - a["start"]
            phases = [(c.SETUP_SPAN, 0.0, 0.15), (c.EXECUTE_SPAN, 0.15, 0.9), (c.READY_SPAN, 0.9, 1.0)]
            if t.depends_on:
                phases.insert(0, (c.READ_INPUTS_SPAN, 0.0, 0.05))
            for span_name, f0, f1 in phases:
                if span_name == c.READY_SPAN and a["outcome"] != "completed":
                    continue
                kind = c.SPAN_KINDS[span_name]
                extra = {c.ATTR_BYTES: 2048} if kind == c.SpanKind.NETWORK else {}
                lines.append(
                    _span(
                        self.wf_id,
                        span_name,
                        rng.getrandbits(64) or 1,
                        root_id,
                        a["start"] + f0 * dur,
                        a["start"] + f1 * dur,
                        {c.ATTR_KIND: str(kind), **extra},
                    )
                )
            with open(f"{adir}/{c.LOGS_DIR}/{c.SPANS_FILE}", "w") as f:
                f.write("".join(line + "\n" for line in lines))
            root_spans.append(lines[0])
        if spans and self.run.ended_at:
            trace_dir = f"{home.workflows_dir}/{self.wf_id}/{c.COORDINATOR_TRACE_DIR}"
            os.makedirs(trace_dir, exist_ok=True)
            attrs = {
                c.ATTR_WORKFLOW_ID: self.wf_id,
                c.ATTR_WORKFLOW_NAME: self.d.name,
                c.ATTR_OUTCOME: self.run.state,
            }
            with open(f"{trace_dir}/{c.SPANS_FILE}", "w") as f:
                f.write(
                    _span(
                        self.wf_id,
                        c.WORKFLOW_SPAN,
                        _workflow_span_id(self.wf_id),
                        None,
                        self.run.created_at,
                        self.run.ended_at,
                        attrs,
                        error=None if self.run.state == "completed" else self.run.state,
                    )
                    + "\n"
                )

    @staticmethod
    def _jsonl(path: str, row: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _workflow_span_id(wf_id: str) -> int:
    return (c.trace_id_for(wf_id + "#workflow") & 0xFFFF_FFFF_FFFF_FFFF) or 1


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _span(
    wf_id: str,
    name: str,
    span_id: int,
    parent: int | None,
    start: float,
    end: float,
    attrs: dict[str, Any],
    error: str | None = None,
) -> str:
    status: dict[str, str] = {"status_code": "ERROR" if error else "UNSET"}
    if error:
        status["description"] = error
    return json.dumps(
        {
            "name": name,
            "context": {
                "trace_id": c.format_trace_id(c.trace_id_for(wf_id)),
                "span_id": f"0x{span_id:016x}",
                "trace_state": "[]",
            },
            "kind": "SpanKind.INTERNAL",
            "parent_id": f"0x{parent:016x}" if parent else None,
            "start_time": _iso(start),
            "end_time": _iso(end),
            "status": status,
            "attributes": attrs,
            "events": [],
            "links": [],
            "resource": {"attributes": {"service.name": "tuiflow-demo"}, "schema_url": ""},
        }
    )


def _create(store: WorkflowStore, definition: Definition, wf_id: str, created: float) -> _Sim:
    os.makedirs(store.dir(wf_id), exist_ok=True)
    definition.owner = "demo"
    store._record(wf_id, "definition").write(definition.to_wire(), 0)
    sim = _Sim(store, definition, wf_id, created)
    store.state_record(wf_id).write(sim.run.to_wire(), 0)
    return sim


# ---------------------------------------------------------------------- build
def build(root: str, *, now: float = NOW, fanout_tasks: int = 1000, spans: bool = True) -> Home:
    """Write the demo home at `root` (which must not exist yet)."""
    home = Home.open(root, settings=Settings(dead_after=30.0))
    store = WorkflowStore(home)
    w1, w2, w3 = "gpu-node-1-4242-a1b2", "gpu-node-2-5151-c3d4", "cpu-node-1-777-e5f6"

    # ml-pipeline: completed an hour ago
    sim = _create(store, ml_pipeline(), IDS["ml-pipeline"], now - 3600)
    t = now - 3600 + 0.5
    sim.start(t)
    sim.begin("prep/load", w1, t + 0.1)
    sim.ok("prep/load", t + 4.1, {"rows": 2000, "path": "dataset.json"})
    sim.begin("prep/featurize", w1, t + 4.2)
    sim.ok("prep/featurize", t + 10.2, {"features": 12})
    sim.begin("train/rf", w1, t + 10.3)
    sim.begin("train/gnn", w2, t + 10.4)
    for k in range(4):
        sim.begin(f"train/sweep[{k}]", w3, t + 10.5 + k * 2.5)
        sim.ok(f"train/sweep[{k}]", t + 12.9 + k * 2.5, {"name": f"ridge-seed{k + 1}", "mae": 0.09 + k / 100})
    sim.ok("train/rf", t + 31.3, {"name": "random_forest", "mae": 0.056})
    sim.begin("eval/compare", w3, t + 31.5)
    sim.ok("eval/compare", t + 33.0, {"winner": "random_forest", "mae": 0.056})
    sim.begin("eval/sweep-best", w3, t + 33.1)
    sim.ok("eval/sweep-best", t + 33.6, {"name": "ridge-seed1", "mae": 0.09})
    sim.ok("train/gnn", t + 52.4, {"name": "gnn", "mae": 0.062})
    sim.begin("eval/report", w1, t + 52.6)
    sim.ok("eval/report", t + 54.0)
    sim.save()
    sim.write_files(home, spans=spans)

    # diamond: failed ten minutes ago
    sim = _create(store, diamond(), IDS["diamond"], now - 600)
    t = now - 600 + 0.2
    sim.start(t)
    sim.begin("score", w3, t + 0.1)
    sim.ok("score", t + 0.6, {"value": 0.31})
    sim.begin("high", w3, t + 0.7)
    sim.begin("flaky", w1, t + 0.7)
    sim.fail("flaky", t + 1.0, "transient failure", exit_code=3)
    sim.ok("high", t + 1.1)
    sim.begin("either", w3, t + 1.2)
    sim.ok("either", t + 1.4)
    sim.begin("flaky", w1, t + 1.5)
    sim.ok("flaky", t + 1.9)
    sim.begin("broken", w1, t + 2.0)
    sim.fail("broken", t + 2.3, "RuntimeError: this task always fails")
    sim.save()
    sim.write_files(home, spans=spans)

    # nightly-eval: cancelled while evaluating
    sim = _create(store, nightly(), IDS["nightly-eval"], now - 300)
    t = now - 300
    sim.start(t)
    sim.begin("fetch", w3, t + 1)
    sim.ok("fetch", t + 20)
    sim.begin("eval/llm", w1, t + 21)
    sim.run.cancel(t + 40)
    sim.fail("eval/llm", t + 41, "cancelled: process group killed", kind="cancelled")
    sim.save()
    sim.write_files(home, spans=spans)

    # fanout: running right now
    sim = _create(store, fanout(fanout_tasks), IDS["fanout"], now - 90)
    t = now - 90
    sim.start(t)
    sim.begin("start", w3, t + 0.5)
    sim.ok("start", t + 1.0)
    rng = random.Random(7)
    n = fanout_tasks
    done, running = int(n * 0.6), min(30, n // 10)
    for k in range(done):
        name = f"work[{k}]"
        worker = (w1, w2, w3)[k % 3]
        begin = t + 1.1 + k * 80 / max(done, 1)
        sim.begin(name, worker, begin)
        if k in (17, 340 % max(done, 1)):
            sim.fail(name, begin + 0.3, "CUDA error: out of memory", exit_code=1)
            sim.begin(name, worker, begin + 0.5)
        if k in (101 % max(done, 1), 502 % max(done, 1)) and k not in (17,):
            sim.fail(name, begin + 0.4, "ValueError: bad shard", exit_code=1)
            sim.begin(name, worker, begin + 0.6)
            sim.fail(name, begin + 0.9, "ValueError: bad shard", exit_code=1)
            continue
        sim.ok(name, begin + 0.2 + rng.random() * 0.6)
    for k in range(done, done + running):
        sim.begin(f"work[{k}]", (w1, w3)[k % 2], now - rng.random() * 5)
    sim.save()
    sim.write_files(home, spans=False)

    # sweep: waiting for admission
    sim = _create(store, sweep(), IDS["sweep"], now - 20)
    sim.save()

    _workers(home, now, (w1, w3), w2)
    _queues(home)
    _summaries_time(store, now)
    return home


def _workers(home: Home, now: float, alive: tuple[str, ...], dead: str) -> None:
    infos = {
        alive[0]: {
            "queues": ["default", "gpu"],
            "gpus": [0, 1, 2, 3],
            "slots": 24,
            "running": 18,
            "done": 412,
        },
        alive[1]: {"queues": ["default"], "gpus": None, "slots": 16, "running": 12, "done": 367},
        dead: {"queues": ["gpu"], "gpus": [0, 1], "slots": 2, "running": 1, "done": 95},
    }
    for worker, info in infos.items():
        w = HeartbeatWriter(home.workers_dir, worker)
        w.beats = 1000
        running = [[IDS["fanout"], 1000 + i, 0, f"work[{600 + i}]", now - 3] for i in range(info["running"])]
        w.beat(
            {
                "host": worker.rsplit("-", 2)[0],
                "pid": int(worker.rsplit("-", 2)[1]),
                "queues": info["queues"],
                "slots": info["slots"],
                "gpus": info["gpus"],
                "running": running,
                "state": "running",
                "started_at": now - 7200,
                "tasks_done": info["done"],
            }
        )
        w.close()
        written = now - (240 if worker == dead else 1.5)
        _set_written_at(w.path, written)
        if worker == dead:
            os.replace(w.path, w.path[: -len(".hb")] + ".dead")


def _set_written_at(path: str, written: float) -> None:
    """Rewrite a heartbeat's writer timestamp (the demo's clock, not this machine's)."""
    from spool.liveness import _HEADER, _MAGIC, HEARTBEAT_FORMAT, decode, read_raw

    hb = decode(read_raw(path), path)
    body = msgpack.packb(
        {
            "holder": hb.holder,
            "host": hb.host,
            "pid": hb.pid,
            "beat": hb.beat,
            "nonce": hb.nonce,
            "written_at": written,
            "info": hb.info,
        },
        use_bin_type=True,
    )
    import zlib

    with open(path, "wb") as f:
        f.write(_HEADER.pack(_MAGIC, HEARTBEAT_FORMAT, 0, len(body), zlib.crc32(body)) + body)
    os.utime(path, (written, written))


def _queues(home: Home) -> None:
    q = home.queue("default")
    for i in range(3):
        q.put(
            {"v": p.PROTOCOL, "wf": IDS["fanout"], "idx": 700 + i, "task": f"work[{699 + i}]", "attempt": 0},
            msg_id=p.message_id(IDS["fanout"], 700 + i, 0),
        )
    g = home.queue("gpu")
    g.put({"v": p.PROTOCOL, "wf": IDS["nightly-eval"], "idx": 2, "task": "eval/vlm", "attempt": 0})
    with open(f"{g._ready[0]}/00000-0000000000000000001-poison.0.msg", "wb") as f:
        f.write(b"\xc1 not a message")
    g.claim(
        "gpu-node-2-5151-c3d4", 5
    )  # the poison is quarantined, the good one stays claimed by the dead worker


def _summaries_time(store: WorkflowStore, now: float) -> None:
    """Summaries carry 'updated_at' from the demo's clock, not this machine's."""
    for wf_id in store.ids():
        path = f"{store.root}/{wf_id}/summary.msgpack"
        with open(path, "rb") as f:
            s = msgpack.unpackb(f.read())
        s["updated_at"] = now
        atomic_write(path, msgpack.packb(s))


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tuiflow.demo DIR   (DIR must not exist)")
    if os.path.exists(sys.argv[1]):
        raise SystemExit(f"{sys.argv[1]} exists; pick a new directory")
    home = build(sys.argv[1])
    print(f"demo home at {home.root}: open it with  tuiflow --home {home.root}")


if __name__ == "__main__":
    main()
