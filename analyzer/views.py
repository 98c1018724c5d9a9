"""Renderers: the views of ``tuiflow trace analyze WF -f VIEW``.

Pure functions from an `Analysis` to a rich renderable (``rich``, ``critical-path``,
``e2e``, ``queuing``, ``lineage``, ``gpu`` (drawn by `analyzer.gpuview`)) or a string (``json``, ``mermaid``, ``perfetto``).
`render` picks one by name; `to_text` prints a renderable into a string (tests, pipes).
User data (task names, worker ids and hosts, data ids, errors) is always wrapped in `Text`,
never parsed as markup, and made safe to print first (`fmt.safe_text`: no control
character of it reaches the terminal).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .critical import PathNode
from .errors import UnknownViewError
from .fmt import STATE_STYLE, fmt_bytes, fmt_instant, fmt_seconds, safe_text
from .gpuview import render_gpu
from .lineage import CYCLE, EXTERNAL, SEEN, LineageNode, lineage_tree
from .mermaid import render_mermaid
from .perfetto import render_perfetto
from .report import Analysis, build_report
from .runs import History
from .stats import DurationSummary, NetworkSummary

VIEWS = ("rich", "critical-path", "e2e", "queuing", "lineage", "gpu", "json", "mermaid", "perfetto")
BAR_WIDTH = 32
CRITICAL_MARK = "★"
WAIT_STYLE = "yellow"
ACTIVE_STYLE = "green"
#: a failed task or run: the colour of the failed state everywhere (`fmt.STATE_STYLE`)
FAILED_STYLE = STATE_STYLE["failed"]


def render(
    analysis: Analysis, view: str = "rich", *, limit: int = 40, now: float | None = None
) -> RenderableType:
    """One view of an analysis.

    Parameters
    ----------
    analysis:
        From `analyze`.
    view:
        One of `VIEWS`.
    limit:
        Most rows in the queuing and GPU task tables / nodes in the lineage tree (0 = all).
    now:
        Epoch seconds stamped into the ``json`` view's ``generated_at``.

    Returns
    -------
    RenderableType
        A rich renderable, or a ``str`` for ``json`` / ``mermaid`` / ``perfetto``.

    Raises
    ------
    UnknownViewError
        For a view not in `VIEWS`.
    """
    views: dict[str, Callable[[], RenderableType]] = {
        "rich": lambda: render_rich(analysis, limit=limit),
        "critical-path": lambda: Group(render_header(analysis), render_critical_path(analysis)),
        "e2e": lambda: Group(render_header(analysis), render_e2e(analysis)),
        "queuing": lambda: Group(render_header(analysis), render_queuing(analysis, limit=limit)),
        "lineage": lambda: Group(render_header(analysis), render_lineage(analysis, limit=limit)),
        "gpu": lambda: Group(render_header(analysis), render_gpu(analysis.gpu, limit=limit)),
        "json": lambda: json.dumps(build_report(analysis, now=now), indent=2),
        "mermaid": lambda: render_mermaid(analysis.trace, analysis.critical_path),
        "perfetto": lambda: render_perfetto(analysis.trace, critical=analysis.critical_tasks),
    }
    if view not in views:
        raise UnknownViewError(view, VIEWS)
    return views[view]()


def to_text(renderable: RenderableType, *, width: int = 120, color: bool = False) -> str:
    """Print a renderable (or pass a string through) into a string.

    Parameters
    ----------
    renderable:
        What `render` returned.
    width:
        Console width in characters.
    color:
        Keep ANSI colour codes.

    Returns
    -------
    str
    """
    if isinstance(renderable, str):
        return renderable
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
    )
    console.print(renderable)
    return buf.getvalue()


def render_rich(analysis: Analysis, *, limit: int = 40) -> RenderableType:
    """The full report: header, critical path, e2e tables, queuing, lineage, GPU (when
    any attempt used a GPU or a model executor).

    Parameters
    ----------
    analysis:
        From `analyze`.
    limit:
        Most queuing rows / lineage nodes (0 = all).

    Returns
    -------
    RenderableType
    """
    parts: list[RenderableType] = [
        render_header(analysis),
        render_critical_path(analysis),
        render_e2e(analysis),
        render_queuing(analysis, limit=limit),
    ]
    if analysis.lineage.items:
        parts.append(render_lineage(analysis, limit=limit))
    if not analysis.gpu.empty:
        parts.append(render_gpu(analysis.gpu, limit=limit))
    return Group(*parts)


def render_header(analysis: Analysis) -> RenderableType:
    """A panel naming the run with its headline numbers."""
    trace, e2e, cp = analysis.trace, analysis.e2e, analysis.critical_path
    stats = trace.stats
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("workflow", _text(f"{trace.workflow_name or '?'}  ({trace.workflow_id or 'unknown id'})"))
    grid.add_row(
        "wall", Text(f"{fmt_seconds(e2e.wall_seconds)}  from {fmt_instant(e2e.start)}  [{e2e.wall_source}]")
    )
    grid.add_row(
        "critical path",
        Text(
            f"{fmt_seconds(cp.total_seconds)} = active {fmt_seconds(cp.active_seconds)}"
            f" + wait {fmt_seconds(cp.wait_seconds)} over {len(cp.nodes)} task(s)"
        ),
    )
    outcomes = ", ".join(f"{n} {o}" for o, n in e2e.outcomes.items()) or "none"
    grid.add_row(
        "tasks", _text(f"{e2e.tasks} ({outcomes}); {e2e.attempts} attempts, {e2e.retried_tasks} retried")
    )
    grid.add_row(
        "compute / network",
        Text(
            f"{fmt_seconds(e2e.compute_total_seconds)} compute; network"
            f" {fmt_seconds(e2e.network.total_active_seconds)} active"
            f" ({fmt_seconds(e2e.network.total_seconds)} summed, {fmt_bytes(e2e.network.bytes)})"
        ),
    )
    read = f"{stats.spans_read} spans from {stats.files_read} file(s), {stats.lines_skipped} line(s) skipped"
    if trace.orphans:
        read += f", {len(trace.orphans)} orphan span(s)"
    grid.add_row("read", _text(read))
    warnings = list(trace.warnings)
    if cp.cycle:
        warnings.append("depends_on cycle: the critical path stops where it closes")
    for w in warnings:
        grid.add_row(Text("warning", style="bold yellow"), _text(w, style="yellow"))
    return Panel(grid, title="tuiflow trace", title_align="left", box=box.ROUNDED)


def render_critical_path(analysis: Analysis, *, width: int = BAR_WIDTH) -> RenderableType:
    """The critical path as a waterfall (wait in yellow, active in green) and its breakdown.

    Parameters
    ----------
    analysis:
        From `analyze`.
    width:
        Characters of the waterfall bar.

    Returns
    -------
    RenderableType
    """
    cp = analysis.critical_path
    table = Table(title="Critical path", title_justify="left", box=box.SIMPLE_HEAD, expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("task")
    table.add_column("worker", style="dim")
    table.add_column("wait", justify="right")
    table.add_column("active", justify="right")
    table.add_column("gated by", style="dim")
    table.add_column(Text.assemble(("wait", WAIT_STYLE), " / ", ("active", ACTIVE_STYLE)))
    if not cp.nodes:
        return Text("Critical path: no task spans", style="dim")
    t_start = cp.start if cp.start is not None else cp.nodes[0].start
    t_end = max(n.end for n in cp.nodes)
    for i, node in enumerate(cp.nodes, 1):
        name = _text(node.task, style=FAILED_STYLE if node.outcome != "completed" else "")
        if node.attempts > 1:
            name.append(f"  ×{node.attempts}", style="dim")
        wait = Text(fmt_seconds(node.wait_seconds), style=WAIT_STYLE)
        if node.clock_skew:
            wait.append(" skew", style="bold yellow")
        table.add_row(
            str(i),
            name,
            _text(node.worker or "-"),
            wait,
            Text(fmt_seconds(node.active_seconds), style=ACTIVE_STYLE),
            _text(node.gated_by) if node.gated_by else _text(f"({node.gate_via or 'start'})", style="italic"),
            _waterfall(node, t_start, t_end, width),
        )
    table.caption = (
        f"total {fmt_seconds(cp.total_seconds)} = active {fmt_seconds(cp.active_seconds)} + wait "
        f"{fmt_seconds(cp.wait_seconds)} (of which retries {fmt_seconds(cp.retry_seconds)})"
    )
    table.caption_justify = "left"
    parts: list[RenderableType] = [table]
    if cp.compute:
        parts.append(_compute_table("Compute on the critical path", cp.compute))
    if cp.network.count:
        parts.append(_network_table("Network on the critical path", cp.network))
    if cp.batch_spans:
        parts.append(Text(f"  {cp.batch_spans} span(s) counted through merged batches", style="dim"))
    return Group(*parts)


def render_e2e(analysis: Analysis) -> RenderableType:
    """Compute, network and per-worker tables of the whole run."""
    e2e = analysis.e2e
    parts: list[RenderableType] = []
    if e2e.compute:
        parts.append(_compute_table("Compute time (all attempts)", e2e.compute))
    else:
        parts.append(Text("Compute time: no compute spans", style="dim"))
    if e2e.network.count:
        parts.append(_network_table("Network time (all attempts)", e2e.network))
    workers = Table(title="Workers", title_justify="left", box=box.SIMPLE_HEAD)
    for col, justify in (
        ("worker", "left"),
        ("host", "left"),
        ("attempts", "right"),
        ("failed", "right"),
        ("busy", "right"),
        ("active", "right"),
        ("compute", "right"),
        ("network", "right"),
    ):
        workers.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, w in e2e.workers.items():
        workers.add_row(
            _text(name),
            _text(", ".join(w.hosts) or "-"),
            str(w.attempts),
            Text(str(w.failed), style=FAILED_STYLE if w.failed else ""),
            fmt_seconds(w.busy_seconds),
            fmt_seconds(w.active_seconds),
            fmt_seconds(w.compute_seconds),
            fmt_seconds(w.network_seconds),
        )
    if e2e.workers:
        parts.append(workers)
    return Group(*parts)


def render_queuing(analysis: Analysis, *, limit: int = 40) -> RenderableType:
    """Queuing delay per task, longest first; critical-path tasks marked with a star.

    Parameters
    ----------
    analysis:
        From `analyze`.
    limit:
        Most rows shown (0 = all); the caption says how many were left out.

    Returns
    -------
    RenderableType
    """
    critical = analysis.critical_tasks
    rows = sorted(
        analysis.queuing,
        key=lambda q: (q.queuing_delay_seconds is None, -(q.queuing_delay_seconds or 0.0), q.task),
    )
    shown = rows if limit <= 0 else rows[:limit]
    table = Table(title="Queuing delay", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column(CRITICAL_MARK, justify="center")
    table.add_column("task")
    table.add_column("attempts", justify="right")
    table.add_column("worker", style="dim")
    table.add_column("delay", justify="right")
    table.add_column("blocked by")
    table.add_column("queue wait", justify="right", style="dim")
    table.add_column("note", style="dim")
    for q in shown:
        star = Text(CRITICAL_MARK, style="bold magenta") if q.task in critical else Text("")
        delay = Text(
            fmt_seconds(q.queuing_delay_seconds), style=WAIT_STYLE if q.queuing_delay_seconds else ""
        )
        if q.clock_skew:
            delay.append(" skew", style="bold yellow")
        table.add_row(
            star,
            _text(q.task),
            str(q.attempts),
            _text(q.worker or "-"),
            delay,
            _text(q.blocked_by or "-"),
            fmt_seconds(q.queue_wait_seconds),
            _text(q.reason or ""),
        )
    if len(shown) < len(rows):
        table.caption = f"… {len(rows) - len(shown)} more task(s); {CRITICAL_MARK} = on the critical path"
    else:
        table.caption = f"{CRITICAL_MARK} = on the critical path"
    table.caption_justify = "left"
    return table


def render_lineage(analysis: Analysis, *, limit: int = 40) -> RenderableType:
    """The lineage tree rooted at the final products (sinks).

    Parameters
    ----------
    analysis:
        From `analyze`.
    limit:
        Most nodes drawn (0 = all); the rest is counted.

    Returns
    -------
    RenderableType
    """
    graph = analysis.lineage
    if not graph.items:
        return Text("Lineage: no lineage rows", style="dim")
    critical = analysis.critical_tasks
    root = Tree(Text(f"Lineage ({len(graph.items)} data item(s), {graph.edges} edge(s))", style="bold"))
    budget = limit if limit > 0 else None
    drawn = 0
    left = 0
    stack: list[tuple[Tree, LineageNode]] = [(root, n) for n in reversed(lineage_tree(graph))]
    while stack:
        parent, node = stack.pop()
        if budget is not None and drawn >= budget:
            left += 1
            continue
        drawn += 1
        branch = parent.add(_lineage_label(node, critical))
        stack.extend((branch, child) for child in reversed(node.children))
    parts: list[RenderableType] = [root]
    if left:
        parts.append(Text(f"… {left} more node(s)", style="dim"))
    return Group(*parts)


# --- pieces ----------------------------------------------------------------------------------


def _text(value: object, style: str = "") -> Text:
    """User data as `Text`: not markup, and with its control characters made visible."""
    return Text(safe_text(value), style=style)


def _lineage_label(node: LineageNode, critical: set[str]) -> Text:
    text = _text(node.data_id, style="bold magenta" if node.task in critical else "")
    if node.task is not None:
        text.append(safe_text(f"  {node.task}#{node.attempt}"), style="dim")
    if node.mark == SEEN:
        text.append("  (see above)", style="dim italic")
    elif node.mark == CYCLE:
        text.append("  (cycle)", style="bold red")
    elif node.mark == EXTERNAL:
        text.append("  (external)", style="cyan")
    return text


def _waterfall(node: PathNode, t_start: float, t_end: float, width: int) -> Text:
    scale = width / max(t_end - t_start, 1e-9)

    def col(t: float) -> int:
        return min(width, max(0, round((t - t_start) * scale)))

    wait_from = node.gate_time if node.gate_time is not None else node.start
    begin = min(col(node.start), width - 1)
    end = max(begin + 1, col(node.end))  # even a zero-length attempt gets one cell
    wait = min(col(wait_from), begin)
    return Text.assemble(
        ("·" * wait, "dim"),
        ("░" * (begin - wait), WAIT_STYLE),
        ("█" * (end - begin), ACTIVE_STYLE),
        ("·" * (width - end), "dim"),
    )


def _compute_table(title: str, compute: dict[str, DurationSummary]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("span", "count", "total", "mean", "p50", "p95", "max"):
        table.add_column(col, justify="left" if col == "span" else "right")
    for name, s in compute.items():
        table.add_row(
            _text(name),
            str(s.count),
            fmt_seconds(s.total_seconds),
            fmt_seconds(s.mean_seconds),
            fmt_seconds(s.p50_seconds),
            fmt_seconds(s.p95_seconds),
            fmt_seconds(s.max_seconds),
        )
    return table


def _network_table(title: str, network: NetworkSummary) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_footer=True)
    cols = ("span", "count", "active", "summed", "bytes", "p50", "p95", "max")
    footer = (
        "all",
        str(network.count),
        fmt_seconds(network.total_active_seconds),
        fmt_seconds(network.total_seconds),
        fmt_bytes(network.bytes),
        "",
        "",
        "",
    )
    for col, foot in zip(cols, footer, strict=True):
        table.add_column(col, footer=foot, justify="left" if col == "span" else "right")
    for name, s in network.by_name.items():
        table.add_row(
            _text(name),
            str(s.count),
            fmt_seconds(s.active_seconds),
            fmt_seconds(s.total_seconds),
            fmt_bytes(s.bytes),
            fmt_seconds(s.p50_seconds),
            fmt_seconds(s.p95_seconds),
            fmt_seconds(s.max_seconds),
        )
    return table


def render_history(hist: History, *, limit: int = 40) -> RenderableType:
    """A workflow's history: recent runs (newest first) and per-task success and durations.

    Parameters
    ----------
    hist:
        From `analyzer.runs.history`.
    limit:
        Most task rows shown (0 = all), least successful first.

    Returns
    -------
    RenderableType
    """
    runs = Table(
        title=_text(f"Recent runs of {hist.workflow_name or '?'}"), title_justify="left", box=box.SIMPLE_HEAD
    )
    for col, justify in (
        ("workflow", "left"),
        ("started", "left"),
        ("wall", "right"),
        ("outcome", "left"),
        ("tasks", "right"),
        ("failed", "right"),
        ("attempts", "right"),
    ):
        runs.add_column(col, justify=justify)  # type: ignore[arg-type]
    for run in hist.recent:
        runs.add_row(
            _text(run.workflow_id),
            fmt_instant(run.start),
            fmt_seconds(run.wall_seconds),
            _text(run.outcome, style="" if run.outcome == "completed" else FAILED_STYLE),
            str(run.tasks),
            str(run.failed_tasks),
            str(run.attempts),
        )
    tasks = Table(title=f"Tasks over {hist.runs} run(s)", title_justify="left", box=box.SIMPLE_HEAD)
    for col, justify in (
        ("task", "left"),
        ("runs", "right"),
        ("success", "right"),
        ("retried runs", "right"),
        ("p50", "right"),
        ("p95", "right"),
        ("last", "left"),
    ):
        tasks.add_column(col, justify=justify)  # type: ignore[arg-type]
    rows = sorted(hist.tasks, key=lambda t: (t.success_rate, t.task))
    shown = rows if limit <= 0 else rows[:limit]
    for t in shown:
        tasks.add_row(
            _text(t.task),
            str(t.runs),
            Text(f"{t.success_rate:.0%}", style="" if t.success_rate == 1 else FAILED_STYLE),
            str(t.retried_runs),
            fmt_seconds(t.duration_p50_seconds),
            fmt_seconds(t.duration_p95_seconds),
            _text(t.last_outcome),
        )
    if len(shown) < len(rows):
        tasks.caption = f"… {len(rows) - len(shown)} more task(s)"
    return Group(runs, tasks)
