"""One workflow's spans, indexed: attempts, tasks, the task DAG, batches, data-ready times.

`build_trace` turns a stream of `SpanRecord` s into a `Trace`; `load_trace` does it for a
workflow directory (spans, lineage and asset rows). Every analysis takes a `Trace`.

How spans become attempts
-------------------------
- An *attempt root* is a span named ``task`` carrying a string ``tuiflow.task``. Its
  ``tuiflow.attempt`` (default 0) and the task name key the attempt.
- Two roots for one (task, attempt) (a partitioned worker that finished after the
  coordinator declared it lost): keep one, preferring an outcome other than ``lost``,
  then ``completed``, then the later end. The other is counted in ``duplicate_roots``;
  its descendants stay in the e2e totals but not in the kept attempt.
- Every other span belongs to the attempt whose root is its nearest ``task`` ancestor,
  found through ``parent_id`` (any depth, order of arrival irrelevant, cycle-safe). A span
  whose ancestor chain reaches a span id nobody wrote is an *orphan* (e.g. a worker that
  died before its root span was exported).
- A span id seen twice (a file copied or re-exported) is kept once (``duplicate_spans``).

The task DAG comes from ``tuiflow.task.depends_on`` on each task's latest attempt.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .contract import (
    ATTR_ATTEMPT,
    ATTR_BATCH_ID,
    ATTR_DATA_ID,
    ATTR_DEPENDS_ON,
    ATTR_ERROR,
    ATTR_EXECUTOR,
    ATTR_EXIT_CODE,
    ATTR_GPUS,
    ATTR_HOST,
    ATTR_MODEL,
    ATTR_OUTCOME,
    ATTR_QUEUE,
    ATTR_READY_AT,
    ATTR_RUN_ID,
    ATTR_TASK,
    ATTR_WORKER,
    ATTR_WORKFLOW_ID,
    ATTR_WORKFLOW_NAME,
    NOT_RUN_OUTCOMES,
    READY_SPAN,
    SPAN_KINDS,
    TASK_SPAN,
    WORKFLOW_SPAN,
    SpanKind,
)
from .parallel import default_jobs, iter_files_parallel
from .reader import ReadStats, SpanReader, attempt_dirs, gc_paused, read_assets, read_lineage, span_files
from .records import AssetRow, LineageRow, SpanRecord
from .stats import merged_length

#: outcome of an attempt that ran to the end (ATTR_OUTCOME values, see the contract)
COMPLETED = "completed"
LOST = "lost"
#: nesting deeper than this is treated as a parent_id cycle (no real trace nests 64 deep)
MAX_DEPTH = 64
_COMPUTE = str(SpanKind.COMPUTE)
_NETWORK = str(SpanKind.NETWORK)
_STD_KINDS = {name: str(kind) for name, kind in SPAN_KINDS.items()}


@dataclass(slots=True)
class Attempt:
    """One attempt of one task: its root span, its workflow context and its descendants.

    Times are float epoch seconds; ``ready_at`` is the coordinator's clock, ``start`` /
    ``end`` / ``ready_end`` the worker's.
    """

    task: str
    attempt: int
    root: SpanRecord
    depends_on: tuple[str, ...] = ()
    ready_at: float | None = None
    worker: str | None = None
    host: str | None = None
    queue: str | None = None
    executor: str | None = None
    model: str | None = None
    batch_id: str | None = None
    data_id: str | None = None
    gpus: tuple[int, ...] = ()
    outcome: str = COMPLETED
    error: str | None = None
    exit_code: int | None = None
    #: every descendant span (any depth), in arrival order
    children: list[SpanRecord] = field(default_factory=list)
    #: end of the last READY span (``write outputs``) among the descendants
    ready_end: float | None = None
    #: other root spans written for this same (task, attempt) and dropped
    duplicates: int = 0
    #: summed durations of its descendants of kind compute / network, seconds
    compute_seconds: float = 0.0  # the union of its compute spans: nested ones count once
    compute_first_start: float = 0.0  # (while reading: the first compute span, kept for the union)
    compute_first_end: float = 0.0
    network_seconds: float = 0.0

    @property
    def start(self) -> float:
        """Start of the root span, epoch seconds."""
        return self.root.start

    @property
    def end(self) -> float:
        """End of the root span, epoch seconds."""
        return self.root.end

    @property
    def duration(self) -> float:
        """Root span length in seconds (0 for an attempt that failed before it started)."""
        return self.root.duration

    @property
    def ok(self) -> bool:
        """Whether the attempt completed."""
        return self.outcome == COMPLETED

    @property
    def ran(self) -> bool:
        """False for the record of a task decided never to run (`NOT_RUN_OUTCOMES`)."""
        return self.outcome not in NOT_RUN_OUTCOMES


@dataclass(slots=True)
class TaskInfo:
    """All attempts of one task, oldest first."""

    name: str
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def latest(self) -> Attempt:
        """The attempt with the highest number: the one DAG analyses use."""
        return self.attempts[-1]

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Direct dependencies, from the latest attempt."""
        return self.latest.depends_on


@dataclass(frozen=True, slots=True)
class DataReady:
    """When a task's output became available to its children.

    Attributes
    ----------
    time:
        Epoch seconds: end of the READY span.
    attempt:
        The attempt whose READY span it was.
    via:
        ``"own"`` (the latest attempt's READY span), ``"batch"`` (the latest attempt wrote
        none itself but a member of its merged batch did), or ``"earlier attempt"``.
    """

    time: float
    attempt: int
    via: str = "own"


@dataclass(slots=True)
class Trace:
    """A workflow's spans, indexed for analysis. Build with `build_trace` / `load_trace`."""

    spans: list[SpanRecord]
    tasks: dict[str, TaskInfo]
    #: every span by name (the e2e breakdown groups by name)
    by_name: dict[str, list[SpanRecord]] = field(default_factory=dict)
    workflow: SpanRecord | None = None
    workflow_id: str | None = None
    workflow_name: str | None = None
    trace_id: str | None = None
    #: batch id -> attempts sharing it (any task, any attempt number)
    batches: dict[str, list[Attempt]] = field(default_factory=dict)
    #: spans whose ancestor chain reaches a span id that is not in the trace
    orphans: list[SpanRecord] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)
    duplicate_spans: int = 0
    duplicate_roots: int = 0
    lineage: list[LineageRow] = field(default_factory=list)
    assets: list[AssetRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _ready: dict[str, DataReady | None] = field(default_factory=dict)

    @property
    def attempts(self) -> list[Attempt]:
        """Every kept attempt, task by task, oldest first."""
        return [a for t in self.tasks.values() for a in t.attempts]

    def latest(self, task: str) -> Attempt | None:
        """The latest attempt of `task`, or None when the task has no spans."""
        info = self.tasks.get(task)
        return info.latest if info is not None else None

    def data_ready(self, task: str) -> DataReady | None:
        """When `task`'s output became available to its children.

        The latest attempt's READY span end; else, for a member of a merged batch, the
        latest READY end in that batch; else the READY end of the newest earlier attempt
        that wrote one. None when there is none (the task failed before writing outputs,
        or has no spans).

        Parameters
        ----------
        task:
            Task name.

        Returns
        -------
        DataReady | None
        """
        if task in self._ready:
            return self._ready[task]
        info = self.tasks.get(task)
        found: DataReady | None = None
        if info is not None:
            latest = info.latest
            if latest.ready_end is not None:
                found = DataReady(latest.ready_end, latest.attempt, "own")
            elif latest.batch_id is not None:
                ends = [a.ready_end for a in self.batches.get(latest.batch_id, ()) if a.ready_end is not None]
                if ends:
                    found = DataReady(max(ends), latest.attempt, "batch")
            if found is None:
                for earlier in reversed(info.attempts[:-1]):
                    if earlier.ready_end is not None:
                        found = DataReady(earlier.ready_end, earlier.attempt, "earlier attempt")
                        break
        self._ready[task] = found
        return found

    @property
    def start(self) -> float | None:
        """Start of the workflow span, else the earliest attempt start (epoch seconds)."""
        if self.workflow is not None:
            return self.workflow.start
        return min((a.start for t in self.tasks.values() for a in t.attempts), default=None)

    @property
    def end(self) -> float | None:
        """End of the workflow span, else the latest attempt end (epoch seconds)."""
        if self.workflow is not None:
            return self.workflow.end
        return max((a.end for t in self.tasks.values() for a in t.attempts), default=None)


def build_trace(
    records: Iterable[SpanRecord],
    stats: ReadStats | None = None,
    lineage: Iterable[LineageRow] = (),
    assets: Iterable[AssetRow] = (),
) -> Trace:
    """Index spans into a `Trace`.

    Parameters
    ----------
    records:
        Spans in any order (children may come before their parents).
    stats:
        The reader's counters, carried into the trace for the report (read them after
        `records` is consumed: this function consumes it).
    lineage, assets:
        Lineage and asset rows of the same workflow.

    Returns
    -------
    Trace
    """
    spans, by_id, by_name, roots, workflows, duplicate_spans = _index(records)
    warnings: list[str] = []
    kept, dropped_roots = _keep_attempts(roots)
    orphans = _attach_children(spans, by_id, roots, kept)
    tasks: dict[str, TaskInfo] = {}
    for att in sorted(kept.values(), key=lambda a: (a.task, a.attempt)):
        tasks.setdefault(att.task, TaskInfo(att.task)).attempts.append(att)
    batches: dict[str, list[Attempt]] = {}
    for att in kept.values():
        if att.batch_id is not None:
            batches.setdefault(att.batch_id, []).append(att)

    workflow = min(workflows, key=lambda r: (r.start, -r.end)) if workflows else None
    if len(workflows) > 1:
        warnings.append(f"{len(workflows)} workflow spans; using the earliest")
    stats = stats if stats is not None else ReadStats()
    trace_id = max(stats.trace_ids, key=stats.trace_ids.__getitem__) if stats.trace_ids else None
    if len(stats.trace_ids) > 1:
        warnings.append(f"spans of {len(stats.trace_ids)} trace ids; a workflow is one trace")
    if dropped_roots:
        warnings.append(f"{dropped_roots} duplicate task root span(s) for one (task, attempt) dropped")
    if orphans:
        warnings.append(f"{len(orphans)} span(s) whose parent is missing (not attributed to any attempt)")
    wf_attrs: dict[str, Any] = (workflow.attrs or {}) if workflow is not None else {}
    workflow_id = _str(wf_attrs.get(ATTR_WORKFLOW_ID)) or _most_common(
        _str(a.root.attr(ATTR_WORKFLOW_ID)) or _str(a.root.attr(ATTR_RUN_ID)) for a in kept.values()
    )
    workflow_name = _str(wf_attrs.get(ATTR_WORKFLOW_NAME)) or _most_common(
        _str(a.root.attr(ATTR_WORKFLOW_NAME)) for a in kept.values()
    )
    return Trace(
        spans=spans,
        by_name=by_name,
        tasks=tasks,
        workflow=workflow,
        workflow_id=workflow_id,
        workflow_name=workflow_name,
        trace_id=trace_id,
        batches=batches,
        orphans=orphans,
        stats=stats,
        duplicate_spans=duplicate_spans,
        duplicate_roots=dropped_roots,
        lineage=list(lineage),
        assets=list(assets),
        warnings=warnings,
    )


def _index(
    records: Iterable[SpanRecord],
) -> tuple[
    list[SpanRecord],
    dict[int, SpanRecord],
    dict[str, list[SpanRecord]],
    list[SpanRecord],
    list[SpanRecord],
    int,
]:
    """Spans (the first of each id), by id, by name; task roots; workflow spans; how many
    duplicates were dropped."""
    spans: list[SpanRecord] = []
    by_id: dict[int, SpanRecord] = {}
    roots: list[SpanRecord] = []
    workflows: list[SpanRecord] = []
    duplicate_spans = 0
    add = spans.append
    first = by_id.setdefault
    by_name: dict[str, list[SpanRecord]] = {}
    for rec in records:
        if first(rec.span_id, rec) is not rec:
            duplicate_spans += 1
            continue
        add(rec)
        name = rec.name
        group = by_name.get(name)
        if group is None:
            by_name[name] = [rec]
        else:
            group.append(rec)
        if name == TASK_SPAN:
            if rec.attrs is not None and isinstance(rec.attrs.get(ATTR_TASK), str):
                roots.append(rec)
        elif name == WORKFLOW_SPAN and rec.parent_id is None:
            workflows.append(rec)
    return spans, by_id, by_name, roots, workflows, duplicate_spans


def _keep_attempts(roots: list[SpanRecord]) -> tuple[dict[tuple[str, int], Attempt], int]:
    """One attempt per (task, attempt) of the roots (the best of duplicates), and how many
    roots were dropped."""
    kept: dict[tuple[str, int], Attempt] = {}
    dropped_roots = 0
    for rec in roots:
        att = _attempt_from_root(rec)
        key = (att.task, att.attempt)
        other = kept.get(key)
        if other is None:
            kept[key] = att
        else:
            dropped_roots += 1
            winner, loser = (att, other) if _rank(att) > _rank(other) else (other, att)
            winner.duplicates += 1 + loser.duplicates
            kept[key] = winner
    return kept, dropped_roots


def _attach_children(
    spans: list[SpanRecord],
    by_id: dict[int, SpanRecord],
    roots: list[SpanRecord],
    kept: dict[tuple[str, int], Attempt],
) -> list[SpanRecord]:
    """Give every span to the attempt it descends from (with the attempt's compute time:
    the union of its compute spans, network time and data-ready end, in the same pass);
    returns the orphans (an ancestor is missing)."""
    # span id -> owning Attempt, None (owned by no attempt: under the workflow span, under a
    # dropped duplicate root, in a parent_id cycle) or _ORPHAN (an ancestor is missing).
    # Holds the roots and whatever `_resolve` memoises, not every span: at a million
    # spans the direct children, looked up by their parent, need no entry of their own.
    owner: dict[int, Any] = {rec.span_id: None for rec in roots}
    for att in kept.values():
        owner[att.root.span_id] = att
    root_ids = set(owner)
    orphans: list[SpanRecord] = []
    lookup = owner.get
    std_kinds = _STD_KINDS
    # an attempt's compute spans, by id(attempt), where it has more than one: a span inside
    # another (a user's span inside `execute`) must count once (merged below)
    compute_spans: dict[int, list[tuple[float, float]]] = {}
    for rec in spans:
        pid = rec.parent_id
        if pid is None:
            continue
        name = rec.name
        if name == TASK_SPAN and rec.span_id in root_ids:
            continue
        att = lookup(pid, _UNKNOWN)
        if att is _UNKNOWN:
            att = _resolve(rec, by_id, owner)
        if att is None:
            continue
        if att is _ORPHAN:
            orphans.append(rec)
            continue
        att.children.append(rec)
        # Per-attempt totals here, in the one pass that already touches every child.
        kind = rec.kind if rec.kind is not None else std_kinds.get(name)
        if kind is not None:
            d = rec.end - rec.start
            if d > 0.0:
                if kind == _COMPUTE:
                    if att.compute_seconds:
                        ivs = compute_spans.get(id(att))
                        if ivs is None:
                            ivs = compute_spans[id(att)] = [(att.compute_first_start, att.compute_first_end)]
                        ivs.append((rec.start, rec.end))
                    else:
                        att.compute_first_start, att.compute_first_end = rec.start, rec.end
                    att.compute_seconds += d
                elif kind == _NETWORK:
                    att.network_seconds += d
        if name == READY_SPAN and (att.ready_end is None or rec.end > att.ready_end):
            att.ready_end = rec.end

    if compute_spans:
        for att in kept.values():
            ivs = compute_spans.get(id(att))
            if ivs is not None:
                att.compute_seconds = merged_length(ivs)
    return orphans


def load_trace(wf_dir: str | os.PathLike[str], *, jobs: int | None = None) -> Trace:
    """Read a workflow directory (spans of every attempt and the coordinator, lineage and
    asset rows) into a `Trace`.

    Parameters
    ----------
    wf_dir:
        ``<home>/workflows/<wf_id>``.
    jobs:
        Processes parsing span files (this one included). None picks by size: 1 for
        small workflows, up to the available CPUs for large ones (see
        `analyzer.parallel`). The result does not depend on it.

    Returns
    -------
    Trace

    Raises
    ------
    TraceNotFoundError
        When `wf_dir` is not a directory.
    """
    dirs = attempt_dirs(wf_dir)
    files = span_files(wf_dir, dirs)
    reader = SpanReader()
    stats = reader.stats
    jobs = default_jobs(files) if jobs is None else jobs
    rows: dict[str, list] = {}

    def read_rows() -> None:
        # Runs while helper processes finish their chunks of span files.
        rows["lineage"] = read_lineage(wf_dir, stats, dirs)
        rows["assets"] = read_assets(wf_dir, stats, dirs)

    with gc_paused():
        trace = build_trace(iter_files_parallel(reader, files, jobs, read_rows), stats)
    trace.lineage = rows["lineage"]
    trace.assets = rows["assets"]
    return trace


def trace_from_lines(lines: Iterable[str | bytes]) -> Trace:
    """Build a `Trace` from JSON lines (no lineage or assets).

    Parameters
    ----------
    lines:
        Span lines from any number of files, in any order.

    Returns
    -------
    Trace
    """
    reader = SpanReader()
    with gc_paused():
        return build_trace(reader.iter_lines(lines), reader.stats)


def trace_from_files(paths: Iterable[str | os.PathLike[str]]) -> Trace:
    """Build a `Trace` from explicit span files (no lineage or assets).

    Parameters
    ----------
    paths:
        ``spans.jsonl`` files; missing ones are ignored.

    Returns
    -------
    Trace
    """
    reader = SpanReader()
    with gc_paused():
        return build_trace(reader.iter_files(paths), reader.stats)


# --- helpers -------------------------------------------------------------------------------

_UNKNOWN: Any = object()
_ORPHAN: Any = object()


def _resolve(rec: SpanRecord, by_id: dict[int, SpanRecord], owner: dict[int, Any]) -> Any:
    """Walk up from `rec` to the nearest attempt root; memoise every span passed on the way.

    Returns the owning `Attempt`, None (no attempt owns it) or `_ORPHAN`.
    """
    path: list[int] = []
    cur = rec
    while True:
        pid = cur.parent_id
        if pid is None:
            result = None  # reached a root that is not an attempt (the workflow span)
            break
        hit = owner.get(pid, _UNKNOWN)
        if hit is not _UNKNOWN:
            result = hit
            break
        parent = by_id.get(pid)
        if parent is None:
            owner[pid] = _ORPHAN  # siblings under the same missing span stop here at once
            result = _ORPHAN
            break
        if len(path) >= MAX_DEPTH or pid in path:
            result = None  # a parent_id cycle: nobody owns these spans
            break
        path.append(pid)
        cur = parent
    for sid in path:
        owner[sid] = result
    owner[rec.span_id] = result
    return result


def _attempt_from_root(rec: SpanRecord) -> Attempt:
    a = rec.attrs or {}
    outcome = _str(a.get(ATTR_OUTCOME)) or ("failed" if rec.status == "ERROR" else COMPLETED)
    deps = a.get(ATTR_DEPENDS_ON)
    if isinstance(deps, str):
        deps = [deps]
    ready_at = a.get(ATTR_READY_AT)
    gpus = a.get(ATTR_GPUS)
    exit_code = a.get(ATTR_EXIT_CODE)
    return Attempt(
        task=a[ATTR_TASK],
        attempt=_int(a.get(ATTR_ATTEMPT)) or 0,
        root=rec,
        depends_on=tuple(dict.fromkeys(d for d in deps if isinstance(d, str))) if deps else (),
        # Producers write 0.0 when they do not know: no queue time before the epoch exists.
        ready_at=float(ready_at) if _is_number(ready_at) and ready_at > 0 else None,
        worker=_str(a.get(ATTR_WORKER)),
        host=_str(a.get(ATTR_HOST)),
        queue=_str(a.get(ATTR_QUEUE)),
        executor=_str(a.get(ATTR_EXECUTOR)),
        model=_str(a.get(ATTR_MODEL)),
        batch_id=_str(a.get(ATTR_BATCH_ID)),
        data_id=_str(a.get(ATTR_DATA_ID)),
        gpus=tuple(g for g in gpus if isinstance(g, int)) if isinstance(gpus, list) else (),
        outcome=outcome,
        error=_str(a.get(ATTR_ERROR)) or rec.description,
        exit_code=_int(exit_code),
    )


def _rank(att: Attempt) -> tuple[bool, bool, float]:
    return (att.outcome != LOST, att.outcome == COMPLETED, att.end)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _most_common(values: Iterable[str | None]) -> str | None:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None
