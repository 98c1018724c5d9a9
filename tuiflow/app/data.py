"""What the dashboard shows, computed without Textual (so it is testable on its own and
runs on worker threads). Screens call these functions off the UI thread and only draw
the results.

Times are the dashboard's clock (`now`), given by the caller: tests pass a fixed one.
Worker heartbeat ages are measured against the writer's own timestamp: this is a display,
never a decision (the coordinator decides liveness by watching records change).
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from typing import Any

from spool import CorruptRecordError, Home, SpoolError
from spool.liveness import SUFFIX as HB_SUFFIX
from spool.liveness import decode, read_raw
from workers import protocol as p

from ..client import TaskView, task_views
from ..dag import STATE_NAMES, TERMINAL, WF_TERMINAL, Run
from ..store import WorkflowStore

#: the order of segments in progress bars, with their colours
SEGMENTS = (
    ("completed", "green"),
    ("failed", "red"),
    ("upstream_failed", "dark_orange"),
    ("cancelled", "yellow"),
    ("running", "cyan"),
    ("ready", "blue"),
    ("skipped", "magenta"),
    ("pending", "grey42"),
)
STATE_STYLE = dict(SEGMENTS)


@dataclasses.dataclass(frozen=True)
class WorkflowRow:
    id: str
    name: str
    state: str
    counts: dict[str, int]
    total: int
    done: int
    rate: float | None  # tasks/s since it started
    eta: float | None  # seconds
    age: float  # seconds since submit
    wall: float | None


@dataclasses.dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    queues: tuple[str, ...]
    gpus: tuple[int, ...] | None
    slots: int | None
    running: int
    heartbeat_age: float | None
    dead: bool
    tasks_done: int


@dataclasses.dataclass(frozen=True)
class QueueRow:
    name: str
    ready: int
    delayed: int
    claimed: int
    dead: int
    trend: tuple[int, ...]  # recent depths, oldest first


@dataclasses.dataclass(frozen=True)
class HomeSnapshot:
    workflows: list[WorkflowRow]
    workers: list[WorkerRow]
    queues: list[QueueRow]
    coordinator: str | None
    errors: list[str]

    @property
    def empty(self) -> bool:
        return not self.workflows and not self.workers and not self.queues


def done_count(counts: dict[str, int]) -> int:
    return sum(counts.get(STATE_NAMES[c], 0) for c in TERMINAL)


def rate_eta(
    done: int, total: int, started: float, ended: float, now: float
) -> tuple[float | None, float | None]:
    if not started or done <= 0:
        return None, None
    elapsed = (ended or now) - started
    if elapsed <= 0:
        return None, None
    rate = done / elapsed
    return rate, (None if ended else (total - done) / rate)


class HomeReader:
    """Reads a home for the overview. Keeps queue-depth history for the trend column."""

    def __init__(self, home: Home, history: int = 30):
        self.home = home
        self.store = WorkflowStore(home)
        self._trends: dict[str, deque[int]] = {}
        self._history = history

    def snapshot(self, now: float) -> HomeSnapshot:
        errors: list[str] = []
        workflows = []
        for s in self.store.summaries():
            if s.get("state") == "corrupt":
                errors.append(s.get("error", f"workflow {s.get('id')} is corrupt"))
                continue
            counts = dict(s.get("counts", {}))
            total = int(s.get("total", 0))
            done = done_count(counts)
            rate, eta = rate_eta(done, total, s.get("started_at", 0), s.get("ended_at", 0), now)
            started, ended = s.get("started_at", 0), s.get("ended_at", 0)
            workflows.append(
                WorkflowRow(
                    id=s["id"],
                    name=s.get("name", "?"),
                    state=s.get("state", "?"),
                    counts=counts,
                    total=total,
                    done=done,
                    rate=rate,
                    eta=eta,
                    age=max(0.0, now - s.get("created_at", now)),
                    wall=((ended or now) - started) if started else None,
                )
            )
        return HomeSnapshot(workflows, self.workers(now), self.queues(), self.coordinator(), errors)

    def workers(self, now: float) -> list[WorkerRow]:
        out = []
        directory = self.home.workers_dir
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return out
        for name in names:
            dead = name.endswith(".dead")
            if name.startswith(".") or not (dead or name.endswith(HB_SUFFIX)):
                continue
            path = f"{directory}/{name}"
            try:
                hb = decode(read_raw(path), path)
            except (OSError, SpoolError):
                continue
            info = hb.info or {}
            age = max(0.0, now - hb.written_at)
            gpus = info.get("gpus")
            out.append(
                WorkerRow(
                    id=hb.holder,
                    host=info.get("host") or hb.host,
                    queues=tuple(info.get("queues", ())),
                    gpus=tuple(gpus) if gpus is not None else None,
                    slots=info.get("slots"),
                    running=len(info.get("running", ())),
                    heartbeat_age=age,
                    dead=dead or age > self.home.settings.dead_after,
                    tasks_done=int(info.get("tasks_done", 0)),
                )
            )
        out.sort(key=lambda w: (w.dead, w.id))
        return out

    def queues(self) -> list[QueueRow]:
        out = []
        for name in self.home.list_queues():
            try:
                counts = self.home.queue(name).counts()
            except (SpoolError, OSError):
                continue
            trend = self._trends.setdefault(name, deque(maxlen=self._history))
            trend.append(counts.ready)
            out.append(
                QueueRow(name, counts.ready, counts.delayed, counts.claimed_total, counts.dead, tuple(trend))
            )
        return out

    def coordinator(self) -> str | None:
        try:
            info = self.home.lease("dashboard").inspect()
        except (SpoolError, CorruptRecordError):
            return None
        if info is None or not info.holder:
            return None
        return f"{info.holder} (generation {info.generation})"


@dataclasses.dataclass(frozen=True)
class GroupRow:
    prefix: str
    counts: dict[str, int]
    total: int


@dataclasses.dataclass
class WorkflowSnapshot:
    id: str
    name: str
    state: str
    run: Run
    tasks: list[TaskView]
    groups: list[GroupRow]
    counts: dict[str, int]
    total: int
    done: int
    rate: float | None
    eta: float | None
    wall: float | None
    version: int


def load_workflow(store: WorkflowStore, wf_id: str, now: float) -> WorkflowSnapshot:
    run, version = store.load_run(wf_id)
    views = task_views(run, now)
    per: dict[str, dict[str, int]] = {}
    order: list[str] = []
    for v in views:
        prefix = v.name.split("/", 1)[0] if "/" in v.name else ""
        if prefix not in per:
            per[prefix] = dict.fromkeys(STATE_NAMES, 0)
            order.append(prefix)
        per[prefix][v.state] += 1
    groups = [GroupRow(g or "(no group)", per[g], sum(per[g].values())) for g in order]
    counts = run.count_dict()
    done = done_count(counts)
    rate, eta = rate_eta(done, len(run), run.started_at, run.ended_at, now)
    return WorkflowSnapshot(
        id=run.wf_id,
        name=run.definition.name,
        state=run.state,
        run=run,
        tasks=views,
        groups=groups,
        counts=counts,
        total=len(run),
        done=done,
        rate=rate,
        eta=eta,
        wall=((run.ended_at or now) - run.started_at) if run.started_at else None,
        version=version,
    )


# ----------------------------------------------------------------- the task DAG
def layers(run: Run) -> list[int]:
    """Each task's layer: the length of the longest dependency chain leading to it."""
    d = run.definition
    layer = [0] * len(d)
    indegree = [len(deps) for deps in d.deps]
    order = [i for i, n in enumerate(indegree) if n == 0]
    for i in order:
        for child in d.children[i]:
            layer[child] = max(layer[child], layer[i] + 1)
            indegree[child] -= 1
            if indegree[child] == 0:
                order.append(child)
    return layer


def group_of(name: str) -> str | None:
    """The collapsible group of a task: its foreach task, else its prefix group."""
    if name.endswith("]") and "[" in name:
        return name[: name.rindex("[")]
    return None


# ------------------------------------------------------------------ task detail
@dataclasses.dataclass
class AttemptInfo:
    attempt: int
    dir: str
    stdout: str
    stderr: str
    spans: list[dict[str, Any]]
    output: Any
    has_output: bool


def attempt_dir(home: Home, wf_id: str, task: str, attempt: int) -> str:
    return p.resolve(home.root, p.attempt_dir_rel(wf_id, task, attempt))


def tail_text(path: str, max_bytes: int = 64_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def load_attempt(home: Home, wf_id: str, task: str, attempt: int) -> AttemptInfo:
    import json

    directory = attempt_dir(home, wf_id, task, attempt)
    spans = []
    try:
        with open(f"{directory}/logs/spans.jsonl", encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    spans.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    output: Any = None
    has_output = False
    try:
        with open(f"{directory}/output.json", encoding="utf-8") as f:
            output = json.load(f)
            has_output = True
    except (OSError, ValueError):
        pass
    return AttemptInfo(
        attempt=attempt,
        dir=directory,
        stdout=tail_text(f"{directory}/stdout.log"),
        stderr=tail_text(f"{directory}/stderr.log"),
        spans=spans,
        output=output,
        has_output=has_output,
    )


def is_terminal(state: str) -> bool:
    return state in WF_TERMINAL
