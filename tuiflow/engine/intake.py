"""What comes in: control requests (submit, cancel, retry) and workers' events, applied
to the run states in memory. Malformed ones are logged and skipped; nothing here writes
a state (the coordinator's group commit does), only the cancel marker workers watch."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from spool import layout
from tuiflow.engine.loaded import Loaded, LoadedRuns
from tuiflow.engine.markers import Markers
from tuiflow.engine.runstate import WF_PENDING, Action, NotRetryable, RunState
from workers.errors import WireError
from workers.wire import ControlOp, ControlRequest, Event, EventKind, EventMessage, FailKind

log = logging.getLogger("tuiflow.engine.coordinator")


class Intake:
    """Applies control requests and event messages to `runs`.

    Parameters:
        apply: carries out the actions an application returns (the coordinator's).
        guard: isolates what happens to one workflow (`isolation.Isolation.guard`).
        start: admits a workflow (the coordinator's).
    """

    def __init__(
        self,
        runs: LoadedRuns,
        markers: Markers,
        apply: Callable[[str, Loaded, list[Action], float], None],
        guard: Callable[[str], contextlib.AbstractContextManager[None]],
        start: Callable[[str, Loaded], None],
    ):
        self.runs = runs
        self.markers = markers
        self.apply = apply
        self.guard = guard
        self.start = start
        self.events_applied = 0
        self.completions = 0
        self.duplicates = 0

    def control(self, payload: Any, now: float) -> set[str]:
        """Apply a control request; returns the workflows it touched."""
        try:
            req = ControlRequest.from_wire(payload)
        except WireError as e:
            log.warning("ignoring a malformed control request: %s", e)
            return set()
        loaded = self.runs.get(req.wf)
        if loaded is None:
            return set()
        with self.guard(req.wf):
            self._control(req, loaded, now)
        return {req.wf}

    def _control(self, req: ControlRequest, loaded: Loaded, now: float) -> None:
        run = loaded.run
        if req.op is ControlOp.SUBMIT:
            if run.state == WF_PENDING:
                self.runs.wait_for_admission(req.wf)
            self.runs.admit(self.start)
        elif run.seen_request(req.request):
            return  # a redelivered cancel or retry changes nothing
        elif req.op is ControlOp.CANCEL:
            self.markers.cancelled(req.wf)  # workers stop its running tasks
            self.runs.withdraw(req.wf)
            self.apply(req.wf, loaded, run.cancel(now), now)
            loaded.dirty = True
        else:
            try:
                actions = run.retry(req.tasks, now)
            except NotRetryable as e:
                log.error("retry of %s refused: %s", req.wf, e)
                return
            self.markers.not_cancelled(req.wf)
            self.apply(req.wf, loaded, actions, now)
            loaded.dirty = True

    def events(self, payload: Any, now: float) -> set[str]:
        """Apply a worker's message of events; returns the workflows it touched.

        The worker's times are moved onto our clock by how long before sending (on its own
        clock) each thing happened: only differences of one host's clock are used, so a
        worker whose clock is minutes off still reports true durations. What is ignored is
        the time the message took to reach us (milliseconds, unless we were down)."""
        try:
            message = EventMessage.from_wire(payload)
        except WireError as e:
            log.warning("ignoring a malformed completion message: %s", e)
            return set()
        shift = now - message.sent_at if message.sent_at else 0.0
        touched = set()
        for raw in message.events:
            try:
                ev = Event.from_wire(raw)
            except WireError as e:
                log.warning("ignoring a malformed event from %s: %s", message.worker, e)
                continue
            if ev.output_ref is not None and not layout.stays_inside(ev.output_ref[0]):
                log.warning(
                    "ignoring an event from %s whose output path leaves the home: %s", message.worker, ev
                )
                continue
            loaded = self.runs.get(ev.key.wf)
            if loaded is None:
                continue
            at = min(now, ev.at + shift) if shift else now
            started_at = min(at, ev.started_at + shift) if ev.started_at else None
            before = loaded.run.stats["duplicates_ignored"]
            self.events_applied += 1
            touched.add(ev.key.wf)
            with self.guard(ev.key.wf):
                actions = _apply_event(loaded.run, ev, message.worker, at, started_at)
                if ev.kind is EventKind.COMPLETED:
                    self.completions += 1
                self.duplicates += loaded.run.stats["duplicates_ignored"] - before
                loaded.dirty = True
                self.apply(ev.key.wf, loaded, actions, at)
        return touched


def _apply_event(run: RunState, ev: Event, worker: str, at: float, started_at: float | None) -> list[Action]:
    """Apply one worker event to `run` (times on the coordinator's wall clock)."""
    k = ev.key
    if ev.kind is EventKind.STARTED:
        return run.on_started(k.idx, k.attempt, worker, at)
    if ev.kind is EventKind.COMPLETED:
        return run.on_completed(
            k.idx, k.attempt, worker, at, output=ev.output, output_ref=ev.output_ref, started_at=started_at
        )
    return run.on_failed(
        k.idx,
        k.attempt,
        worker,
        at,
        error=ev.error or "failed",
        kind=ev.reason or FailKind.ERROR,
        exit_code=ev.exit_code,
        started_at=started_at,
    )
