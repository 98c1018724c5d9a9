"""One task: its attempts, logs (tail, with follow mode), spans, output and error."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from typing import Any, ClassVar

from rich.console import Group
from rich.pretty import Pretty
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane

from analyzer.fmt import fmt_instant, fmt_seconds, safe_text, state_style
from spool import layout
from tuiflow.app.data import AttemptInfo, load_attempt
from tuiflow.app.overview import sync_table
from tuiflow.app.render import state_text, user_text
from tuiflow.app.screen import LiveScreen, set_text
from tuiflow.engine.client import TaskView, task_views

LOG_LINES = 2000


@dataclasses.dataclass
class TaskData:
    view: TaskView
    attempts: list[dict[str, Any]]
    info: AttemptInfo


def _iso_to_epoch(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class TaskScreen(LiveScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="task.back"),
        Binding("f", "follow", "Follow logs", id="task.follow"),
        Binding("left_square_bracket", "attempt(-1)", "Previous attempt", id="task.prev_attempt"),
        Binding("right_square_bracket", "attempt(1)", "Next attempt", id="task.next_attempt"),
    ]

    def __init__(self, wf_id: str, task: str, tab: str = "logs"):
        super().__init__(id=f"task-{wf_id}-{abs(hash(task))}")
        self.wf_id = wf_id
        self.task_name = task
        self.initial_tab = tab
        self.attempt: int | None = None  # None: follow the latest
        self.follow = True
        self._log_key: tuple[int, str] | None = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static(id="task-head")
        with TabbedContent(id="task-tabs", initial=self.initial_tab):
            with TabPane("Logs", id="logs"):
                yield Log(id="task-log", max_lines=LOG_LINES, auto_scroll=True)
            with TabPane("Attempts", id="attempts"):
                yield DataTable(id="attempt-table", cursor_type="row")
            with TabPane("Spans", id="spans"):
                yield DataTable(id="span-table", cursor_type="row")
            with TabPane("Output", id="output"), VerticalScroll():
                yield Static(id="task-output")
            with TabPane("Error", id="error"), VerticalScroll():
                yield Static(id="task-error")
        yield Footer()

    def on_mount(self) -> None:
        attempts = self.query_one("#attempt-table", DataTable)
        for col in ("attempt", "worker", "started", "ran", "outcome", "error"):
            attempts.add_column(col.upper(), key=col)
        spans = self.query_one("#span-table", DataTable)
        for col in ("span", "kind", "at", "duration", "status"):
            spans.add_column(col.upper(), key=col)
        super().on_mount()

    # ------------------------------------------------------------------ data
    def load(self, now: float) -> TaskData:
        store = self.app.store  # type: ignore[attr-defined]
        run, _ = store.load_run(self.wf_id)
        if self.task_name not in run.definition.index:
            raise KeyError(f"workflow {self.wf_id} has no task {self.task_name!r}")
        idx = run.definition.index[self.task_name]
        view = task_views(run, now, [idx])[0]
        home = self.app.home  # type: ignore[attr-defined]
        attempts = []
        for n in range(run.attempt[idx] + 1):
            info = load_attempt(home, self.wf_id, self.task_name, n)
            root = next((s for s in info.spans if s.get("name") == "task"), None)
            attrs = (root or {}).get("attributes", {})
            start, end = (
                _iso_to_epoch((root or {}).get("start_time")),
                _iso_to_epoch((root or {}).get("end_time")),
            )
            attempts.append(
                {
                    "attempt": n,
                    "worker": attrs.get("tuiflow.worker", ""),
                    "start": start,
                    "ran": (end - start) if start and end else None,
                    "outcome": attrs.get("tuiflow.outcome", view.state if n == run.attempt[idx] else ""),
                    "error": (attrs.get("tuiflow.error") or "").splitlines()[0][:80]
                    if attrs.get("tuiflow.error")
                    else "",
                }
            )
        chosen = run.attempt[idx] if self.attempt is None else min(self.attempt, run.attempt[idx])
        return TaskData(view, attempts, load_attempt(home, self.wf_id, self.task_name, chosen))

    def apply(self, data: TaskData) -> None:
        v = data.view
        self.title = safe_text(f"{self.task_name} · {self.wf_id}")
        head = Text()
        head.append(f"{safe_text(self.task_name)}  ", style="bold")
        head.append_text(state_text(v.state))
        head.append(f"  attempt {data.info.attempt} of {v.attempt + 1}", style="grey70")
        head.append(f"  queued {fmt_seconds(v.queued_for)}  ran {fmt_seconds(v.ran_for)}", style="grey70")
        if v.worker:
            head.append(f"  on {safe_text(v.worker)}", style="grey70")
        where = os.path.relpath(data.info.dir, self.app.home.root)  # type: ignore[attr-defined]
        head.append(f"\n{safe_text(where)}", style="grey50")
        set_text(self.query_one("#task-head", Static), head)
        self._logs(data.info)
        with self.app.batch_update():
            # str cells of a DataTable are markup: what spans say is drawn as Text
            sync_table(
                self.query_one("#attempt-table", DataTable),
                {
                    str(a["attempt"]): (
                        str(a["attempt"]),
                        user_text(a["worker"]),
                        fmt_instant(a["start"], date=False) if a["start"] else "",
                        fmt_seconds(a["ran"]),
                        user_text(a["outcome"]),
                        user_text(a["error"]),
                    )
                    for a in data.attempts
                },
                ("attempt", "worker", "started", "ran", "outcome", "error"),
            )
            self._spans(data.info)
        self.query_one("#task-output", Static).update(self._output(data.info))
        self.query_one("#task-error", Static).update(self._error(v, data.info))

    def _logs(self, info: AttemptInfo) -> None:
        log = self.query_one("#task-log", Log)
        text = ""
        if info.stdout:
            text += info.stdout
        if info.stderr:
            text += ("" if not text or text.endswith("\n") else "\n") + "── stderr ──\n" + info.stderr
        key = (info.attempt, text)
        if key == self._log_key:
            return
        previous = self._log_key
        self._log_key = key
        if previous is not None and previous[0] == info.attempt and text.startswith(previous[1]):
            new = text[len(previous[1]) :]  # tail by offset: only what was appended
            if new:
                log.write(safe_text(new, multiline=True))
            return
        log.clear()
        log.write(safe_text(text, multiline=True) or "(no output yet)\n")

    def _spans(self, info: AttemptInfo) -> None:
        root = next((s for s in info.spans if s.get("name") == "task"), None)
        t0 = _iso_to_epoch(root.get("start_time")) if root else None
        rows = {}
        for k, (depth, s) in enumerate(_span_tree(info.spans)):
            start, end = _iso_to_epoch(s.get("start_time")), _iso_to_epoch(s.get("end_time"))
            attrs = s.get("attributes", {})
            status = s.get("status", {}).get("status_code", "")
            rows[f"{k}"] = (
                user_text("  " * depth + str(s.get("name"))),
                user_text(attrs.get("tuiflow.kind", "root" if s.get("name") == "task" else "")),
                f"+{fmt_seconds(start - t0)}" if start is not None and t0 is not None else "",
                fmt_seconds(end - start) if start is not None and end is not None else "",
                user_text(status, state_style("failed") if status == "ERROR" else ""),
            )
        sync_table(
            self.query_one("#span-table", DataTable), rows, ("span", "kind", "at", "duration", "status")
        )

    def _output(self, info: AttemptInfo) -> Any:
        if not info.has_output:
            return Text(
                "This attempt produced no output (return a value, call tuiflow.set_output, or write "
                "JSON to $TUIFLOW_OUTPUT).",
                style="grey62",
            )
        raw = json.dumps(info.output, indent=2)
        if len(raw) > 20_000:
            raw = raw[:20_000] + "\n… (truncated)"
        where = os.path.relpath(layout.attempt_file(info.dir, layout.OUTPUT_FILE), self.app.home.root)  # type: ignore[attr-defined]
        # JSON escapes control characters in the output itself
        return Group(user_text(where, "grey50"), Syntax(raw, "json", word_wrap=True))

    @staticmethod
    def _error(v: TaskView, info: AttemptInfo) -> Any:
        if not v.reason and not info.stderr:
            return Text("No error.", style="grey62")
        parts: list[Any] = []
        if v.reason:
            parts.append(user_text(v.reason, "bold red", multiline=True))
        if v.exit_code not in (None, 0):
            parts.append(Text(f"exit code {v.exit_code}", style="red"))
        if info.stderr:
            tail = "\n".join(info.stderr.splitlines()[-40:])
            parts.append(Text("\nstderr (last lines):", style="grey62"))
            parts.append(user_text(tail, "red", multiline=True))
        return Group(*parts) if parts else Pretty(None)

    # --------------------------------------------------------------- actions
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_follow(self) -> None:
        self.follow = not self.follow
        self.query_one("#task-log", Log).auto_scroll = self.follow
        if self.follow:
            self.query_one("#task-log", Log).scroll_end(animate=False)
        self.notify("following the log" if self.follow else "log follow off", timeout=1.5)

    def action_attempt(self, delta: int) -> None:
        current = self._log_key[0] if self._log_key else 0
        self.attempt = max(0, current + delta)
        self._log_key = None
        self.request_refresh()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "attempt-table" and event.row_key.value is not None:
            self.attempt = int(event.row_key.value)
            self._log_key = None
            self.query_one("#task-tabs", TabbedContent).active = "logs"
            self.request_refresh()


def _span_tree(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Spans depth-first, each under its parent, siblings by start time; a span whose
    parent is not in the file (the parent is another process's) counts as a root."""
    ids = {s.get("context", {}).get("span_id") for s in spans}
    children: dict[Any, list[dict[str, Any]]] = {}
    for s in sorted(spans, key=lambda s: s.get("start_time") or ""):
        parent = s.get("parent_id")
        children.setdefault(parent if parent in ids else None, []).append(s)
    out: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, s) for s in reversed(children.get(None, []))]
    while stack:
        depth, s = stack.pop()
        out.append((depth, s))
        stack.extend((depth + 1, c) for c in reversed(children.get(s.get("context", {}).get("span_id"), [])))
    return out
