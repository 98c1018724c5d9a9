"""The task DAG as the spans describe it, and which parent gated a task.

The analyzer learns the DAG from ``tuiflow.task.depends_on`` on each task's latest
attempt. A parent named there may have no spans at all (it never ran, or its files are
gone); such a parent is *missing*. A parent with spans but no READY span (it failed
before writing outputs) is *unready*.
"""

from __future__ import annotations

from dataclasses import dataclass

from .trace import Trace


@dataclass(frozen=True, slots=True)
class Gate:
    """The parent whose data came last, as seen from one task.

    Attributes
    ----------
    parent:
        The gating parent, None when no parent has a READY time.
    time:
        Its data-ready time, epoch seconds.
    via:
        How that time was found (see `DataReady.via`).
    missing:
        Parents named in ``depends_on`` that have no spans.
    unready:
        Parents with spans but no READY span in any attempt.
    """

    parent: str | None
    time: float | None
    via: str | None
    missing: tuple[str, ...] = ()
    unready: tuple[str, ...] = ()


def gate(trace: Trace, task: str) -> Gate:
    """Which of `task`'s parents delivered its data last.

    Parameters
    ----------
    trace:
        The workflow's trace.
    task:
        A task with spans.

    Returns
    -------
    Gate
        Ties between parents go to the one listed first in ``depends_on``.
    """
    info = trace.tasks[task]
    best: str | None = None
    best_time: float | None = None
    best_via: str | None = None
    missing: list[str] = []
    unready: list[str] = []
    for parent in info.depends_on:
        if parent not in trace.tasks:
            missing.append(parent)
            continue
        ready = trace.data_ready(parent)
        if ready is None:
            unready.append(parent)
            continue
        if best_time is None or ready.time > best_time:
            best, best_time, best_via = parent, ready.time, ready.via
    return Gate(best, best_time, best_via, tuple(missing), tuple(unready))


def edges(trace: Trace) -> list[tuple[str, str]]:
    """Every ``(parent, child)`` edge of the task DAG, parents possibly without spans.

    Parameters
    ----------
    trace:
        The workflow's trace.

    Returns
    -------
    list[tuple[str, str]]
        In task order, then ``depends_on`` order.
    """
    return [(parent, name) for name, info in trace.tasks.items() for parent in info.depends_on]
