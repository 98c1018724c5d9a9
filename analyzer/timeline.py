"""Timeline rows: what the dashboard draws per attempt (a queued segment, then running).

`timeline_rows` is pure and cheap (one row per attempt, from root spans only); the app
only lays the rows out. Times are epoch seconds.
"""

from __future__ import annotations

from collections.abc import Iterable

from .stats import Frozen
from .trace import Trace


class TimelineRow(Frozen):
    """One attempt on the timeline.

    ``queued_start`` is ``tuiflow.task.ready_at`` (coordinator clock), None when absent
    or later than ``start`` (clock skew: no queued segment is drawn then).
    """

    task: str
    attempt: int
    worker: str | None
    host: str | None
    queued_start: float | None
    start: float
    end: float
    outcome: str
    latest: bool  # the task's latest attempt
    critical: bool  # latest attempt of a task on the critical path
    batch_id: str | None


def timeline_rows(trace: Trace, *, critical: Iterable[str] = ()) -> list[TimelineRow]:
    """One row per attempt, ordered by when it was queued (or started), then task, attempt.

    Parameters
    ----------
    trace:
        The workflow's trace.
    critical:
        Task names on the critical path (``Analysis.critical_tasks``), to flag.

    Returns
    -------
    list[TimelineRow]
    """
    on_path = set(critical)
    rows: list[TimelineRow] = []
    for name, info in trace.tasks.items():
        last = info.latest
        for att in info.attempts:
            queued = att.ready_at if att.ready_at is not None and att.ready_at <= att.start else None
            rows.append(
                TimelineRow(
                    task=name,
                    attempt=att.attempt,
                    worker=att.worker,
                    host=att.host,
                    queued_start=queued,
                    start=att.start,
                    end=att.end,
                    outcome=att.outcome,
                    latest=att is last,
                    critical=att is last and name in on_path,
                    batch_id=att.batch_id,
                )
            )
    rows.sort(
        key=lambda r: (r.queued_start if r.queued_start is not None else r.start, r.start, r.task, r.attempt)
    )
    return rows
