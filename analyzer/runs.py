"""History of one workflow across runs: per-task success rate and durations, recent walls.

The caller passes the directories of several runs of the same workflow (by name). Only
the attempts' root spans and the workflow span are needed, so runs are read with a
``roots_only`` reader (child spans are passed over unparsed).

Definitions
-----------
- a task's *runs*: the runs in which it has at least one attempt; *completed*: runs in
  which its latest attempt completed; ``success_rate`` = completed / runs.
- duration: the latest attempt's root span duration, over the runs where it completed
  (failed attempts end early and would drag the percentiles down); p50 / p95 by linear
  interpolation.
- a run's start / wall: from its workflow span, else its attempts (see `e2e.wall_time`);
  its outcome: ``tuiflow.outcome`` on the workflow span, else ``failed`` for an error
  status, ``completed`` otherwise, and ``unfinished`` without a workflow span.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .contract import ATTR_OUTCOME
from .e2e import wall_time
from .errors import MixedWorkflowsError
from .reader import SpanReader, gc_paused
from .stats import Frozen, percentile
from .trace import Trace, build_trace

UNFINISHED = "unfinished"


class RunSummary(Frozen):
    """One run of the workflow."""

    workflow_id: str
    workflow_name: str | None
    path: str
    start: float | None
    end: float | None
    wall_seconds: float
    outcome: str
    tasks: int
    failed_tasks: int
    attempts: int


class TaskHistory(Frozen):
    """One task across runs (durations in seconds)."""

    task: str
    runs: int
    completed: int
    success_rate: float
    attempts: int  # every attempt in every run
    retried_runs: int  # runs that needed more than one attempt
    duration_p50_seconds: float | None
    duration_p95_seconds: float | None
    duration_mean_seconds: float | None
    last_outcome: str  # in the newest run that has the task


class History(Frozen):
    """A workflow's history over the runs given."""

    workflow_name: str | None
    runs: int
    recent: list[RunSummary]  # newest first, at most `last`
    tasks: list[TaskHistory]  # by task name
    skipped: list[str]  # directories left out (another workflow name)


def run_summary(trace: Trace, path: str | os.PathLike[str] = "") -> RunSummary:
    """Summarise one run from its trace.

    Parameters
    ----------
    trace:
        The run's trace (a roots-only read is enough).
    path:
        The run's directory, for the record; its name stands in for a missing workflow id.

    Returns
    -------
    RunSummary
    """
    start, end, wall, _ = wall_time(trace)
    if trace.workflow is None:
        outcome = UNFINISHED
    else:
        declared = trace.workflow.attr(ATTR_OUTCOME)
        if isinstance(declared, str) and declared:
            outcome = declared
        else:
            outcome = "failed" if trace.workflow.status == "ERROR" else "completed"
    return RunSummary(
        workflow_id=trace.workflow_id or Path(path).name,
        workflow_name=trace.workflow_name,
        path=os.fspath(path),
        start=start,
        end=end,
        wall_seconds=wall,
        outcome=outcome,
        tasks=len(trace.tasks),
        failed_tasks=sum(1 for t in trace.tasks.values() if not t.latest.ok),
        attempts=sum(len(t.attempts) for t in trace.tasks.values()),
    )


def history(
    wf_dirs: Iterable[str | os.PathLike[str]], *, workflow_name: str | None = None, last: int = 10
) -> History:
    """Per-task statistics and recent wall times over several runs of one workflow.

    Parameters
    ----------
    wf_dirs:
        Workflow directories (``<home>/workflows/<wf_id>``) of runs of one workflow.
    workflow_name:
        Keep only runs of this name (others are listed in ``skipped``). When None, all
        runs must carry the same name (runs with no name recorded are accepted).
    last:
        How many runs to list in ``recent`` (newest first).

    Returns
    -------
    History

    Raises
    ------
    MixedWorkflowsError
        `workflow_name` is None and the runs carry different names.
    TraceNotFoundError
        A directory does not exist.
    """
    traces: list[tuple[Path, Trace]] = []
    for wf_dir in wf_dirs:
        reader = SpanReader(roots_only=True)
        with gc_paused():
            traces.append((Path(wf_dir), build_trace(reader.iter_workflow(wf_dir), reader.stats)))
    skipped: list[str] = []
    if workflow_name is None:
        names = {t.workflow_name for _, t in traces if t.workflow_name}
        if len(names) > 1:
            raise MixedWorkflowsError(sorted(names))
        workflow_name = next(iter(names), None)
    else:
        kept = [(p, t) for p, t in traces if t.workflow_name in (workflow_name, None)]
        skipped = [os.fspath(p) for p, t in traces if t.workflow_name not in (workflow_name, None)]
        traces = kept

    # Newest first; a run without any span (start None) sorts last.
    runs = [(run_summary(t, p), t) for p, t in traces]
    runs.sort(key=lambda rt: (rt[0].start is not None, rt[0].start or 0.0, rt[0].workflow_id), reverse=True)

    per_task: dict[str, dict[str, list]] = {}
    for _summary, trace in runs:
        for name, info in trace.tasks.items():
            h = per_task.setdefault(name, {"outcomes": [], "durations": [], "attempts": []})
            h["outcomes"].append(info.latest.outcome)
            h["attempts"].append(len(info.attempts))
            if info.latest.ok:
                h["durations"].append(info.latest.duration)
    tasks: list[TaskHistory] = []
    for name in sorted(per_task):
        h = per_task[name]
        outcomes: list[str] = h["outcomes"]
        durations = sorted(h["durations"])
        completed = sum(1 for o in outcomes if o == "completed")
        tasks.append(
            TaskHistory(
                task=name,
                runs=len(outcomes),
                completed=completed,
                success_rate=completed / len(outcomes),
                attempts=sum(h["attempts"]),
                retried_runs=sum(1 for n in h["attempts"] if n > 1),
                duration_p50_seconds=percentile(durations, 0.5) if durations else None,
                duration_p95_seconds=percentile(durations, 0.95) if durations else None,
                duration_mean_seconds=sum(durations) / len(durations) if durations else None,
                last_outcome=outcomes[0],
            )
        )
    return History(
        workflow_name=workflow_name,
        runs=len(runs),
        recent=[s for s, _ in runs[: max(0, last)]],
        tasks=tasks,
        skipped=skipped,
    )
