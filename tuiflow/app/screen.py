"""What every live screen shares: fetch on a worker thread, draw on the UI thread.

A screen's `load(now)` runs on a thread (it reads files); `apply(data)` runs on the UI
thread and only draws. A refresh never overlaps another: a request that arrives while one
is running is remembered and runs after it, at most every `MIN_INTERVAL` seconds, so any
burst of file changes collapses into at most ten redraws a second. Only the screen on top
refreshes; screens underneath wait until they are shown again.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import work
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from analyzer.fmt import safe_text

MIN_INTERVAL = 0.1


class LiveScreen(Screen):
    """Subclasses define `load(now) -> data` (worker thread) and `apply(data)` (UI thread)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._fetching = False
        self._pending = False
        self._last_fetch = 0.0
        self.loaded = False
        self.last_apply_ms = 0.0

    def on_mount(self) -> None:
        self.request_refresh()

    def on_screen_resume(self) -> None:
        self.request_refresh()

    @property
    def on_top(self) -> bool:
        """Shown, or shown under a dialog. A screen under another one waits: it refreshes
        when it is shown again. (`Screen.is_current` also counts screens merely waiting
        under a newly pushed one.)"""
        stack = self.app.screen_stack
        if stack and stack[-1] is self:
            return True
        return len(stack) > 1 and stack[-2] is self and isinstance(stack[-1], ModalScreen)

    def request_refresh(self) -> None:
        if not self.is_attached or not self.on_top:
            return
        if self._fetching:
            self._pending = True
            return
        wait = MIN_INTERVAL - (time.monotonic() - self._last_fetch)
        if wait > 0 and self.loaded:
            self._fetching = True
            self.set_timer(wait, self._start_fetch)
            return
        self._fetching = True
        self._start_fetch()

    def _start_fetch(self) -> None:
        self._last_fetch = time.monotonic()
        self._fetch()

    # Not `exclusive`: `_done` runs before the worker thread has quite finished, so the
    # next fetch may start while the last one is winding down; cancelling it would lose
    # nothing but would make waiting on fetches (tests, benchmarks) fail spuriously.
    @work(thread=True, group="fetch")
    def _fetch(self) -> None:
        try:
            data: Any = self.load(self.app.clock())  # type: ignore[attr-defined]  # defined by subclasses
        except Exception as e:  # shown on the screen; the next refresh may succeed
            data = e
        self.app.call_from_thread(self._done, data)

    def _done(self, data: Any) -> None:
        if self._pruning or not self.is_attached:
            # Closed while its files were read (Escape, or the app quitting): its widgets
            # are gone or going, so there is nothing to draw on.
            self._fetching = self._pending = False
            return
        t0 = time.perf_counter()
        try:
            if isinstance(data, Exception):
                self.show_error(data)
            else:
                self.apply(data)  # type: ignore[attr-defined]
                self.loaded = True
        finally:
            self.last_apply_ms = (time.perf_counter() - t0) * 1000
            self._fetching = False
        if self._pending:
            self._pending = False
            self.request_refresh()

    def show_error(self, error: Exception) -> None:
        # the message may quote a name or a file's text: not markup, no control characters
        self.notify(safe_text(f"{type(error).__name__}: {error}"), severity="error", timeout=6, markup=False)


def set_text(widget: Static, text: Text) -> None:
    """Show `text` in `widget`, doing as little as possible: nothing when it is what is
    shown already, a repaint without a layout pass when its height is unchanged (a
    layout pass of a whole screen costs tens of milliseconds; a refresh does this often)."""
    previous: Text | None = getattr(widget, "_tuiflow_text", None)
    if previous is not None and previous == text:
        return
    same_height = previous is not None and previous.plain.count("\n") == text.plain.count("\n")
    widget._tuiflow_text = text  # type: ignore[attr-defined]
    widget.update(text, layout=not same_height)
