"""Queuing delay per task: how long a task waited after the last of its inputs was ready.

Definitions (latest attempt of each task; times on the producers' clocks)
-------------------------------------------------------------------------
- ``queuing_delay_seconds`` = task root start - max over parents of the parent's
  data-ready time (end of its READY span, ``write outputs``; see `Trace.data_ready`).
- ``blocked_by``: the parent whose data came last.
- Negative values mean the clocks of the two hosts disagree: the delay is clamped to 0,
  ``clock_skew`` is set and ``raw_delay_seconds`` keeps the measured value.
- A parent without a READY span (failed before writing, or never ran / no spans): the
  delay is None and ``reason`` names the parents.
- A root task (no parents): measured from ``tuiflow.task.ready_at`` (when the
  coordinator queued it) when present, else None.
- ``queue_wait_seconds`` (every task with ``ready_at``): start - ready_at, clamped at 0:
  the part of the delay spent in the queue, as opposed to the coordinator's reaction.
- A latest attempt that never started (a zero-length span with outcome cancelled, lost
  or worker stopped: the coordinator closed it while queued) has no delay (None).
- ``ready_at`` of 0 or less is taken as unknown (producers write 0.0 when they do not know).
"""

from __future__ import annotations

from .dag import gate
from .stats import Frozen
from .trace import Trace

FROM_PARENTS = "parents"
FROM_READY_AT = "ready_at"
#: outcomes whose zero-length attempt span marks an attempt that never ran
NEVER_STARTED = frozenset({"cancelled", "lost", "worker stopped"})


class QueuingEntry(Frozen):
    """The queuing delay of one task (its latest attempt). Times in (epoch) seconds."""

    task: str
    attempt: int
    attempts: int
    worker: str | None
    start: float
    parents: list[str]
    queuing_delay_seconds: float | None
    raw_delay_seconds: float | None
    blocked_by: str | None
    ready_time: float | None  # the gating data-ready time (or ready_at for a root)
    measured_from: str | None  # "parents" | "ready_at" | None
    clock_skew: bool
    reason: str | None
    queue_wait_seconds: float | None


def queuing_delays(trace: Trace) -> list[QueuingEntry]:
    """Queuing delay of every task, ordered by start time (then name).

    Parameters
    ----------
    trace:
        The workflow's trace.

    Returns
    -------
    list[QueuingEntry]
    """
    out: list[QueuingEntry] = []
    for name, info in trace.tasks.items():
        latest = info.latest
        parents = list(info.depends_on)
        ref: float | None = None
        measured_from: str | None = None
        blocked_by: str | None = None
        reason: str | None = None
        never_started = latest.duration == 0.0 and latest.outcome in NEVER_STARTED
        if not latest.ran:
            reason = f"not run: {latest.outcome}"
        elif never_started:
            # A zero-length span written when a queued attempt was cancelled (or its worker
            # vanished): its start is when that happened, not a start.
            reason = f"latest attempt {latest.outcome} before it started"
        elif not parents:
            if latest.ready_at is not None:
                ref, measured_from = latest.ready_at, FROM_READY_AT
                reason = "root task: measured from ready_at"
            else:
                reason = "root task without ready_at"
        else:
            g = gate(trace, name)
            if g.missing or g.unready:
                parts = [f"{p} (no READY span)" for p in g.unready] + [f"{p} (no spans)" for p in g.missing]
                reason = "parent data time unknown: " + ", ".join(parts)
            else:
                ref, measured_from, blocked_by = g.time, FROM_PARENTS, g.parent
        raw = latest.start - ref if ref is not None else None
        skew = raw is not None and raw < 0.0
        if skew:
            reason = "clock skew: started before its input was ready; clamped to 0"
        wait = latest.start - latest.ready_at if latest.ready_at is not None and not never_started else None
        out.append(
            QueuingEntry(
                task=name,
                attempt=latest.attempt,
                attempts=len(info.attempts),
                worker=latest.worker,
                start=latest.start,
                parents=parents,
                queuing_delay_seconds=max(0.0, raw) if raw is not None else None,
                raw_delay_seconds=raw,
                blocked_by=blocked_by,
                ready_time=ref,
                measured_from=measured_from,
                clock_skew=skew,
                reason=reason,
                queue_wait_seconds=max(0.0, wait) if wait is not None else None,
            )
        )
    out.sort(key=lambda e: (e.start, e.task))
    return out
