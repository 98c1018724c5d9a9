"""The GPU view (``tuiflow trace analyze WF -f gpu``, the dashboard's GPU tab): lanes drawn
on one time axis, then throughput per model and GPU-seconds per task.

Pure: a `GpuUsage` in, a rich renderable out. Figures and colours are `analyzer.fmt`'s;
names from the trace (tasks, workers, models) are user text, drawn safe and never as markup.
"""

from __future__ import annotations

import math

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .fmt import (
    LANE_STYLE,
    MISSING,
    fmt_bytes,
    fmt_model,
    fmt_rate,
    fmt_seconds,
    fmt_share,
    safe_text,
)
from .gpu import CPU_LANE, MODEL_EXECUTORS, GpuLane, GpuUsage, ModelGpu, TaskGpu
from .lanes import BUSY, CLAIMABLE, IDLE, LANE_STATES, LOADING, OTHER, LaneSegment

#: narrower than this (in columns), the tables keep only their main columns
WIDE = 110
MIN_BAR = 10
MAX_BAR = 48
#: the character of each lane state in a bar (colours: `fmt.LANE_STYLE`)
LANE_GLYPH = {BUSY: "█", LOADING: "▓", OTHER: "▒", CLAIMABLE: "░", IDLE: "·"}
#: what each state is called in the legend and the columns
LANE_NAMES = {
    BUSY: "busy",
    LOADING: "loading",
    OTHER: "other",
    CLAIMABLE: "idle while work was queued",
    IDLE: "idle",
}
#: column headers of the lane states (the legend under the table spells them out)
LANE_COLUMNS = {BUSY: "busy", LOADING: "loading", OTHER: "other", CLAIMABLE: "queued", IDLE: "idle"}
EMPTY_MESSAGE = (
    "GPU: no attempt held a GPU or ran a model executor ({executors}). Lanes, GPU-seconds and "
    "throughput fill in when tasks ask for `gpus:` or use a model executor."
)


def render_gpu(usage: GpuUsage, *, limit: int = 40, bar_width: int | None = None) -> RenderableType:
    """Lanes, per-model throughput and GPU-seconds per task (most first, `limit` rows).

    Parameters
    ----------
    usage:
        From `analyzer.gpu.gpu_usage` (``Analysis.gpu``).
    limit:
        Most task rows (0 = all); the caption counts the rest.
    bar_width:
        Characters of each lane's bar; None fits it to the width it is printed at.

    Returns
    -------
    RenderableType
        A `GpuView` (it lays itself out for the width it gets: below `WIDE` columns
        the tables keep only their main columns), or a sentence saying what would fill
        the view when `usage` is empty.
    """
    if usage.empty:
        return Text(EMPTY_MESSAGE.format(executors=", ".join(sorted(MODEL_EXECUTORS))), style="dim")
    return GpuView(usage, limit=limit, bar_width=bar_width)


class GpuView:
    """The GPU view as a rich renderable that fits the width it is printed at."""

    def __init__(self, usage: GpuUsage, *, limit: int = 40, bar_width: int | None = None) -> None:
        self.usage = usage
        self.limit = limit
        self.bar_width = bar_width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        compact = width < WIDE
        usage = self.usage
        yield render_totals(usage)
        yield Text()
        yield self._lanes(console, options, compact)
        if usage.models:
            yield Text()
            yield render_models(usage.models, compact=compact)
        yield Text()
        yield render_tasks(usage.tasks, limit=self.limit, compact=compact)

    def _lanes(self, console: Console, options: ConsoleOptions, compact: bool) -> Table:
        """The lanes table fitted to the width: the bar takes what the other columns
        leave (up to `MAX_BAR`); when even `MIN_BAR` does not fit, worker names are cut."""
        lanes = self.usage.lanes
        if self.bar_width is not None:
            return render_lanes(lanes, bar_width=self.bar_width, compact=compact)
        unbounded = options.update(max_width=1 << 16)
        natural = Measurement.get(console, unbounded, render_lanes(lanes, bar_width=MIN_BAR, compact=compact))
        spare = options.max_width - natural.maximum
        if spare >= 0:
            return render_lanes(lanes, bar_width=min(MAX_BAR, MIN_BAR + spare), compact=compact)
        longest = max(len(safe_text(lane.worker)) for lane in lanes)
        return render_lanes(lanes, bar_width=MIN_BAR, worker_width=max(8, longest + spare), compact=compact)


def _lane_states(compact: bool) -> tuple[str, ...]:
    return tuple(s for s in LANE_STATES if not (compact and s == OTHER))


def render_totals(usage: GpuUsage) -> Text:
    """One line: the workflow's GPU-seconds and model-load share."""
    text = Text()
    text.append("GPU time ", style="bold")
    text.append(fmt_seconds(usage.gpu_seconds))
    text.append(f" over {len(usage.tasks)} task(s) on {len(usage.lanes)} lane(s)  ·  model load share ")
    text.append(fmt_share(usage.load_share))
    return text


def render_lanes(
    lanes: list[GpuLane], *, bar_width: int = MAX_BAR, worker_width: int | None = None, compact: bool = False
) -> Table:
    """A row per (worker, GPU) lane: its bar on the workflow's time axis and its seconds
    (`compact`: without the ``other`` seconds, utilisation and memory); worker names cut
    to `worker_width` (None: whole)."""
    t0 = min(lane.start for lane in lanes)
    t1 = max(lane.end for lane in lanes)
    states = _lane_states(compact)
    table = Table(title="GPU lanes", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("worker", no_wrap=True, overflow="ellipsis", max_width=worker_width)
    table.add_column("GPU", justify="right", no_wrap=True, min_width=3)
    table.add_column(Text(f"{fmt_seconds(t1 - t0)} →", style="dim"), no_wrap=True)
    for state in states:
        table.add_column(Text(LANE_COLUMNS[state], style=LANE_STYLE[state]), justify="right", no_wrap=True)
    if not compact:
        table.add_column("util", justify="right")
        table.add_column("memory", justify="right", no_wrap=True)
    for lane in lanes:
        cells: list[RenderableType] = [
            _text(lane.worker),
            lane.label,
            lane_bar(lane.segments, t0, t1, bar_width),
            *_state_cells(_lane_seconds(lane), states),
        ]
        if not compact:
            cells += [fmt_share(lane.utilization), fmt_bytes(lane.memory_peak_bytes)]
        table.add_row(*cells)
    if len(lanes) > 1:
        total = {state: math.fsum(_lane_seconds(lane)[state] for lane in lanes) for state in states}
        table.add_section()
        table.add_row("total", "", "", *_state_cells(total, states), style="bold")
    legend = Text()
    for state in LANE_STATES:
        legend.append(LANE_GLYPH[state], style=LANE_STYLE[state])
        legend.append(f" {LANE_NAMES[state]}  ")
    table.caption = legend
    table.caption_justify = "left"
    return table


def render_tasks(tasks: list[TaskGpu], *, limit: int = 40, compact: bool = False) -> Table:
    """GPU-seconds per task, most first (batch shares split equally among members;
    `compact`: without the load and generation columns)."""
    shown = tasks if limit <= 0 else tasks[:limit]
    table = Table(title="GPU time per task", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("task", overflow="fold")
    table.add_column("model", overflow="fold")
    table.add_column("GPUs", justify="right")
    table.add_column("batch", justify="right")
    if not compact:
        table.add_column("load", justify="right")
        table.add_column("generate", justify="right")
    table.add_column("GPU time", justify="right", style="bold")
    for t in shown:
        name = _text(t.task)
        if t.attempts > 1:
            name.append(f"  ×{t.attempts}", style="dim")
        cells: list[RenderableType] = [
            name,
            _text(fmt_model(t.model) if t.model else t.executor or MISSING),
            str(t.devices) if t.devices else CPU_LANE,
            str(t.batch_size) if t.batch_size > 1 else MISSING,
        ]
        if not compact:
            cells += [fmt_seconds(t.load_seconds), fmt_seconds(t.execute_seconds)]
        cells.append(fmt_seconds(t.gpu_seconds))
        table.add_row(*cells)
    caption = "a merged batch's load and generation are split equally among its tasks"
    if len(shown) < len(tasks):
        caption = f"… {len(tasks) - len(shown)} more task(s); {caption}"
    table.caption = caption
    table.caption_justify = "left"
    return table


def render_models(models: list[ModelGpu], *, compact: bool = False) -> Table:
    """Per model: calls, loads, their seconds, load share, what it made and how fast
    (`compact`: without the executor, the seconds and the count made)."""
    table = Table(title="Models", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("model", overflow="fold")
    if not compact:
        table.add_column("executor", style="dim")
    table.add_column("calls", justify="right")
    table.add_column("loads", justify="right")
    if not compact:
        table.add_column("load", justify="right")
        table.add_column("generate", justify="right")
    table.add_column("load share", justify="right")
    if not compact:
        table.add_column("made", justify="right")
    table.add_column("rate", justify="right", no_wrap=True)
    for m in models:
        made, rate = _output(m)
        cells: list[RenderableType] = [_text(fmt_model(m.model))]
        if not compact:
            cells.append(_text(m.executor))
        cells += [str(m.calls), str(m.loads)]
        if not compact:
            cells += [fmt_seconds(m.load_seconds), fmt_seconds(m.execute_seconds)]
        cells.append(fmt_share(m.load_share))
        if not compact:
            cells.append(made)
        cells.append(rate)
        table.add_row(*cells)
    return table


def lane_bar(segments: list[LaneSegment], t0: float, t1: float, width: int) -> Text:
    """A lane's states on the time axis [t0, t1], one character a cell: the state that
    covers most of the cell; blank outside the lane's window."""
    span = max(t1 - t0, 1e-9)
    cell = span / width
    text = Text()
    i = 0
    for k in range(width):
        lo, hi = t0 + k * cell, t0 + (k + 1) * cell
        while i < len(segments) and segments[i].end <= lo:
            i += 1
        cover: dict[str, float] = {}
        j = i
        while j < len(segments) and segments[j].start < hi:
            seg = segments[j]
            cover[seg.state] = cover.get(seg.state, 0.0) + min(seg.end, hi) - max(seg.start, lo)
            j += 1
        if not cover:
            text.append(" ")
            continue
        state = max(LANE_STATES, key=lambda s: (cover.get(s, 0.0), -LANE_STATES.index(s)))
        text.append(LANE_GLYPH[state], style=LANE_STYLE[state])
    return text


def _lane_seconds(lane: GpuLane) -> dict[str, float]:
    return {
        BUSY: lane.busy_seconds,
        LOADING: lane.loading_seconds,
        OTHER: lane.other_seconds,
        CLAIMABLE: lane.idle_claimable_seconds,
        IDLE: lane.idle_seconds,
    }


def _state_cells(seconds: dict[str, float], states: tuple[str, ...]) -> list[Text]:
    """The seconds of each state; those idle while work was queued in its colour."""
    return [
        Text(fmt_seconds(seconds[s]), style=LANE_STYLE[s] if s == CLAIMABLE and seconds[s] > 0 else "")
        for s in states
    ]


def _output(m: ModelGpu) -> tuple[str, str]:
    if m.images is not None:
        return f"{m.images:,} images", fmt_rate(m.images_per_second, "images")
    if m.output_tokens is not None:
        return f"{m.output_tokens:,} tokens", fmt_rate(m.tokens_per_second, "tokens")
    return MISSING, MISSING


def _text(value: object, style: str = "") -> Text:
    return Text(safe_text(value), style=style)
