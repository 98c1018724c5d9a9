"""The tuiflow dashboard (`tuiflow`, `tuiflow serve`).

Deterministic by construction: the app takes its home, a clock and a `live` switch, so
tests and screenshots run it on fixed data at a fixed time with no watchers or timers.
Live, a watcher thread wakes on file changes in the home (events, or stat polling where
events do not cross machines) and asks the screen on top to refresh; screens fetch on
worker threads and coalesce bursts (see `base.LiveScreen`).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.command import DiscoveryHit, Hit, Hits, Matcher, Provider
from textual.content import Content
from textual.screen import Screen

from analyzer.fmt import safe_text
from spool import ChangeWaiter, Home, layout
from tuiflow.app.modals import ConfirmScreen, HelpScreen
from tuiflow.app.overview import OverviewScreen
from tuiflow.app.screen import MIN_INTERVAL, LiveScreen
from tuiflow.app.task import TaskScreen
from tuiflow.app.workflow import WorkflowScreen
from tuiflow.engine.client import Client
from tuiflow.engine.store import WorkflowStore

TICK = 2.0  # seconds between refreshes when nothing changes (ages, ETAs move)


class WorkflowCommands(Provider):
    """Command palette: open, cancel or retry any workflow by id or name."""

    async def _items(self) -> list[tuple[str, str, Callable[[], None]]]:
        app: TuiflowApp = self.app  # type: ignore[assignment]
        summaries = await asyncio.to_thread(app.store.summaries)
        items = []
        for s in summaries:
            wf, name, state = s["id"], s.get("name", ""), s.get("state", "")
            # the titles are drawn as plain text (`_plain`): these are other users' words
            name, state = safe_text(name), safe_text(state)
            shown = safe_text(wf)
            items.append(
                (
                    f"Open workflow {shown} {name} ({state})",
                    "Show its tasks, DAG and trace",
                    partial(app.open_workflow, wf),
                )
            )
            if state in ("pending", "running"):
                items.append(
                    (f"Cancel workflow {shown} {name}", "Asks to confirm", partial(app.confirm_cancel, wf))
                )
            if state in ("failed", "cancelled"):
                items.append(
                    (
                        f"Retry failed tasks of {shown} {name}",
                        "Asks to confirm",
                        partial(app.confirm_retry, wf),
                    )
                )
        screen = app.screen
        if isinstance(screen, WorkflowScreen):
            for tab, label in (
                ("tasks", "Tasks"),
                ("dag", "DAG"),
                ("critical", "Critical path"),
                ("queuing", "Queuing"),
                ("breakdown", "Compute/network breakdown"),
                ("timeline", "Timeline"),
                ("lineage", "Lineage"),
            ):
                items.append(
                    (
                        f"Show {label} of {safe_text(screen.wf_id)}",
                        "Switch tab",
                        partial(screen.action_tab, tab),
                    )
                )
        items.append(("Go to the overview", "All workflows, workers and queues", app.action_overview))
        items.append(("Show keys", "Every binding, with its id", app.action_help))
        return items

    async def discover(self) -> Hits:
        for title, help_, command in await self._items():
            yield DiscoveryHit(Content(title), command, text=title, help=help_)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_, command in await self._items():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, _plain_highlight(matcher, title), command, text=title, help=help_)


def _plain_highlight(matcher: Matcher, title: str) -> Content:
    """`matcher.highlight(title)` without reading `title` as markup (a workflow's name is
    any text: ``[b]`` in it is two brackets and a letter)."""
    content = Content(title)
    score, offsets = matcher.fuzzy_search.match(matcher.query, title)
    if score:
        for offset in offsets:
            if not title[offset].isspace():
                content = content.stylize(matcher.match_style, offset, offset + 1)
    return content


class TuiflowApp(App):
    CSS_PATH = "tuiflow.tcss"
    TITLE = "tuiflow"
    COMMANDS: ClassVar[set] = App.COMMANDS | {WorkflowCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("r", "refresh", "Refresh", id="app.refresh"),
        Binding("O", "overview", "Overview", show=False, id="app.overview"),  # `o` sorts tasks
    ]

    def __init__(
        self,
        home: Home,
        *,
        clock: Callable[[], float] = time.time,
        live: bool = True,
        keymap: dict[str, str] | None = None,
        initial_workflow: str | None = None,
        initial_tab: str = "tasks",
        home_label: str | None = None,
    ):
        super().__init__()
        self.home = home
        #: how the home is shown (tests pass a fixed label: tmp paths differ per run)
        self.home_label = home_label or home.root
        self.store = WorkflowStore(home)
        self.clock = clock
        self.live = live
        self.initial_workflow = initial_workflow
        self.initial_tab = initial_tab
        self._keymap = keymap if keymap is not None else load_keymap()
        self._stop_watch = threading.Event()
        self._focus_dir: str | None = None
        #: directories of the workflows still running (set by the overview), watched while
        #: no workflow is open
        self.active_dirs: tuple[str, ...] = ()

    # ------------------------------------------------------------- lifecycle
    def on_mount(self) -> None:
        self.title = "tuiflow"
        self.sub_title = safe_text(self.home_label)
        if self._keymap:
            self.set_keymap(self._keymap)
        self.push_screen(OverviewScreen())
        if self.initial_workflow:
            self.open_workflow(self.initial_workflow, self.initial_tab)
        if self.live:
            self.watch_home()
            self.set_interval(TICK, self._tick)

    def on_unmount(self) -> None:
        self._stop_watch.set()

    def _tick(self) -> None:
        if isinstance(self.screen, LiveScreen):
            self.screen.request_refresh()

    def files_changed(self) -> None:
        if isinstance(self.screen, LiveScreen):
            self.screen.request_refresh()

    def _watch_paths(self) -> list[str]:
        h = self.home
        paths = [h.workflows_dir, h.workers_dir, h.coordinator_dir, f"{h.completions_dir}/{layout.READY_DIR}"]
        for q in h.list_queues():
            ready = f"{h.queues_dir}/{q}/{layout.READY_DIR}"
            paths.extend(f"{ready}/{d}" for d in _listdir(ready))
        if self._focus_dir:
            paths.append(self._focus_dir)
        else:
            paths.extend(self.active_dirs)  # the overview's progress bars move with their summaries
        return [p for p in paths if os.path.isdir(p)]

    @work(thread=True, exclusive=True, group="watch")
    def watch_home(self) -> None:
        """Wake the screen on top when files in the home change (the set of watched
        directories follows the workflow shown)."""
        while not self._stop_watch.is_set():
            paths = self._watch_paths()
            focus = (self._focus_dir, self.active_dirs)
            try:
                waiter = ChangeWaiter(
                    paths, mode=self.home.settings.watch, poll_interval=self.home.settings.poll_interval
                )
            except (FileNotFoundError, ValueError):
                self._stop_watch.wait(1.0)
                continue
            try:
                deadline = time.monotonic() + 10
                while (
                    not self._stop_watch.is_set()
                    and focus == (self._focus_dir, self.active_dirs)
                    and time.monotonic() < deadline
                ):
                    if waiter.wait(0.5):
                        self.call_from_thread(self.files_changed)
                        # A busy home changes thousands of times a second and the screen
                        # refreshes at most every MIN_INTERVAL: what changes meanwhile
                        # stays pending in the waiter and wakes the next wait at once.
                        self._stop_watch.wait(MIN_INTERVAL / 2)
            finally:
                waiter.close()

    # -------------------------------------------------------------- navigation
    def open_workflow(self, wf_id: str, tab: str = "tasks") -> None:
        self._focus_dir = self.store.dir(wf_id)
        self.push_screen(WorkflowScreen(wf_id, tab))

    def open_task(self, wf_id: str, task: str, tab: str = "logs") -> None:
        self.push_screen(TaskScreen(wf_id, task, tab))

    def action_overview(self) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()
        self._focus_dir = None

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_refresh(self) -> None:
        if isinstance(self.screen, LiveScreen):
            self.screen.request_refresh()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Show keys", "Every key binding, with its id", self.action_help)
        yield SystemCommand("Refresh", "Read the home again now", self.action_refresh)

    # ---------------------------------------------------------------- actions
    def confirm_cancel(self, wf_id: str) -> None:
        shown = safe_text(wf_id)

        def done(yes: bool | None) -> None:
            if yes:
                self._request(
                    lambda: Client(self.home, who="dashboard").cancel(wf_id), f"cancel requested for {shown}"
                )

        self.push_screen(
            ConfirmScreen(
                f"Cancel workflow {shown}?", "Queued tasks are cancelled; running ones are killed."
            ),
            done,
        )

    def confirm_retry(self, wf_id: str) -> None:
        shown = safe_text(wf_id)

        def done(yes: bool | None) -> None:
            if yes:
                self._request(
                    lambda: Client(self.home, who="dashboard").retry(wf_id), f"retry requested for {shown}"
                )

        self.push_screen(
            ConfirmScreen(
                f"Retry the failed tasks of {shown}?",
                "Failed, upstream_failed and cancelled tasks run again.",
            ),
            done,
        )

    def _request(self, action: Callable[[], Any], message: str) -> None:
        try:
            action()
        except Exception as e:  # a refused request is shown, never a crash
            self.notify(safe_text(str(e)), severity="error", timeout=8, markup=False)
            return
        self.notify(message, timeout=4, markup=False)
        self.action_refresh()


def _listdir(path: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(path) if not n.startswith("."))
    except OSError:
        return []


def load_keymap() -> dict[str, str]:
    """User key bindings by binding id, from $TUIFLOW_KEYMAP or ~/.config/tuiflow/keymap.json."""
    path = os.environ.get("TUIFLOW_KEYMAP") or os.path.expanduser("~/.config/tuiflow/keymap.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: keymap {path}: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise SystemExit(
            f'error: keymap {path} must map binding ids to keys, e.g. {{"workflow.cancel": "x"}}'
        )
    from tuiflow.app.modals import binding_rows

    known = {bid for *_, bid in binding_rows(TuiflowApp, {}) if bid}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SystemExit(
            f"error: keymap {path}: unknown binding id{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (the ids are listed by the dashboard's help, key ?)"
        )
    return data


def run_dashboard(home: Home, initial_workflow: str | None = None) -> int:
    TuiflowApp(home, initial_workflow=initial_workflow).run()
    return 0
