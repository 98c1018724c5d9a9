"""End-to-end breakdown: wall time, compute and network time, per worker / executor / queue.

Definitions
-----------
- wall time: the ``workflow`` span (submit -> end) when the coordinator wrote one, else
  from the earliest attempt start to the latest attempt end.
- compute: every span of kind ``compute`` (all attempts, retries included), summarised
  per span name: count, total, mean, p50, p95, max (seconds).
- network: every span of kind ``network``, per name and overall: plain sum of durations,
  and *active* time = the union of their intervals (overlapping transfers count once).
- per worker / executor / queue: from the attempts' root spans (their workflow context),
  no joins. ``queue_wait`` = attempt start - ``tuiflow.task.ready_at`` (coordinator
  clock vs worker clock: clamped at 0).
"""

from __future__ import annotations

from collections import Counter

from .stats import (
    DurationSummary,
    Frozen,
    NetworkSummary,
    breakdown,
    breakdown_by_name,
    merged_length,
    summarize,
)
from .trace import Attempt, Trace


class WorkerSummary(Frozen):
    """What one worker did (from its attempts' root spans and their children)."""

    attempts: int
    completed: int
    failed: int
    busy_seconds: float  # sum of its attempts' root span durations
    active_seconds: float  # union of those intervals (concurrent attempts counted once)
    compute_seconds: float
    network_seconds: float
    hosts: list[str]
    first_start: float
    last_end: float


class ExecutorSummary(Frozen):
    """Attempts run by one executor, with their root span durations."""

    attempts: int
    completed: int
    failed: int
    duration: DurationSummary


class QueueSummary(Frozen):
    """Attempts taken from one queue, with their wait between ``ready_at`` and start."""

    attempts: int
    queue_wait: DurationSummary


class E2EBreakdown(Frozen):
    """The end-to-end picture of one workflow run (times in seconds / epoch seconds)."""

    start: float | None
    end: float | None
    wall_seconds: float
    wall_source: str  # "workflow span" | "task spans" | "none"
    tasks: int
    attempts: int
    retried_tasks: int
    outcomes: dict[str, int]  # latest attempt of each task
    attempt_outcomes: dict[str, int]  # every attempt
    compute_total_seconds: float
    compute: dict[str, DurationSummary]
    network: NetworkSummary
    workers: dict[str, WorkerSummary]
    executors: dict[str, ExecutorSummary]
    queues: dict[str, QueueSummary]


def wall_time(trace: Trace) -> tuple[float | None, float | None, float, str]:
    """The workflow's wall-clock window.

    Parameters
    ----------
    trace:
        The workflow's trace.

    Returns
    -------
    tuple
        ``(start, end, wall_seconds, source)``: epoch seconds, seconds, and where it came
        from (``"workflow span"``, ``"task spans"`` or ``"none"`` for an empty trace).
    """
    if trace.workflow is not None:
        return trace.workflow.start, trace.workflow.end, trace.workflow.duration, "workflow span"
    attempts = trace.attempts
    if not attempts:
        return None, None, 0.0, "none"
    start = min(a.start for a in attempts)
    end = max(a.end for a in attempts)
    return start, end, max(0.0, end - start), "task spans"


def e2e_breakdown(trace: Trace) -> E2EBreakdown:
    """Wall time, compute / network breakdowns and per worker / executor / queue summaries.

    Parameters
    ----------
    trace:
        The workflow's trace.

    Returns
    -------
    E2EBreakdown
    """
    start, end, wall, source = wall_time(trace)
    compute, network = breakdown_by_name(trace.by_name) if trace.by_name else breakdown(trace.spans)
    attempts = trace.attempts
    return E2EBreakdown(
        start=start,
        end=end,
        wall_seconds=wall,
        wall_source=source,
        tasks=len(trace.tasks),
        attempts=len(attempts),
        retried_tasks=sum(1 for t in trace.tasks.values() if len(t.attempts) > 1),
        outcomes=dict(Counter(t.latest.outcome for t in trace.tasks.values()).most_common()),
        attempt_outcomes=dict(Counter(a.outcome for a in attempts).most_common()),
        compute_total_seconds=sum(a.compute_seconds for a in attempts),  # merged per attempt
        compute=compute,
        network=network,
        workers=_workers(attempts),
        executors=_executors(attempts),
        queues=_queues(attempts),
    )


def _workers(attempts: list[Attempt]) -> dict[str, WorkerSummary]:
    groups: dict[str, list[Attempt]] = {}
    for att in attempts:
        if att.ran:  # a task decided never to run ran nowhere
            groups.setdefault(att.worker or "(unknown)", []).append(att)
    out: dict[str, WorkerSummary] = {}
    for worker in sorted(groups):
        group = groups[worker]
        out[worker] = WorkerSummary(
            attempts=len(group),
            completed=sum(1 for a in group if a.ok),
            failed=sum(1 for a in group if not a.ok),
            busy_seconds=sum(a.duration for a in group),
            active_seconds=merged_length((a.start, a.end) for a in group),
            compute_seconds=sum(a.compute_seconds for a in group),
            network_seconds=sum(a.network_seconds for a in group),
            hosts=sorted({a.host for a in group if a.host}),
            first_start=min(a.start for a in group),
            last_end=max(a.end for a in group),
        )
    return out


def _executors(attempts: list[Attempt]) -> dict[str, ExecutorSummary]:
    groups: dict[str, list[Attempt]] = {}
    for att in attempts:
        groups.setdefault(att.executor or "(unknown)", []).append(att)
    return {
        name: ExecutorSummary(
            attempts=len(group),
            completed=sum(1 for a in group if a.ok),
            failed=sum(1 for a in group if not a.ok),
            duration=summarize(a.duration for a in group),
        )
        for name, group in sorted(groups.items())
    }


def _queues(attempts: list[Attempt]) -> dict[str, QueueSummary]:
    groups: dict[str, list[Attempt]] = {}
    for att in attempts:
        groups.setdefault(att.queue or "(unknown)", []).append(att)
    return {
        name: QueueSummary(
            attempts=len(group),
            queue_wait=summarize(max(0.0, a.start - a.ready_at) for a in group if a.ready_at is not None),
        )
        for name, group in sorted(groups.items())
    }
