"""analyzer: pure trace analysis over the span files tasks leave behind (end-to-end
breakdown, critical path, queuing delay, lineage, GPU usage, history). No UI, no engine
imports.

Typical use::

    from analyzer import analyze_workflow, build_report, render, to_text

    analysis = analyze_workflow(home / "workflows" / wf_id)
    report = build_report(analysis)                  # the JSON report (a dict)
    print(to_text(render(analysis, "critical-path")))

Names are exported lazily: producers import `analyzer.contract` on every task start, and
importing this package must not drag pydantic and rich in with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> submodule that defines it
_EXPORTS = {
    # errors
    "AnalyzerError": "errors",
    "MixedWorkflowsError": "errors",
    "TraceNotFoundError": "errors",
    "UnknownViewError": "errors",
    # reading
    "AssetRow": "records",
    "LineageRow": "records",
    "OtelSpan": "otel",
    "ReadStats": "reader",
    "SpanReader": "reader",
    "SpanRecord": "records",
    "attempt_dirs": "reader",
    "parse_span_line": "reader",
    "read_assets": "reader",
    "read_lineage": "reader",
    "span_files": "reader",
    # the indexed trace
    "Attempt": "trace",
    "DataReady": "trace",
    "TaskInfo": "trace",
    "Trace": "trace",
    "build_trace": "trace",
    "load_trace": "trace",
    "trace_from_files": "trace",
    "trace_from_lines": "trace",
    # analyses
    "CriticalPath": "critical",
    "E2EBreakdown": "e2e",
    "GpuLane": "gpu",
    "GpuUsage": "gpu",
    "History": "runs",
    "LineageGraph": "lineage",
    "LineageNode": "lineage",
    "ModelGpu": "gpu",
    "PathNode": "critical",
    "QueuingEntry": "queuing",
    "TaskGpu": "gpu",
    "critical_path": "critical",
    "e2e_breakdown": "e2e",
    "gpu_usage": "gpu",
    "history": "runs",
    "lineage_graph": "lineage",
    "lineage_tree": "lineage",
    "queuing_delays": "queuing",
    "wall_time": "e2e",
    # the whole run, the report
    "Analysis": "report",
    "Report": "report",
    "analyze": "report",
    "analyze_workflow": "report",
    "build_report": "report",
    # views
    "VIEWS": "views",
    "TimelineRow": "timeline",
    "perfetto_trace": "perfetto",
    "render": "views",
    "render_gpu": "gpuview",
    "render_history": "views",
    "render_mermaid": "mermaid",
    "render_perfetto": "perfetto",
    "timeline_rows": "timeline",
    "to_text": "views",
}

__all__ = [
    "VIEWS",
    "Analysis",
    "AnalyzerError",
    "AssetRow",
    "Attempt",
    "CriticalPath",
    "DataReady",
    "E2EBreakdown",
    "GpuLane",
    "GpuUsage",
    "History",
    "LineageGraph",
    "LineageNode",
    "LineageRow",
    "MixedWorkflowsError",
    "ModelGpu",
    "OtelSpan",
    "PathNode",
    "QueuingEntry",
    "ReadStats",
    "Report",
    "SpanReader",
    "SpanRecord",
    "TaskGpu",
    "TaskInfo",
    "TimelineRow",
    "Trace",
    "TraceNotFoundError",
    "UnknownViewError",
    "analyze",
    "analyze_workflow",
    "attempt_dirs",
    "build_report",
    "build_trace",
    "critical_path",
    "e2e_breakdown",
    "gpu_usage",
    "history",
    "lineage_graph",
    "lineage_tree",
    "load_trace",
    "parse_span_line",
    "perfetto_trace",
    "queuing_delays",
    "read_assets",
    "read_lineage",
    "render",
    "render_gpu",
    "render_history",
    "render_mermaid",
    "render_perfetto",
    "span_files",
    "timeline_rows",
    "to_text",
    "trace_from_files",
    "trace_from_lines",
    "wall_time",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analyzer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # next time without the detour
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .critical import CriticalPath, PathNode, critical_path
    from .e2e import E2EBreakdown, e2e_breakdown, wall_time
    from .errors import AnalyzerError, MixedWorkflowsError, TraceNotFoundError, UnknownViewError
    from .gpu import GpuLane, GpuUsage, ModelGpu, TaskGpu, gpu_usage
    from .gpuview import render_gpu
    from .lineage import LineageGraph, LineageNode, lineage_graph, lineage_tree
    from .mermaid import render_mermaid
    from .otel import OtelSpan
    from .perfetto import perfetto_trace, render_perfetto
    from .queuing import QueuingEntry, queuing_delays
    from .reader import (
        ReadStats,
        SpanReader,
        attempt_dirs,
        parse_span_line,
        read_assets,
        read_lineage,
        span_files,
    )
    from .records import AssetRow, LineageRow, SpanRecord
    from .report import Analysis, Report, analyze, analyze_workflow, build_report
    from .runs import History, history
    from .timeline import TimelineRow, timeline_rows
    from .trace import (
        Attempt,
        DataReady,
        TaskInfo,
        Trace,
        build_trace,
        load_trace,
        trace_from_files,
        trace_from_lines,
    )
    from .views import VIEWS, render, render_history, to_text
