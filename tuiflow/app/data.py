"""What the dashboard shows, computed without Textual (so it is testable on its own and
runs on worker threads). Screens call these functions off the UI thread and only draw
the results.

Times are the dashboard's clock (`now`), given by the caller: tests pass a fixed one.
Workers come from the engine's one heartbeat reader (`Client.workers`), their ages measured
against that clock: this is a display, never a decision (the coordinator decides liveness
by watching records change). Figures and state colours are `analyzer.fmt`'s.
"""

from __future__ import annotations

import array
import dataclasses
import json
from collections import deque
from typing import Any

from analyzer.fmt import rate_and_eta
from spool import CorruptRecordError, Home, SpoolError, layout
from tuiflow.cli.tail import read_from
from tuiflow.engine.client import Client, task_times
from tuiflow.engine.model import Definition
from tuiflow.engine.runstate import STATE_CODES, STATE_NAMES, TERMINAL, WF_TERMINAL, RunState
from tuiflow.engine.store import WorkflowStore

#: how much of an attempt's stdout and stderr the task screen shows (the end of each)
LOG_TAIL_BYTES = 64_000


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
    #: slot -> model keys its model host holds, least recently used first, as the heartbeat
    #: says ({} for a worker without model hosts; drawn by `analyzer.fmt.fmt_residency`)
    models: dict[str, Any] = dataclasses.field(default_factory=dict)
    slurm_job: str | None = None  # the Slurm job it runs in, if any


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


class HomeReader:
    """Reads a home for the overview. Keeps queue-depth history for the trend column."""

    def __init__(self, home: Home, history: int = 30):
        self.home = home
        self.store = WorkflowStore(home)
        self.client = Client(home, who="dashboard", store=self.store)
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
            rate, eta = rate_and_eta(done, total, s.get("started_at", 0), s.get("ended_at", 0), now)
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
        out = [
            WorkerRow(
                id=w["id"],
                host=w["host"],
                queues=tuple(w["queues"]),
                gpus=tuple(w["gpus"]) if w["gpus"] is not None else None,
                slots=w["slots"],
                running=len(w["running"]),
                heartbeat_age=w["heartbeat_age"],
                dead=w["dead"],
                tasks_done=int(w["tasks_done"]),
                models=w["models"] if isinstance(w["models"], dict) else {},
                slurm_job=str(w["slurm"].get("job")) if w.get("slurm") else None,
            )
            # ages against the dashboard's clock: nothing is written (a probe file in the
            # watched workers/ would wake the dashboard again), and tests fix the clock
            for w in self.client.workers(now=now)
        ]
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


class TaskIndex:
    """What never changes about a workflow's tasks, worked out once per workflow (its
    definition is immutable) so that a refresh of 10,000 tasks touches only their states:
    names, lower-cased names for the filter, prefix groups, and the DAG's layers."""

    def __init__(self, definition: Definition):
        tasks = definition.tasks
        self.names = [t.name for t in tasks]
        self.index = definition.index
        self.lower = [n.lower() for n in self.names]
        self.name_width = max(12, min(48, max(map(len, self.names), default=12)))
        self.prefixes: list[str] = []
        seen: dict[str, int] = {}
        group = array.array("I", bytes(4 * len(tasks)))
        for i, name in enumerate(self.names):
            prefix = name.split("/", 1)[0] if "/" in name else ""
            g = seen.get(prefix)
            if g is None:
                g = seen[prefix] = len(self.prefixes)
                self.prefixes.append(prefix)
            group[i] = g
        self.group = group
        self._layout: list[DagLayer] | None = None
        self._definition = definition

    def group_counts(self, st: bytes | bytearray) -> list[GroupRow]:
        if len(self.prefixes) == 1:
            counts = dict(zip(STATE_NAMES, map(st.count, range(len(STATE_NAMES))), strict=True))
            return [GroupRow(self.prefixes[0] or "(no group)", counts, len(st))]
        per = [[0] * len(STATE_NAMES) for _ in self.prefixes]
        for g, code in zip(self.group, st, strict=True):
            per[g][code] += 1
        return [
            GroupRow(prefix or "(no group)", dict(zip(STATE_NAMES, row, strict=True)), sum(row))
            for prefix, row in zip(self.prefixes, per, strict=True)
        ]

    def dag_layout(self) -> list[DagLayer]:
        """The DAG by layers; in each layer a foreach task's items fold into one group, and
        so does a name prefix with more than `FOLD_OVER` tasks in the layer."""
        if self._layout is None:
            self._layout = _dag_layout(self._definition)
        return self._layout


_INDEXES: dict[str, TaskIndex] = {}


def task_index(wf_id: str, definition: Definition) -> TaskIndex:
    cached = _INDEXES.get(wf_id)
    if cached is None or cached._definition is not definition:
        if len(_INDEXES) > 32:
            _INDEXES.clear()
        cached = _INDEXES[wf_id] = TaskIndex(definition)
    return cached


@dataclasses.dataclass
class WorkflowSnapshot:
    id: str
    name: str
    state: str
    run: RunState
    index: TaskIndex
    now: float
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
    index = task_index(wf_id, run.definition)
    counts = run.count_dict()
    done = done_count(counts)
    rate, eta = rate_and_eta(done, len(run), run.started_at, run.ended_at, now)
    return WorkflowSnapshot(
        id=run.wf_id,
        name=run.definition.name,
        state=run.state,
        run=run,
        index=index,
        now=now,
        groups=index.group_counts(run.st),
        counts=counts,
        total=len(run),
        done=done,
        rate=rate,
        eta=eta,
        wall=((run.ended_at or now) - run.started_at) if run.started_at else None,
        version=version,
    )


# ------------------------------------------------------------------- task rows
def task_order(snap: WorkflowSnapshot, text: str, state: str, sort: str) -> range | list[int]:
    """The task indices the task list shows, filtered and sorted. Unfiltered in
    definition order it is a `range`: nothing is built for the common case."""
    run, n = snap.run, len(snap.run)
    order: range | list[int] = range(n)
    if state != "all":
        code, st = STATE_CODES[state], run.st
        order = [i for i in order if st[i] == code]
    if text:
        needle, lower = text.lower(), snap.index.lower
        order = [i for i in order if needle in lower[i]]
    if sort == "state":
        st = run.st
        order = sorted(order, key=lambda i: (STATE_NAMES[st[i]], i))
    elif sort == "ran":
        order = sorted(order, key=lambda i: -(task_times(run, i, snap.now)[1] or 0.0))
    elif sort == "queued":
        order = sorted(order, key=lambda i: -(task_times(run, i, snap.now)[0] or 0.0))
    elif sort == "attempt":
        attempt = run.attempt
        order = sorted(order, key=lambda i: -attempt[i])
    return order


def task_row(snap: WorkflowSnapshot, i: int) -> tuple[Any, ...]:
    """What the task list draws for task `i`: name, state, attempt, worker, seconds queued,
    seconds run (None where it does not apply), exit/error."""
    run = snap.run
    queued, ran = task_times(run, i, snap.now)
    parts = []
    exit_code = run.exit_code.get(i)
    if exit_code not in (None, 0):
        parts.append(f"exit {exit_code}")
    reason = run.reason.get(i)
    if reason:
        parts.append(reason.splitlines()[0][:120])
    return (
        snap.index.names[i],
        STATE_NAMES[run.st[i]],
        run.attempt[i],
        run.worker.get(i) or "",
        queued,
        ran,
        " · ".join(parts),
    )


# ----------------------------------------------------------------- the task DAG
FOLD_OVER = 12


@dataclasses.dataclass(frozen=True)
class DagLayer:
    layer: int
    size: int
    #: ("group", name, member indices, deps text) or ("task", index, deps text)
    items: list[tuple[Any, ...]]


def layers(definition: Definition) -> list[int]:
    """Each task's layer: the length of the longest dependency chain leading to it."""
    d = definition
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


def _dag_layout(d: Definition) -> list[DagLayer]:
    by_layer: dict[int, list[int]] = {}
    for i, layer in enumerate(layers(d)):
        by_layer.setdefault(layer, []).append(i)
    out = []
    for layer in sorted(by_layer):
        members = by_layer[layer]
        per_prefix: dict[str, int] = {}
        for i in members:
            name = d.tasks[i].name
            if "/" in name:
                prefix = name.split("/", 1)[0] + "/*"
                per_prefix[prefix] = per_prefix.get(prefix, 0) + 1
        groups: dict[str, list[int]] = {}
        items: list[tuple[Any, ...]] = []
        for i in members:
            t = d.tasks[i]
            g = t.group
            if g is None and "/" in t.name:
                prefix = t.name.split("/", 1)[0] + "/*"
                g = prefix if per_prefix[prefix] > FOLD_OVER else None
            if g is None:
                items.append(("task", i, deps_text(d, d.deps[i])))
            elif g in groups:
                groups[g].append(i)
            else:
                groups[g] = [i]
                items.append(("group", g, groups[g]))
        # a group's upstreams: those of its first members (items of one foreach share them)
        items = [
            (*item, deps_text(d, sorted({dep for i in item[2][:50] for dep in d.deps[i]})))
            if item[0] == "group"
            else item
            for item in items
        ]
        out.append(DagLayer(layer, len(members), items))
    return out


def deps_text(d: Definition, deps: Any) -> str:
    """Upstream names, a foreach group's items folded to `group[×n]`, at most six."""
    folded: dict[str, int] = {}
    out: list[str] = []
    for dep in deps:
        t = d.tasks[dep]
        if t.group is not None:
            if t.group not in folded:
                out.append(t.group)
            folded[t.group] = folded.get(t.group, 0) + 1
        else:
            out.append(t.name)
    text = ", ".join(f"{n}[×{folded[n]}]" if n in folded else n for n in out[:6])
    return text + (" …" if len(out) > 6 else "")


def dag_rows(snap: WorkflowSnapshot, expanded: set[str] | frozenset[str]) -> list[tuple[Any, Any]]:
    """(key, row) pairs of the DAG view: layer rules, folded groups with their state
    counts, tasks; the members of `expanded` groups under them."""
    run = snap.run
    st, names = run.st, snap.index.names
    rows: list[tuple[Any, Any]] = []
    for layer in snap.index.dag_layout():
        rows.append((("layer", layer.layer), ("layer", layer.layer, layer.size)))
        for item in layer.items:
            if item[0] == "task":
                _, i, deps = item
                rows.append((("task", i), ("task", names[i], STATE_NAMES[st[i]], deps, False)))
                continue
            _, name, members, deps = item
            codes = [0] * len(STATE_NAMES)
            for i in members:
                codes[st[i]] += 1
            counts = tuple((s, c) for s, c in zip(STATE_NAMES, codes, strict=True) if c)
            open_ = name in expanded
            rows.append((("group", name), ("group", name, counts, len(members), open_, deps)))
            if open_:
                rows.extend((("task", i), ("task", names[i], STATE_NAMES[st[i]], "", True)) for i in members)
    return rows


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
    return layout.attempt_dir(home.root, wf_id, task, attempt)


def tail_text(path: str, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The end of a log file (at most `max_bytes`); empty when it is missing or unreadable."""
    try:
        return read_from(path, max_bytes=max_bytes).text
    except SpoolError:
        return ""


def load_attempt(home: Home, wf_id: str, task: str, attempt: int) -> AttemptInfo:
    directory = attempt_dir(home, wf_id, task, attempt)
    spans = []
    try:
        with open(layout.attempt_log(directory, layout.SPANS_FILE), encoding="utf-8", errors="replace") as f:
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
        with open(layout.attempt_file(directory, layout.OUTPUT_FILE), encoding="utf-8") as f:
            output = json.load(f)
            has_output = True
    except (OSError, ValueError):
        pass
    return AttemptInfo(
        attempt=attempt,
        dir=directory,
        stdout=tail_text(layout.attempt_file(directory, layout.STDOUT_FILE)),
        stderr=tail_text(layout.attempt_file(directory, layout.STDERR_FILE)),
        spans=spans,
        output=output,
        has_output=has_output,
    )


def is_terminal(state: str) -> bool:
    return state in WF_TERMINAL
