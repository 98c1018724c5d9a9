"""One workflow's trouble never stops the coordinator, nor the other workflows it serves.

Anything but a passing failure of the file system (`loaded.TRANSIENT`) raised while the
coordinator applies an event, a request or a sweep to one workflow (a bug, a value the
engine cannot handle, a definition an older tuiflow let through) fails that workflow: every
task not yet ended fails with the reason, the reason is kept in its state (`RunState.error`,
shown by `tuiflow status`), its running tasks are stopped, and the coordinator goes on. A
workflow whose state cannot even be written (it does not encode) is marked broken
(`layout.broken_marker`, with the reason): the coordinator never loads it again, so a
restart does not crash on it again; `tuiflow purge` removes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from spool import DeposedError
from tuiflow.engine.loaded import TRANSIENT, Loaded, LoadedRuns
from tuiflow.engine.markers import Markers
from tuiflow.engine.runstate import Action

log = logging.getLogger("tuiflow.engine.coordinator")


class Isolation:
    """Fails (or marks broken) the workflow an error belongs to, instead of the coordinator.

    Parameters:
        apply: carries out the actions failing a workflow returns (the coordinator's).
        forget: drops what the coordinator was about to do for a workflow (its queued tasks).
        clock: wall clock (epoch s) for the failure's timestamps.
    """

    def __init__(
        self,
        runs: LoadedRuns,
        markers: Markers,
        apply: Callable[[str, Loaded, list[Action], float], None],
        forget: Callable[[str], None],
        clock: Callable[[], float],
    ):
        self.runs = runs
        self.markers = markers
        self.apply = apply
        self.forget = forget
        self.clock = clock
        self.failed = 0

    @contextlib.contextmanager
    def guard(self, wf_id: str) -> Iterator[None]:
        """Run the block for workflow `wf_id`; an error of its own fails it, not us."""
        try:
            yield
        except (DeposedError, *TRANSIENT):
            raise
        except Exception as e:
            log.exception("workflow %s: the coordinator could not apply it", wf_id)
            self.fail(wf_id, f"{type(e).__name__}: {e}")

    def fail(self, wf_id: str, error: str) -> None:
        """Fail workflow `wf_id` because of `error` (see the module docstring)."""
        self.failed += 1
        self.forget(wf_id)
        loaded = self.runs.peek(wf_id)
        reason = f"internal error, the workflow cannot go on: {error}"[:2000]
        if loaded is None:
            self.broken(wf_id, reason)
            return
        try:
            now = self.clock()
            actions = loaded.run.fail(reason, now)
            loaded.dirty = True
            self.markers.cancelled(wf_id)  # its workers stop what still runs
            self.apply(wf_id, loaded, actions, now)
        except (DeposedError, *TRANSIENT):
            raise
        except Exception as e:
            self.broken(wf_id, f"{reason}; failing it failed too: {type(e).__name__}: {e}")
        log.error("workflow %s failed: %s; the coordinator goes on with the others", wf_id, reason)

    def broken(self, wf_id: str, reason: str) -> None:
        """Give up on a workflow whose state cannot be written: mark it, forget it."""
        log.error("workflow %s is broken and left alone from now on: %s", wf_id, reason)
        self.forget(wf_id)
        self.runs.drop(wf_id)
        with contextlib.suppress(*TRANSIENT):
            self.markers.cancelled(wf_id)
        self.markers.broken(wf_id, reason)

    def unwritable(self, wf_id: str, error: Exception) -> None:
        """A state that does not encode: the workflow is broken."""
        self.broken(wf_id, f"its state cannot be written: {type(error).__name__}: {error}")
