"""Modal screens: confirmation, and the help screen listing every key."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no; `y`/`n` or the buttons."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, detail: str = ""):
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(self.question, id="confirm-question", markup=False)
            if self.detail:
                yield Static(self.detail, id="confirm-detail", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def binding_rows(app_cls: type, keymap: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(where, key, description, id) for every binding of the app, its screens and views,
    with the keys of `keymap` (binding id -> key) applied."""
    from tuiflow.app.lists import TaskList, Timeline
    from tuiflow.app.overview import OverviewScreen, WorkflowList
    from tuiflow.app.rows import RowsView
    from tuiflow.app.task import TaskScreen
    from tuiflow.app.workflow import WorkflowScreen

    rows = []
    for where, cls in (
        ("everywhere", app_cls),
        ("overview", WorkflowList),
        ("overview", OverviewScreen),
        ("workflow", WorkflowScreen),
        ("task list", TaskList),
        ("lists", RowsView),
        ("timeline", Timeline),
        ("task", TaskScreen),
        ("dialogs", ConfirmScreen),
        ("help", HelpScreen),
    ):
        for b in cls.BINDINGS:
            if isinstance(b, Binding):
                key = keymap.get(b.id, b.key) if b.id else b.key
                rows.append((where, key, b.description, b.id or ""))
    rows.append(("everywhere", "ctrl+p", "Command palette", "app.command_palette"))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "Close", id="help.close"),
    ]

    def compose(self) -> ComposeResult:
        table = Table(title="tuiflow keys", expand=True, title_style="bold")
        for col in ("where", "key", "does", "binding id"):
            table.add_column(col, style="cyan" if col == "key" else None)
        for where, key, desc, bid in binding_rows(type(self.app), getattr(self.app, "_keymap", {}) or {}):
            shown = " / ".join("enter" if k == "enter" else format_key(k) for k in key.split(","))
            table.add_row(where, shown, desc, Text(bid, style="grey50"))
        note = Text(
            "\nRebind any key by id in ~/.config/tuiflow/keymap.json (or $TUIFLOW_KEYMAP), e.g. "
            '{"workflow.cancel": "x"}. The mouse works too: click rows, tabs and buttons.',
            style="grey62",
        )
        with VerticalScroll(id="help-box"):
            yield Static(table)
            yield Static(note)

    def action_dismiss(self) -> None:
        self.dismiss(None)
