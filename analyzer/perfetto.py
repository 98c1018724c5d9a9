"""Chrome trace-event JSON of a run, for https://ui.perfetto.dev (or chrome://tracing).

Layout
------
- One process (pid 1) named after the workflow; a ``coordinator`` thread (tid 0) holds
  the ``workflow`` span.
- One thread (tid) per worker. Each attempt is a slice ``<task> #<attempt>`` spanning
  queued + running, holding a ``queued`` slice (``ready_at`` -> start) and a ``running``
  slice (start -> end) in which the attempt's spans nest by time.
- Slices on one thread must nest. When a worker runs attempts concurrently (several GPU
  slots, or one attempt queued while another runs), the worker gets extra lanes
  ``<worker> (2)``, ``<worker> (3)`` ... next to its first one, each a thread of its own.
  A child span that still overlaps a sibling without nesting (threads inside a task) is
  emitted as an async slice instead of being dropped by the importer.
- Timestamps are microseconds since the earliest instant in the run (``otherData``
  keeps that instant as ``t0_epoch_seconds``). Critical-path attempts are tagged
  ``critical`` in their args and category.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .records import SpanRecord
from .stats import span_kind
from .trace import Attempt, Trace

PID = 1
COORDINATOR_TID = 0
UNKNOWN_WORKER = "(unknown worker)"


def perfetto_trace(trace: Trace, *, critical: Iterable[str] = ()) -> dict[str, Any]:
    """The run as a Chrome trace-event JSON object.

    Parameters
    ----------
    trace:
        The workflow's trace.
    critical:
        Task names on the critical path, to tag.

    Returns
    -------
    dict
        ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``.
    """
    on_path = set(critical)
    attempts = [a for info in trace.tasks.values() for a in info.attempts]
    instants = [_queued_start(a) for a in attempts]
    if trace.workflow is not None:
        instants.append(trace.workflow.start)
    t0 = min(instants, default=0.0)

    def us(epoch: float) -> int:
        # Whole microseconds: the files' resolution. Finer digits are only float noise
        # (an epoch near 1.8e9 s carries about 0.2 us of it).
        return round((epoch - t0) * 1e6)

    title = trace.workflow_name or "workflow"
    if trace.workflow_id:
        title = f"{title} ({trace.workflow_id})"
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": PID, "tid": COORDINATOR_TID, "name": "process_name", "args": {"name": title}},
        {
            "ph": "M",
            "pid": PID,
            "tid": COORDINATOR_TID,
            "name": "thread_name",
            "args": {"name": "coordinator"},
        },
        {
            "ph": "M",
            "pid": PID,
            "tid": COORDINATOR_TID,
            "name": "thread_sort_index",
            "args": {"sort_index": 0},
        },
    ]
    if trace.workflow is not None:
        wf = trace.workflow
        events.append(_slice("workflow", "workflow", us(wf.start), us(wf.end), tid=COORDINATOR_TID, args={}))

    lanes = _lanes(attempts)
    tid = COORDINATOR_TID
    async_id = 0
    for worker in sorted(lanes):
        for index, lane in enumerate(lanes[worker]):
            tid += 1
            label = worker if index == 0 else f"{worker} ({index + 1})"
            events.append({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": label}})
            events.append(
                {"ph": "M", "pid": PID, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}}
            )
            slices: list[dict[str, Any]] = []
            for att in lane:
                slices.extend(
                    _attempt_slices(att, tid, us, att.task in on_path and att is _latest(trace, att))
                )
            nested, loose = _split_misnested(slices)
            events.extend(nested)
            for ev in loose:
                async_id += 1
                args = ev.get("args", {})
                events.append(
                    {
                        "ph": "b",
                        "cat": ev["cat"],
                        "name": ev["name"],
                        "pid": PID,
                        "tid": tid,
                        "id": async_id,
                        "ts": ev["ts"],
                        "args": args,
                    }
                )
                events.append(
                    {
                        "ph": "e",
                        "cat": ev["cat"],
                        "name": ev["name"],
                        "pid": PID,
                        "tid": tid,
                        "id": async_id,
                        "ts": ev["ts"] + ev["dur"],
                    }
                )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "workflow_id": trace.workflow_id,
            "workflow_name": trace.workflow_name,
            "trace_id": trace.trace_id,
            "t0_epoch_seconds": t0,
        },
    }


def render_perfetto(trace: Trace, *, critical: Iterable[str] = ()) -> str:
    """`perfetto_trace` as a JSON string (save it as ``trace.json``, open in Perfetto).

    Parameters
    ----------
    trace:
        The workflow's trace.
    critical:
        Task names on the critical path, to tag.

    Returns
    -------
    str
    """
    return json.dumps(perfetto_trace(trace, critical=critical), separators=(",", ":"))


def _latest(trace: Trace, att: Attempt) -> Attempt:
    return trace.tasks[att.task].latest


def _queued_start(att: Attempt) -> float:
    if att.ready_at is not None and att.ready_at < att.start:
        return att.ready_at
    return att.start


def _lanes(attempts: list[Attempt]) -> dict[str, list[list[Attempt]]]:
    """Per worker, attempts split into lanes whose [queued start, end] never overlap."""
    by_worker: dict[str, list[Attempt]] = {}
    for att in attempts:
        by_worker.setdefault(att.worker or UNKNOWN_WORKER, []).append(att)
    out: dict[str, list[list[Attempt]]] = {}
    for worker, group in by_worker.items():
        group.sort(key=lambda a: (_queued_start(a), a.start, a.task, a.attempt))
        lanes: list[list[Attempt]] = []
        ends: list[float] = []
        for att in group:
            begin = _queued_start(att)
            for i, end in enumerate(ends):
                if end <= begin:
                    lanes[i].append(att)
                    ends[i] = max(att.end, begin)
                    break
            else:
                lanes.append([att])
                ends.append(max(att.end, begin))
        out[worker] = lanes
    return out


def _slice(name: str, cat: str, ts: int, end: int, *, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "ph": "X",
        "name": name,
        "cat": cat,
        "pid": PID,
        "tid": tid,
        "ts": ts,
        "dur": max(0, end - ts),
        "args": args,
    }


def _attempt_slices(att: Attempt, tid: int, us: Any, critical: bool) -> list[dict[str, Any]]:
    begin = _queued_start(att)
    end = max(att.end, att.start)
    args: dict[str, Any] = {
        "task": att.task,
        "attempt": att.attempt,
        "outcome": att.outcome,
        "worker": att.worker,
        "host": att.host,
        "queue": att.queue,
        "executor": att.executor,
    }
    if att.error:
        args["error"] = att.error
    if att.batch_id:
        args["batch_id"] = att.batch_id
    if critical:
        args["critical"] = True
    cat = "attempt,critical" if critical else "attempt"
    out = [_slice(f"{att.task} #{att.attempt}", cat, us(begin), us(end), tid=tid, args=args)]
    if begin < att.start:
        out.append(_slice("queued", "queued", us(begin), us(att.start), tid=tid, args={}))
    out.append(_slice("running", "running", us(att.start), us(end), tid=tid, args={"outcome": att.outcome}))
    for rec in att.children:
        # Clamp into the attempt: a child outside its root would break the nesting.
        s = min(max(rec.start, att.start), end)
        e = min(max(rec.end, s), end)
        out.append(_slice(rec.name, span_kind(rec) or "span", us(s), us(e), tid=tid, args=_span_args(rec)))
    return out


def _span_args(rec: SpanRecord) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if rec.nbytes is not None:
        args["bytes"] = rec.nbytes
    if rec.status == "ERROR":
        args["status"] = "ERROR"
        if rec.description:
            args["error"] = rec.description
    if rec.attrs:
        args.update({k: v for k, v in rec.attrs.items() if isinstance(v, str | int | float | bool)})
    return args


def _split_misnested(slices: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Separate the slices that nest properly on one thread from those that would not."""
    # Enclosing slices first: by start, then longest.
    ordered = sorted(slices, key=lambda ev: (ev["ts"], -ev["dur"]))
    nested: list[dict[str, Any]] = []
    loose: list[dict[str, Any]] = []
    open_ends: list[float] = []
    for ev in ordered:
        start, end = ev["ts"], ev["ts"] + ev["dur"]
        # A slice that ended at `start` is closed, except for a zero-length event right
        # at its end, which still sits inside it.
        while open_ends and (open_ends[-1] < start or (open_ends[-1] == start and ev["dur"] > 0)):
            open_ends.pop()
        if open_ends and end > open_ends[-1]:
            loose.append(ev)
            continue
        nested.append(ev)
        open_ends.append(end)
    return nested, loose
