"""A worker's outgoing events, and the acks that must wait for them.

Events (`wire.Event`: an attempt started, completed or failed) are published to the home's
completions queue, one message per flush (`wire.EventMessage`, stamped with the
worker's clock at sending, `sent_at`). The flush policy trades a few milliseconds for
fewer messages:

* a lone "started" waits up to STARTED_DELAY: a short task's final event then carries its
  start time, and the "started" is dropped (a task that started and ended within one flush
  needs no separate one);
* final events wait up to FLUSH_DELAY, or until FLUSH_MAX are queued, while other attempts
  still run here (to share a message); with nothing running, nobody gains from waiting (a
  chain's next task needs this one's completion) and they go at once.

A claimed message is acked only after the final events of all its tasks are published: a
worker killed in between leaves the message claimed, the coordinator sees the heartbeat
stop and queues the tasks again, and applies the events it did get only once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from spool import SpoolQueue
from workers.claims import Claim
from workers.wire import Event, EventKind, EventMessage

#: seconds a flush holding only "started" events waits for a final event to join it
STARTED_DELAY = 0.05
#: seconds final events wait to share a message while other attempts still run
FLUSH_DELAY = 0.01
#: events that make a batch go at once
FLUSH_MAX = 64


class Outbox:
    """Events waiting to be published, and claimed messages waiting to be acked after them.

    Parameters:
        completions: the home's completions queue.
        worker: this worker's id (named in every batch).
        on_event: called with every event as it is queued.
        published: called after each published batch (run-local wakes its coordinator).
    """

    def __init__(
        self,
        completions: SpoolQueue,
        worker: str,
        *,
        on_event: Callable[[Event], None] | None = None,
        published: Callable[[], None] | None = None,
    ):
        self.completions = completions
        self.worker = worker
        self.on_event = on_event
        self.published = published
        self.events: list[Event] = []
        #: claimed messages to ack once the events queued before them are published
        self.acks: list[Claim] = []
        self._finals = 0  # events in `events` that end an attempt

    @property
    def pending(self) -> bool:
        """Whether anything waits: an event to publish or a message to ack."""
        return bool(self.events or self.acks)

    def add(self, event: Event, settles: Claim | None = None) -> None:
        """Queue `event`; if it is the final event of a task of `settles`, settle that task."""
        self.events.append(event)
        if event.kind is not EventKind.STARTED:
            self._finals += 1
        if settles is not None:
            self.settle(settles)
        if self.on_event is not None:
            self.on_event(event)

    def settle(self, claim: Claim) -> None:
        """One task of `claim` is done with here (its final event, if it has one, already
        queued); the message is acked with the next flush once none is left."""
        if claim.let_go_of_one():
            self.acks.append(claim)

    def wait_bound(self) -> float | None:
        """How long (seconds) the loop may wait before a flush may be due; None: nothing waits."""
        if not self.events:
            return None
        return FLUSH_DELAY if self._finals else STARTED_DELAY

    def flush(self, *, running: bool, force: bool = False, now: float | None = None) -> bool:
        """Publish the queued events as one message if the policy says so (or `force`), then
        ack the messages they settle. `running`: whether attempts still run here; `now`:
        wall-clock seconds (default: the time). Returns True if it published.

        Raises:
            SpoolError: the batch could not be published (nothing is acked then).
        """
        if not self.events:
            self._ack()  # tasks of a bundle that were dropped or given back
            return False
        if not force:
            age = (time.time() if now is None else now) - self.events[0].at
            if not self._finals and age < STARTED_DELAY:
                return False
            if running and age < FLUSH_DELAY and len(self.events) < FLUSH_MAX:
                return False
        events = self.events
        # A task that started and ended within one flush needs no separate "started".
        ended = {e.key for e in events if e.kind is not EventKind.STARTED}
        wire_events = tuple(
            e.to_wire() for e in events if e.kind is not EventKind.STARTED or e.key not in ended
        )
        # sent_at lets the coordinator place the events' times on its own clock: it takes
        # only differences of this host's clock (sent_at - at), never the times themselves.
        self.completions.put(EventMessage(self.worker, sent_at=time.time(), events=wire_events).to_wire())
        self.events = []
        self._finals = 0
        self._ack()
        if self.published is not None:
            self.published()
        return True

    def _ack(self) -> None:
        for claim in self.acks:
            # RACE: False when the coordinator already reaped it (it judged this worker dead
            # while it was paused): it queued the tasks again and applies these events once.
            claim.q.ack(claim.msg)
        self.acks = []
