"""The full analysis of one workflow run, and its JSON report.

`analyze` runs every analysis over a `Trace`; `analyze_workflow` reads the workflow
directory first. `build_report` turns the result into the plain dict that
``tuiflow trace analyze WF -f json`` prints (shape: `Report`, versioned by
``report_version``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .critical import CriticalPath, PathNode, critical_path
from .e2e import E2EBreakdown, ExecutorSummary, QueueSummary, WorkerSummary, e2e_breakdown
from .gpu import GpuUsage, gpu_usage
from .lineage import LineageGraph, lineage_graph
from .queuing import QueuingEntry, queuing_delays
from .reader import gc_paused
from .stats import DurationSummary, Frozen, NetworkSummary
from .trace import Trace, load_trace

REPORT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Analysis:
    """Every analysis of one run, and the trace it came from (renderers need both)."""

    trace: Trace
    e2e: E2EBreakdown
    queuing: list[QueuingEntry]
    critical_path: CriticalPath
    lineage: LineageGraph
    gpu: GpuUsage

    @property
    def critical_tasks(self) -> set[str]:
        """Names of the tasks on the critical path."""
        return {n.task for n in self.critical_path.nodes}


def analyze(trace: Trace) -> Analysis:
    """Run e2e, queuing, critical path, lineage and GPU usage over a trace.

    Parameters
    ----------
    trace:
        From `load_trace` / `build_trace`.

    Returns
    -------
    Analysis
    """
    with gc_paused():
        return Analysis(
            trace=trace,
            e2e=e2e_breakdown(trace),
            queuing=queuing_delays(trace),
            critical_path=critical_path(trace),
            lineage=lineage_graph(trace.lineage, trace.assets),
            gpu=gpu_usage(trace),
        )


def analyze_workflow(wf_dir: str | os.PathLike[str], *, jobs: int | None = None) -> Analysis:
    """Read a workflow directory and analyze it.

    Parameters
    ----------
    wf_dir:
        ``<home>/workflows/<wf_id>``.
    jobs:
        Processes parsing span files (see `load_trace`); None picks by size.

    Returns
    -------
    Analysis

    Raises
    ------
    TraceNotFoundError
        When `wf_dir` is not a directory.
    """
    # One pause over both: between them the collector would walk every fresh record.
    with gc_paused():
        return analyze(load_trace(wf_dir, jobs=jobs))


# --- the report ------------------------------------------------------------------------------


class ReadSummary(Frozen):
    """How the files were read."""

    files_read: int
    files_unreadable: int
    spans_read: int
    lines_skipped: int
    duplicate_spans: int
    duplicate_roots: int
    orphan_spans: int
    lineage_rows: int
    rows_skipped: int
    trace_ids: int
    helper_chunks: int  # chunks of files parsed by helper processes
    helper_failures: int  # chunks whose helper failed (re-read in process)
    examples: list[str]  # the first few skipped lines, "path:line: reason"


class CriticalPathEntry(Frozen):
    """One node of ``critical_path`` in the report (seconds / epoch seconds)."""

    task: str
    attempt: int
    attempts: int
    worker: str | None
    outcome: str
    start: float
    end: float
    active_seconds: float
    wait_seconds: float
    retry_seconds: float
    gated_by: str | None
    gate_via: str | None
    clock_skew: bool
    batch_id: str | None


class CriticalPathSummary(Frozen):
    """Totals and the breakdown restricted to the critical path."""

    end_task: str | None
    tasks: int
    active_seconds: float
    wait_seconds: float
    retry_seconds: float
    total_seconds: float
    cycle: bool
    stopped_at_missing: list[str]
    batch_spans: int
    compute: dict[str, DurationSummary]
    network: NetworkSummary


class QueuingRow(Frozen):
    """One task of ``queuing`` in the report."""

    task: str
    attempt: int
    attempts: int
    worker: str | None
    queuing_delay_seconds: float | None
    raw_delay_seconds: float | None
    blocked_by: str | None
    measured_from: str | None
    clock_skew: bool
    reason: str | None
    queue_wait_seconds: float | None
    on_critical_path: bool


class LineageSummary(Frozen):
    """The lineage graph's size and shape (the tree itself is a view)."""

    data_items: int
    edges: int
    sinks: list[str]
    external: list[str]
    cycle_edges: list[tuple[str, str]]


class Report(Frozen):
    """The JSON report of one run. Times in seconds, instants in float epoch seconds."""

    report_version: int
    generated_at: float | None
    workflow_id: str | None
    workflow_name: str | None
    trace_id: str | None
    start: float | None
    end: float | None
    wall_seconds: float
    wall_source: str
    spans_read: int
    lines_skipped: int
    read: ReadSummary
    tasks: int
    attempts: int
    retried_tasks: int
    outcomes: dict[str, int]
    attempt_outcomes: dict[str, int]
    critical_path: list[CriticalPathEntry]
    critical_path_summary: CriticalPathSummary
    queuing: list[QueuingRow]
    compute_total_seconds: float
    compute: dict[str, DurationSummary]
    network: NetworkSummary
    workers: dict[str, WorkerSummary]
    executors: dict[str, ExecutorSummary]
    queues: dict[str, QueueSummary]
    lineage: LineageSummary
    gpu: GpuUsage
    warnings: list[str]


def report_model(analysis: Analysis, *, now: float | None = None) -> Report:
    """The report as a typed model (see `build_report` for the dict).

    Parameters
    ----------
    analysis:
        From `analyze`.
    now:
        Epoch seconds to stamp as ``generated_at`` (None leaves it out: the analysis
        reads no clock, so the same files give the same report).

    Returns
    -------
    Report
    """
    trace, e2e, cp = analysis.trace, analysis.e2e, analysis.critical_path
    stats = trace.stats
    critical = analysis.critical_tasks
    warnings = list(trace.warnings)
    if cp.cycle:
        warnings.append("depends_on has a cycle; the critical path stops where it closes")
    skewed = sum(1 for q in analysis.queuing if q.clock_skew)
    if skewed:
        warnings.append(f"{skewed} task(s) started before their input was ready: clock skew between hosts")
    return Report(
        report_version=REPORT_VERSION,
        generated_at=now,
        workflow_id=trace.workflow_id,
        workflow_name=trace.workflow_name,
        trace_id=trace.trace_id,
        start=e2e.start,
        end=e2e.end,
        wall_seconds=e2e.wall_seconds,
        wall_source=e2e.wall_source,
        spans_read=stats.spans_read,
        lines_skipped=stats.lines_skipped,
        read=ReadSummary(
            files_read=stats.files_read,
            files_unreadable=stats.files_unreadable,
            spans_read=stats.spans_read,
            lines_skipped=stats.lines_skipped,
            duplicate_spans=trace.duplicate_spans,
            duplicate_roots=trace.duplicate_roots,
            orphan_spans=len(trace.orphans),
            lineage_rows=len(trace.lineage),
            rows_skipped=stats.rows_skipped,
            trace_ids=len(stats.trace_ids),
            helper_chunks=stats.helper_chunks,
            helper_failures=stats.helper_failures,
            examples=list(stats.examples),
        ),
        tasks=e2e.tasks,
        attempts=e2e.attempts,
        retried_tasks=e2e.retried_tasks,
        outcomes=e2e.outcomes,
        attempt_outcomes=e2e.attempt_outcomes,
        critical_path=[_cp_entry(n) for n in cp.nodes],
        critical_path_summary=CriticalPathSummary(
            end_task=cp.end_task,
            tasks=len(cp.nodes),
            active_seconds=cp.active_seconds,
            wait_seconds=cp.wait_seconds,
            retry_seconds=cp.retry_seconds,
            total_seconds=cp.total_seconds,
            cycle=cp.cycle,
            stopped_at_missing=cp.stopped_at_missing,
            batch_spans=cp.batch_spans,
            compute=cp.compute,
            network=cp.network,
        ),
        queuing=[
            QueuingRow(
                task=q.task,
                attempt=q.attempt,
                attempts=q.attempts,
                worker=q.worker,
                queuing_delay_seconds=q.queuing_delay_seconds,
                raw_delay_seconds=q.raw_delay_seconds,
                blocked_by=q.blocked_by,
                measured_from=q.measured_from,
                clock_skew=q.clock_skew,
                reason=q.reason,
                queue_wait_seconds=q.queue_wait_seconds,
                on_critical_path=q.task in critical,
            )
            for q in analysis.queuing
        ],
        compute_total_seconds=e2e.compute_total_seconds,
        compute=e2e.compute,
        network=e2e.network,
        workers=e2e.workers,
        executors=e2e.executors,
        queues=e2e.queues,
        lineage=LineageSummary(
            data_items=len(analysis.lineage.items),
            edges=analysis.lineage.edges,
            sinks=analysis.lineage.sinks,
            external=analysis.lineage.external,
            cycle_edges=analysis.lineage.cycle_edges,
        ),
        gpu=analysis.gpu,
        warnings=warnings,
    )


def build_report(analysis: Analysis, *, now: float | None = None) -> dict:
    """The JSON report of one run as a plain dict (``json.dumps``-ready).

    Parameters
    ----------
    analysis:
        From `analyze`.
    now:
        Epoch seconds for ``generated_at``; None leaves it null.

    Returns
    -------
    dict
        Keys and types: see `Report` and docs/analyzer.md.
    """
    with gc_paused():
        return report_model(analysis, now=now).model_dump(mode="json")


def _cp_entry(node: PathNode) -> CriticalPathEntry:
    return CriticalPathEntry(
        task=node.task,
        attempt=node.attempt,
        attempts=node.attempts,
        worker=node.worker,
        outcome=node.outcome,
        start=node.start,
        end=node.end,
        active_seconds=node.active_seconds,
        wait_seconds=node.wait_seconds,
        retry_seconds=node.retry_seconds,
        gated_by=node.gated_by,
        gate_via=node.gate_via,
        clock_skew=node.clock_skew,
        batch_id=node.batch_id,
    )
