"""The run states a coordinator keeps in memory, and the order workflows are admitted in.

A workflow's `RunState` is loaded on first use (an event, a request, a sweep that finds it
unfinished) and kept while anything may change it; every change marks it dirty, and the
group commit writes each dirty state once (a CAS write, fenced by the lease). A state that
was written terminal with nothing running is dropped: nothing changes it until a retry
request, which loads it again. `max_running` admits workflows in FIFO order.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

from spool import ConflictError, DeposedError, LockLostError, LockTimeout, SpoolError, StorageError
from tuiflow.engine.runstate import RUNNING, WF_PENDING, WF_TERMINAL, RunState
from tuiflow.engine.store import WorkflowStore, is_terminal

log = logging.getLogger("tuiflow.engine.coordinator")

#: failures of the file system that pass: what they hit is tried again later
TRANSIENT = (StorageError, LockTimeout, LockLostError, ConflictError)


@dataclasses.dataclass
class Loaded:
    """A run state in memory: `version` is the record's version it was read or written at."""

    run: RunState
    version: int
    dirty: bool = False


class LoadedRuns:
    """The coordinator's run states, by workflow id.

    Parameters:
        max_running: admission control: at most this many workflows run at once (None: no limit).
    """

    def __init__(self, store: WorkflowStore, max_running: int | None = None):
        self.store = store
        self.max_running = max_running
        self._loaded: dict[str, Loaded] = {}
        self._waiting: collections.deque[str] = collections.deque()  # admission FIFO
        self._broken: set[str] = set()
        self.conflicts = 0

    def get(self, wf_id: str) -> Loaded | None:
        """The workflow's state, loaded on first use; None if it cannot be (logged), or if
        it is marked broken (the coordinator gave up on it)."""
        loaded = self._loaded.get(wf_id)
        if loaded is None:
            if wf_id in self._broken or self.store.broken(wf_id) is not None:
                if wf_id not in self._broken:
                    log.warning("leaving workflow %s alone: it is marked broken", wf_id)
                    self._broken.add(wf_id)
                return None
            try:
                run, version = self.store.load_run(wf_id)
            except SpoolError as e:
                log.error("cannot load workflow %s: %s", wf_id, e)
                return None
            except Exception as e:  # NotFound: a request for a purged workflow
                log.warning("ignoring workflow %s: %s", wf_id, e)
                return None
            loaded = self._loaded[wf_id] = Loaded(run, version)
        return loaded

    def peek(self, wf_id: str) -> Loaded | None:
        """The workflow's state if it is in memory (never loads it)."""
        return self._loaded.get(wf_id)

    def __contains__(self, wf_id: str) -> bool:
        return wf_id in self._loaded

    def items(self) -> Iterator[tuple[str, Loaded]]:
        """(workflow id, state) of every state in memory (a copy: safe to change it meanwhile)."""
        return iter(list(self._loaded.items()))

    def wait_for_admission(self, wf_id: str) -> None:
        if wf_id not in self._waiting:
            self._waiting.append(wf_id)

    def withdraw(self, wf_id: str) -> None:
        """Take a workflow out of the admission FIFO (it was cancelled while it waited)."""
        with contextlib.suppress(ValueError):
            self._waiting.remove(wf_id)

    def adopt_unfinished(self, start: Callable[[str, Loaded], None]) -> None:
        """Load every workflow the store lists as unfinished (a restart; a submit request
        that never arrived), oldest first, then admit (`admit`) what may start."""
        for summary in sorted(self.store.summaries(), key=lambda s: s.get("created_at", 0)):
            wf_id = summary.get("id")
            if wf_id is None or wf_id in self._loaded or is_terminal(summary):
                continue
            loaded = self.get(wf_id)
            if loaded is not None and loaded.run.state == WF_PENDING:
                self.wait_for_admission(wf_id)
        self.admit(start)

    def admit(self, start: Callable[[str, Loaded], None]) -> None:
        """Start (`start(wf_id, loaded)`) waiting workflows while the limit allows."""
        while self._waiting and (self.max_running is None or self._running() < self.max_running):
            wf_id = self._waiting.popleft()
            loaded = self.get(wf_id)
            if loaded is not None and loaded.run.state == WF_PENDING:
                start(wf_id, loaded)

    def _running(self) -> int:
        return sum(
            1 for x in self._loaded.values() if x.run.state not in WF_TERMINAL and x.run.state != WF_PENDING
        )

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def write_dirty(
        self, fence: Callable[[], None], unwritable: Callable[[str, Exception], None]
    ) -> set[str]:
        """Write every dirty state once (`fence` checked right before each rename); returns
        the workflows whose write failed: they are dropped, to be loaded again (what was
        applied to them must be applied again: the caller gives back those messages). A
        state that cannot be written at all (it does not encode) goes to `unwritable`."""
        failed = set()
        for wf_id, loaded in list(self._loaded.items()):
            if not loaded.dirty:
                continue
            try:
                loaded.version = self.store.write_run(loaded.run, loaded.version, fence=fence)
                loaded.dirty = False
            except ConflictError:
                # Someone else wrote this state (an operator tool, or a deposed coordinator's
                # last gasp). Reload and let the released messages be applied again.
                self.conflicts += 1
                log.warning("state of %s changed under us; reloading it", wf_id)
                self._loaded.pop(wf_id, None)
                failed.add(wf_id)
                continue
            except DeposedError:
                raise
            except TRANSIENT as e:
                log.error("cannot write state of %s: %s (will retry)", wf_id, e)
                self._loaded.pop(wf_id, None)
                failed.add(wf_id)
                continue
            except Exception as e:  # a value the record cannot hold: this workflow cannot go on
                self._loaded.pop(wf_id, None)
                unwritable(wf_id, e)
                continue
            if loaded.run.terminal and not loaded.run.counts[RUNNING]:
                self._loaded.pop(wf_id, None)  # finished: nothing will change it until a retry
        return failed

    def forget_all(self) -> None:
        """Forget every state in memory (they are loaded again from disk on use); what is
        marked broken stays so."""
        self._loaded.clear()
        self._waiting.clear()

    def drop(self, wf_id: str) -> None:
        """Forget a workflow's state (it is broken: never loaded again)."""
        self._loaded.pop(wf_id, None)
        self._broken.add(wf_id)

    def __len__(self) -> int:
        return len(self._loaded)
