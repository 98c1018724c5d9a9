"""The overview: workflows, workers and queues of a home."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Label, Static

from analyzer.fmt import MISSING, fmt_age, fmt_rate, fmt_residency, fmt_seconds, safe_text, state_style
from tuiflow.app.data import HomeReader, HomeSnapshot, QueueRow, WorkerRow, WorkflowRow
from tuiflow.app.render import segment_bar, sparkline, state_text, user_text
from tuiflow.app.rows import RowsView
from tuiflow.app.screen import LiveScreen


@dataclasses.dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    #: lower is dropped first when the table does not fit its screen
    keep: int = 9
    #: the one column that takes the width left over (the progress bar)
    grow: bool = False


WORKFLOW_COLUMNS = (
    Column("id", "ID", 8),
    Column("name", "NAME", 16, keep=8),
    Column("state", "STATE", 11, keep=8),
    Column("progress", "PROGRESS", 16, keep=7, grow=True),
    Column("done", "DONE", 11, keep=8),
    Column("rate", "RATE", 8, keep=3),
    Column("eta", "ETA", 7, keep=4),
    Column("age", "AGE", 6, keep=2),
)
WORKER_COLUMNS = (
    Column("worker", "WORKER", 22),
    Column("host", "HOST", 12, keep=1),
    Column("queues", "QUEUES", 12, keep=5),
    Column("gpus", "GPUS", 8, keep=3),
    Column("models", "MODELS", 24, keep=2),
    Column("running", "RUN", 6, keep=6),
    Column("heartbeat", "BEAT", 6, keep=4),
    Column("state", "STATE", 5, keep=8),
)
QUEUE_COLUMNS = (
    Column("queue", "QUEUE", 12),
    Column("ready", "READY", 6),
    Column("claimed", "CLAIMED", 7, keep=7),
    Column("delayed", "DELAYED", 7, keep=5),
    Column("poison", "POISON", 6, keep=8),
    Column("trend", "TREND", 12, keep=2),
)
_GROW_MAX = 40  # a wider progress bar says nothing more
NARROW = 150  # below this, workers and queues stack instead of sitting side by side


def fit_columns(columns: tuple[Column, ...], width: int) -> tuple[tuple[Column, int], ...]:
    """The columns that fit in `width` cells, least important dropped first, with the
    growing column widened into what is left (each cell has one cell of padding a side,
    and a vertical scrollbar may take two)."""
    chosen = list(columns)

    def need(cols: list[Column]) -> int:
        return sum(c.width + 2 for c in cols) + 2

    for victim in sorted(columns, key=lambda c: c.keep):
        if need(chosen) <= width or victim.keep >= 9:
            break
        chosen.remove(victim)
    spare = max(0, width - need(chosen))
    return tuple((c, c.width + min(spare, _GROW_MAX - c.width) if c.grow else c.width) for c in chosen)


def sync_table(table: DataTable, rows: dict[str, Sequence[Any]], columns: Sequence[str]) -> None:
    """Make `table` show `rows` (key -> cells, in the order of the column keys `columns`)
    by a keyed diff: remove the gone, update the changed cells, add the new. Never
    clears: the cursor stays where it is."""
    existing = {row_key.value: row_key for row_key in table.rows}
    for key in [k for k in existing if k not in rows]:
        table.remove_row(existing[key])
    for key, cells in rows.items():
        if key in existing:
            current = table.get_row(existing[key])
            for col, old, new in zip(columns, current, cells, strict=True):
                if str(old) != str(new) or type(old) is not type(new):
                    table.update_cell(existing[key], col, new)
        else:
            table.add_row(*cells, key=key)


def _pick(cells: dict[str, Any], columns: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(cells[c] for c in columns)


class WorkflowList(RowsView):
    """The workflows of the home, one line each, drawn with the Line API: a home with
    hundreds of workflows refreshes by repainting the lines that changed (a DataTable
    re-renders every visible cell when one changes)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select", "Open workflow", id="overview.open"),
    ]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.columns: tuple[tuple[Column, int], ...] = ()

    def set_columns(self, fit: tuple[tuple[Column, int], ...]) -> None:
        self.columns = fit
        self._cache.clear()
        header = Text()
        for col, width in fit:
            header.append(f" {col.label:<{width}} ")
        self.set_header(header)
        self.refresh()

    def show(self, rows: list[WorkflowRow]) -> None:
        # a row is the plain values it is drawn from: hashable, so drawn lines are cached
        self.set_rows([(w.id, _wf_values(w)) for w in rows])

    @property
    def bar_width(self) -> int:
        return next((w for c, w in self.columns if c.key == "progress"), 24)

    def format_row(self, data: Any, width: int) -> Text:
        values = dict(data)
        text = Text()
        for col, w in self.columns:
            text.append(" ")
            value = values[col.key]
            if col.key == "progress":
                counts, total = value
                cell = segment_bar(dict(counts), total, w)
            elif col.key == "state":
                cell = state_text(value)
            else:
                cell = user_text(value)  # the id and name come from the summary record
            cell.truncate(w, overflow="ellipsis", pad=True)
            text.append_text(cell)
            text.append(" ")
        return text


def _wf_values(w: WorkflowRow) -> tuple[tuple[str, Any], ...]:
    running = w.state == "running"
    return (
        ("id", w.id),
        ("name", w.name),
        ("state", w.state),
        ("progress", (tuple(sorted(w.counts.items())), w.total)),
        ("done", f"{w.done}/{w.total}"),
        ("rate", fmt_rate(w.rate, unit="") if running else ""),
        ("eta", fmt_seconds(w.eta) if running and w.eta is not None else ""),
        ("age", fmt_age(w.age)),
    )


class OverviewScreen(LiveScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel", "Cancel workflow", id="overview.cancel"),
        Binding("R", "retry", "Retry failed", id="overview.retry"),
        Binding("tab", "focus_next", "Next table", show=False, id="overview.next"),
    ]

    def __init__(self) -> None:
        super().__init__(id="overview")
        self.reader: HomeReader | None = None
        self.snapshot: HomeSnapshot | None = None
        self._layout: dict[str, tuple[str, ...]] = {}
        self._widths: dict[str, tuple[tuple[Column, int], ...]] = {}

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="overview-body"):
            yield Static(id="empty-home", markup=False)
            yield Label("Workflows", classes="section")
            yield WorkflowList(id="workflows")
            with Horizontal(id="lower"):
                with Vertical(id="workers-box"):
                    yield Label("Workers", classes="section")
                    yield DataTable(id="workers", cursor_type="row")
                with Vertical(id="queues-box"):
                    yield Label("Queues", classes="section")
                    yield DataTable(id="queues", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.reader = HomeReader(self.app.home)  # type: ignore[attr-defined]
        self._fit_tables(self.size.width)
        self.query_one("#empty-home").display = False
        self.query_one(WorkflowList).focus()
        super().on_mount()

    # ---------------------------------------------------------------- refresh
    def load(self, now: float) -> HomeSnapshot:
        assert self.reader is not None
        return self.reader.snapshot(now)

    def apply(self, snap: HomeSnapshot) -> None:
        self.snapshot = snap
        self.title = safe_text(f"tuiflow · coordinator: {snap.coordinator or 'none'}")
        empty = self.query_one("#empty-home", Static)
        empty.display = snap.empty
        if snap.empty:
            root = safe_text(shlex.quote(self.app.home_label))  # type: ignore[attr-defined]
            empty.update(
                "No workflows here yet.\n\n"
                "Run one now, in one process:\n\n"
                f"    tuiflow run-local examples/hello.yaml --home {root}\n\n"
                "or start a coordinator and workers, then submit:\n\n"
                f"    tuiflow coordinator --home {root}\n"
                f"    tuiflow worker --home {root}\n"
                f"    tuiflow submit examples/ml-pipeline.yaml --home {root}\n\n"
                "This screen updates by itself."
            )
        self._sync_tables(snap)
        store = self.app.store  # type: ignore[attr-defined]
        self.app.active_dirs = tuple(  # type: ignore[attr-defined]
            store.dir(w.id) for w in snap.workflows if w.state in ("pending", "running")
        )
        for err in snap.errors:
            self.notify(safe_text(err), severity="error", timeout=8, markup=False)

    def _sync_tables(self, snap: HomeSnapshot) -> None:
        tables = {
            "workers": {w.id: self._worker_cells(w) for w in snap.workers},
            "queues": {q.name: self._queue_cells(q) for q in snap.queues},
        }
        with self.app.batch_update():
            self.query_one(WorkflowList).show(snap.workflows)
            for name, rows in tables.items():
                keys = self._layout[name]
                sync_table(
                    self.query_one(f"#{name}", DataTable), {k: _pick(c, keys) for k, c in rows.items()}, keys
                )

    def _fit_tables(self, width: int) -> bool:
        """Choose each table's columns for a screen `width` wide; True if any changed."""
        narrow = width < NARROW
        self.set_class(narrow, "narrow")
        # side by side, workers and queues share the width
        lower = width if narrow else width // 2
        fits = {
            "workflows": fit_columns(WORKFLOW_COLUMNS, width),
            "workers": fit_columns(WORKER_COLUMNS, lower),
            "queues": fit_columns(QUEUE_COLUMNS, lower),
        }
        if self._widths == fits:
            return False
        self._widths = fits
        self.query_one(WorkflowList).set_columns(fits["workflows"])
        for name in ("workers", "queues"):
            fit = fits[name]
            table = self.query_one(f"#{name}", DataTable)
            table.clear(columns=True)
            for col, w in fit:
                table.add_column(col.label, key=col.key, width=w)
            self._layout[name] = tuple(c.key for c, _ in fit)
        return True

    @staticmethod
    def _worker_cells(w: WorkerRow) -> dict[str, Any]:
        # str cells of a DataTable are markup: what a heartbeat says is drawn as Text
        return {
            "worker": user_text(w.id),
            "host": user_text(w.host if w.slurm_job is None else f"{w.host} job {w.slurm_job}"),
            "queues": user_text(",".join(w.queues)),
            "gpus": ",".join(map(str, w.gpus)) if w.gpus else MISSING,
            "models": user_text(fmt_residency(w.models)),
            "running": f"{w.running}/{w.slots}" if w.slots else str(w.running),
            "heartbeat": Text(fmt_age(w.heartbeat_age), style=state_style("dead") if w.dead else ""),
            "state": state_text("dead" if w.dead else "alive"),
        }

    @staticmethod
    def _queue_cells(q: QueueRow) -> dict[str, Any]:
        return {
            "queue": user_text(q.name),
            "ready": str(q.ready),
            "claimed": str(q.claimed),
            "delayed": str(q.delayed),
            "poison": Text(str(q.dead), style="bold red" if q.dead else ""),
            "trend": sparkline(q.trend),
        }

    # ---------------------------------------------------------------- actions
    def _selected_workflow(self) -> str | None:
        current = self.query_one(WorkflowList).current
        return str(current[0]) if current is not None else None

    def on_rows_view_selected(self, event: RowsView.Selected) -> None:
        if isinstance(event.view, WorkflowList):
            self.app.open_workflow(str(event.key))  # type: ignore[attr-defined]

    def action_cancel(self) -> None:
        wf = self._selected_workflow()
        if wf:
            self.app.confirm_cancel(wf)  # type: ignore[attr-defined]

    def action_retry(self) -> None:
        wf = self._selected_workflow()
        if wf:
            self.app.confirm_retry(wf)  # type: ignore[attr-defined]

    def on_resize(self) -> None:
        if self._fit_tables(self.size.width) and self.snapshot is not None:
            self._sync_tables(self.snapshot)
