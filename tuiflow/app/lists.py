"""The big lists of the dashboard, on `RowsView`: tasks, the DAG, the timeline."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message

from analyzer.fmt import fmt_seconds, safe_text, state_style
from tuiflow.app.data import WorkflowSnapshot, dag_rows, task_order, task_row
from tuiflow.app.render import segment_bar
from tuiflow.app.rows import RowsView

GLYPH = {
    "completed": "✔",
    "failed": "✘",
    "upstream_failed": "⊘",
    "cancelled": "■",
    "running": "▶",
    "ready": "◷",
    "skipped": "↷",
    "pending": "·",
}
STATE_FILTERS = (
    "all",
    "running",
    "ready",
    "pending",
    "failed",
    "upstream_failed",
    "completed",
    "skipped",
    "cancelled",
)
SORTS = ("name", "state", "ran", "queued", "attempt")
#: the timeline's queued segment: a dim band before the coloured running one
QUEUED_STYLE = "grey42"


def _cell(text: str, width: int) -> str:
    if len(text) > width:
        return text[: max(0, width - 1)] + "…"
    return text.ljust(width)


class TaskRows(Sequence[tuple[Any, ...]]):
    """The task list's rows, built only when asked for: a screenful per frame, never all."""

    def __init__(self, snap: WorkflowSnapshot, order: Sequence[int]):
        self.snap = snap
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [task_row(self.snap, i) for i in self.order[k]]
        return task_row(self.snap, self.order[k])


@dataclasses.dataclass(frozen=True)
class TaskFilter:
    text: str = ""
    state: str = "all"
    sort: str = "name"

    def order(self, snap: WorkflowSnapshot) -> Sequence[int]:
        return task_order(snap, self.text, self.state, self.sort)


class TaskList(RowsView):
    """Every task of a workflow: state, attempt, worker, queued for, ran for, exit/error.

    `/` filters by name, `s` cycles the state filter, `o` cycles the sort order. With
    10,000 tasks a refresh costs the same as with ten: the order is computed off the UI
    thread (`TaskFilter.order`) and rows are built only for the lines on screen.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "cycle_state", "State filter", id="tasks.state_filter"),
        Binding("o", "cycle_sort", "Sort", id="tasks.sort"),
    ]

    class Shown(Message):
        """The rows shown changed: how many of how many, under which filters."""

        def __init__(self, view: TaskList, shown: int) -> None:
            super().__init__()
            self.view = view
            self.shown = shown

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.snap: WorkflowSnapshot | None = None
        self.filter = TaskFilter()
        self._name_width = 24

    @property
    def text_filter(self) -> str:
        return self.filter.text

    @property
    def state_filter(self) -> str:
        return self.filter.state

    @property
    def sort(self) -> str:
        return self.filter.sort

    def show(
        self, snap: WorkflowSnapshot, order: Sequence[int] | None = None, made_for: TaskFilter | None = None
    ) -> None:
        """Show `snap`'s tasks; `order` is the filtered, sorted indices when the caller
        computed them already (for the filter `made_for`: if the user changed the filter
        since, it is computed again here)."""
        self.snap = snap
        if order is None or made_for != self.filter:
            order = self.filter.order(snap)
        self._name_width = snap.index.name_width
        self.set_header(
            Text(self._line("", "TASK", "STATE", "ATT", "WORKER", "QUEUED", "RAN", "EXIT / ERROR"))
        )
        names = snap.index.names
        if isinstance(order, range) and order == range(len(names)):
            keys: Sequence[str] = names
            index: Any = snap.index.index  # the definition's own name -> position map
        else:
            keys, index = [names[i] for i in order], None
        self.post_message(self.Shown(self, len(order)))
        self.set_keyed(keys, TaskRows(snap, order), index)

    def status(self, shown: int) -> Text:
        """One line saying what the list shows: `12 of 1,002 tasks · state failed · …`."""
        total = len(self.snap.index.names) if self.snap is not None else 0
        text = Text(f"{shown:,} of {total:,} tasks", style="bold")
        for label, value, on in (
            ("name contains", repr(self.text_filter), bool(self.text_filter)),
            ("state", self.state_filter, self.state_filter != "all"),
            ("sorted by", self.sort, True),
        ):
            text.append("  ·  ", style="grey50")
            text.append(f"{label} ", style="grey62")
            text.append(value, style="bold yellow" if on and label != "sorted by" else "")
        return text

    def _line(
        self, glyph: str, name: str, state: str, att: str, worker: str, queued: str, ran: str, detail: str
    ) -> str:
        return (
            f"{glyph:1} {_cell(name, self._name_width)} {_cell(state, 15)} {att:>3} {_cell(worker, 20)} "
            f"{queued:>7} {ran:>7}  {detail}"
        )

    def format_row(self, data: Any, width: int) -> Text:
        name, state, attempt, worker, queued, ran, detail = data
        detail = safe_text(detail)
        line = self._line(
            GLYPH.get(state, "?"),
            safe_text(name),
            safe_text(state),
            str(attempt),
            safe_text(worker),
            fmt_seconds(queued) if queued is not None else "",
            fmt_seconds(ran) if ran is not None else "",
            detail,
        )
        text = Text(line)
        style = state_style(state)
        text.stylize(style, 0, 1)
        start = 2 + self._name_width + 1
        text.stylize(style, start, start + 15)
        if detail and state in ("failed", "upstream_failed"):
            text.stylize(state_style("failed"), len(line) - len(detail), len(line))
        return text

    def _refilter(self, **change: str) -> None:
        self.filter = dataclasses.replace(self.filter, **change)
        if self.snap is not None:
            self.show(self.snap)

    def set_filter(self, text: str) -> None:
        self._refilter(text=text)

    def action_cycle_state(self) -> None:
        self._refilter(state=STATE_FILTERS[(STATE_FILTERS.index(self.state_filter) + 1) % len(STATE_FILTERS)])

    def action_cycle_sort(self) -> None:
        self._refilter(sort=SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)])


# ------------------------------------------------------------------------- DAG
class DagView(RowsView):
    """The task graph by layers (longest dependency chain from a root). A foreach task's
    items fold into one line with a progress bar (enter unfolds it); prefix groups with
    more than `FOLD_OVER` tasks in a layer fold too, so 10,000 tasks stay navigable. The
    layout is worked out once per workflow; a refresh only counts states."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.expanded: frozenset[str] = frozenset()
        self.snapshot: WorkflowSnapshot | None = None

    def show(
        self,
        snap: WorkflowSnapshot,
        rows: list[tuple[Any, Any]] | None = None,
        made_for: frozenset[str] | None = None,
    ) -> None:
        """Show `snap`; `rows` are its DAG rows when the caller built them already (for
        the groups `made_for` expanded: if that changed since, they are built again)."""
        self.snapshot = snap
        if rows is None or made_for != self.expanded:
            rows = dag_rows(snap, self.expanded)
        self.set_rows(rows)

    def format_row(self, data: Any, width: int) -> Text:
        kind = data[0]
        if kind == "layer":
            _, layer, n = data
            label = f"── layer {layer} · {n} task{'s' if n != 1 else ''} "
            return Text(label + "─" * max(0, width - len(label)), style="bold grey62")
        if kind == "group":
            _, name, counts, total, open_, deps = data
            counts = dict(counts)
            text = Text(f"  {'▾' if open_ else '▸'} ", style="bold")
            text.append(f"{safe_text(name):<28}", style="bold")
            text.append_text(segment_bar(counts, total, 20))
            done = sum(v for k, v in counts.items() if k not in ("pending", "ready", "running"))
            text.append(f" {done}/{total}", style="grey70")
            if deps:
                text.append(f"  ← {safe_text(deps)}", style="grey50")
            return text
        _, name, state, deps, indent = data
        name, state, deps = safe_text(name), safe_text(state), safe_text(deps)
        text = Text("      " if indent else "  ")
        text.append(f"{GLYPH.get(state, '?')} ", style=state_style(state))
        text.append(f"{name:<30}", style=state_style(state))
        text.append(f" {state:<15}", style="grey70")
        if deps:
            text.append(f" ← {deps}", style="grey50")
        return text

    def action_select(self) -> None:
        cur = self.current
        if cur is None:
            return
        _key, data = cur
        if data[0] == "group":
            self.expanded = self.expanded ^ {data[1]}
            if self.snapshot is not None:
                self.show(self.snapshot)
            return
        if data[0] == "task":
            self.post_message(self.Selected(self, data[1], data))


# -------------------------------------------------------------------- timeline
class Timeline(RowsView):
    """A Gantt chart: one row per task (or per worker lane with `l`), a dim queued segment
    then a running segment coloured by outcome. `+`/`-` zoom, `←`/`→` pan, `f` fits."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("plus,equals_sign", "zoom(0.5)", "Zoom in", id="timeline.zoom_in"),
        Binding("minus", "zoom(2.0)", "Zoom out", id="timeline.zoom_out"),
        Binding("left,h", "pan(-0.25)", "Pan left", show=False, id="timeline.pan_left"),
        Binding("right,l", "pan(0.25)", "Pan right", show=False, id="timeline.pan_right"),
        Binding("f", "fit", "Fit", id="timeline.fit"),
        Binding("w", "toggle_lanes", "Task/worker rows", id="timeline.lanes"),
    ]
    label_width = 28

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.items: list[Any] = []  # TimelineRow-like: task, worker, queued_start, start, end, outcome
        self.by_worker = False
        self.t0 = 0.0
        self.span = 1.0
        self._fit_range = (0.0, 1.0)

    def show(self, items: list[Any]) -> None:
        fresh = not self.items
        self.items = items
        starts = [x.queued_start or x.start for x in items if (x.queued_start or x.start)]
        ends = [x.end for x in items if x.end]
        if starts and ends:
            self._fit_range = (min(starts), max(ends))
        if fresh:
            self.action_fit()
        else:
            self._build()

    def _build(self) -> None:
        self._cache.clear()
        if self.by_worker:
            lanes: dict[str, list[Any]] = {}
            for x in self.items:
                lanes.setdefault(x.worker or "(no worker)", []).append(x)
            rows = [((("lane", w)), ("lane", w, tuple(lanes[w]))) for w in sorted(lanes)]
        else:
            rows = [(("task", x.task, x.attempt), ("task", x)) for x in sorted(self.items, key=_start)]
        width = max(10, self.size.width - self.label_width - 2)
        self.set_header(Text(f"{'':<{self.label_width}}  {self._axis(width)}", style="grey62"))
        self.set_keyed([k for k, _ in rows], [d for _, d in rows], repaint_all=True)

    def _axis(self, width: int) -> str:
        ticks = 4
        cells = [" "] * width
        for k in range(ticks + 1):
            pos = min(width - 1, int(k * (width - 1) / ticks))
            label = f"+{fmt_seconds(self.t0 - self._fit_range[0] + k * self.span / ticks)}"
            for j, ch in enumerate(label):
                if pos + j < width:
                    cells[pos + j] = ch
        return "".join(cells)

    def _x(self, t: float, width: int) -> int:
        return round((t - self.t0) / self.span * width)

    def _paint(self, cells: list[tuple[str, str]], x: Any, width: int) -> None:
        q, s, e = x.queued_start, x.start, x.end or (x.start if x.start else None)
        if q and s:
            for c in range(
                max(0, self._x(q, width)), min(width, max(self._x(s, width), self._x(q, width) + 1))
            ):
                cells[c] = ("░", QUEUED_STYLE)
        if s and e is not None:
            style = state_style(_outcome_state(x.outcome))
            a, b = self._x(s, width), max(self._x(e, width), self._x(s, width) + 1)
            for c in range(max(0, a), min(width, b)):
                cells[c] = ("█", style)

    def format_row(self, data: Any, width: int) -> Text:
        bar_width = max(10, width - self.label_width - 2)
        cells: list[tuple[str, str]] = [(" ", "")] * bar_width
        if data[0] == "lane":
            label = data[1]
            for x in data[2]:
                self._paint(cells, x, bar_width)
        else:
            x = data[1]
            label = x.task + (f" #{x.attempt}" if x.attempt else "")
            self._paint(cells, x, bar_width)
        text = Text(_cell(safe_text(label), self.label_width) + "  ")
        for ch, style in cells:
            text.append(ch, style=style or None)
        return text

    def action_zoom(self, factor: float) -> None:
        center = self.t0 + self.span / 2
        self.span = max(1e-3, self.span * factor)
        self.t0 = center - self.span / 2
        self._build()

    def action_pan(self, fraction: float) -> None:
        self.t0 += self.span * fraction
        self._build()

    def action_fit(self) -> None:
        lo, hi = self._fit_range
        self.t0 = lo
        self.span = max(1e-3, hi - lo) * 1.02
        self._build()

    def action_toggle_lanes(self) -> None:
        self.by_worker = not self.by_worker
        self._build()


def _start(x: Any) -> float:
    return x.start or x.queued_start or math.inf


def _outcome_state(outcome: str | None) -> str:
    if outcome in (None, "", "completed"):
        return "completed"
    if outcome in ("cancelled", "worker stopped"):
        return "cancelled"
    if outcome == "running":
        return "running"
    return "failed"
