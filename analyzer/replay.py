"""Replay: what every task was doing at one instant of a run, rebuilt from its spans.

For a task (its attempts, in order) at time ``t`` (epoch seconds):

- **running** from an attempt's root-span start to its end (on its worker);
- **queued** from when the coordinator queued an attempt (``tuiflow.task.ready_at``) until
  it started: waiting for a worker to claim it and begin (spans record no claim of their
  own, so a claimed attempt still setting up counts as queued);
- **pending** before its first attempt was queued: its parents had not all ended (those
  still unfinished at ``t`` are named);
- **retrying** after a failed attempt ended and before the next one was queued (a backoff);
- after its last attempt ended, that attempt's **outcome**: completed, failed, timeout,
  cancelled, lost, worker stopped.

Tasks with no spans at all (skipped, upstream_failed, cancelled before dispatch) are not in
a trace and are not replayed. Times without a ``ready_at`` (0.0, or an older producer) make
an attempt's queued interval unknown: the task is then pending until it starts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .stats import Frozen
from .trace import Attempt, Trace

PENDING, QUEUED, RUNNING, RETRYING = "pending", "queued", "running", "retrying"


class TaskAt(Frozen):
    """One task at the instant."""

    task: str
    state: str
    attempt: int | None  # the attempt the state is about (None: pending, none queued yet)
    since: float | None  # epoch seconds the state began (None: unknown)
    worker: str | None  # running: where
    waiting_for: list[str]  # pending: parents not yet ended


class Snapshot(Frozen):
    """Every task that ran, at `at`, and how many were in each state."""

    at: float
    offset: float | None  # seconds since the workflow's start
    counts: dict[str, int]
    tasks: list[TaskAt]


def _queued_at(a: Attempt) -> float | None:
    return a.ready_at if a.ready_at else None


def task_at(trace: Trace, task: str, t: float) -> TaskAt:
    """What `task` was doing at `t` (see the module docstring)."""
    attempts = sorted(trace.tasks[task].attempts, key=lambda a: a.attempt)
    for k, a in enumerate(attempts):
        nxt = attempts[k + 1] if k + 1 < len(attempts) else None
        queued = _queued_at(a)
        if t < a.start:
            if queued is not None and queued <= t:
                return TaskAt(
                    task=task, state=QUEUED, attempt=a.attempt, since=queued, worker=None, waiting_for=[]
                )
            if k == 0:
                break  # before its first attempt: pending
            prev = attempts[k - 1]
            return TaskAt(
                task=task, state=RETRYING, attempt=prev.attempt, since=prev.end, worker=None, waiting_for=[]
            )
        if t < a.end:
            return TaskAt(
                task=task, state=RUNNING, attempt=a.attempt, since=a.start, worker=a.worker, waiting_for=[]
            )
        if nxt is None:
            return TaskAt(
                task=task, state=a.outcome, attempt=a.attempt, since=a.end, worker=a.worker, waiting_for=[]
            )
    waiting = [p for p in trace.tasks[task].depends_on if p in trace.tasks and not _ended_by(trace, p, t)]
    return TaskAt(task=task, state=PENDING, attempt=None, since=None, worker=None, waiting_for=waiting)


def _ended_by(trace: Trace, task: str, t: float) -> bool:
    latest = trace.tasks[task].latest
    return latest.end <= t


def replay(trace: Trace, at: float) -> Snapshot:
    """Every task's state at `at` (epoch seconds), running ones first."""
    rows = [task_at(trace, t, at) for t in sorted(trace.tasks)]
    order = {RUNNING: 0, QUEUED: 1, RETRYING: 2, PENDING: 3}
    rows.sort(key=lambda r: (order.get(r.state, 4), r.since if r.since is not None else at, r.task))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    start = trace.start
    return Snapshot(at=at, offset=None if start is None else at - start, counts=counts, tasks=rows)


def events(trace: Trace) -> list[float]:
    """Every instant at which some task changed state (queued, started, ended), in order:
    the stops of a replay stepping from event to event."""
    times = set()
    for info in trace.tasks.values():
        for a in info.attempts:
            times.update((a.start, a.end))
            if a.ready_at:
                times.add(a.ready_at)
    return sorted(times)


_OFFSET = re.compile(r"\+(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m(?!s))?(?:(\d+(?:\.\d*)?)(?:s)?)?\Z")


def parse_instant(text: str, start: float) -> float:
    """An instant of a run, as a person writes it: ``+12.5`` or ``+1m30s`` (after the
    workflow's `start`), ``14:02`` or ``14:02:05.5`` (UTC, on the start's date, as the
    analyzer prints times), or an ISO date and time (UTC unless it says otherwise).

    Raises ValueError naming what was expected."""
    text = text.strip()
    if text.startswith("+"):
        m = _OFFSET.match(text)
        if not m or text == "+" or not any(m.groups()):
            raise ValueError(f"{text!r} is not an offset: write +12.5, +90s, +1m30s or +1h")
        h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
        return start + 3600 * h + 60 * mins + secs
    day = datetime.fromtimestamp(start, tz=UTC)
    clock = text.rstrip("Z")
    for fmt in ("%H:%M", "%H:%M:%S", "%H:%M:%S.%f"):
        try:
            t = datetime.strptime(clock, fmt).time()
        except ValueError:
            continue
        return datetime.combine(day.date(), t, tzinfo=UTC).timestamp()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: write +12.5 (seconds after the start), 14:02:05 (UTC) "
            "or 2026-12-07T14:02:05"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


__all__ = [
    "PENDING",
    "QUEUED",
    "RETRYING",
    "RUNNING",
    "Snapshot",
    "TaskAt",
    "events",
    "parse_instant",
    "replay",
    "task_at",
]
