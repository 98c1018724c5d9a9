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
  chain's next task needs this one's completion) and they go at once;
* while tasks of a bundle this worker claimed still wait here to start, final events wait
  up to BACKLOG_FLUSH_DELAY: those tasks end one after another, and on NFS a task takes
  tens of milliseconds while each message costs the worker and the coordinator some 17
  round trips (put, claim, read, ack). The tasks were bundled because they became ready
  together; what waits for one of them alone waits at most that long more.

A claimed message is acked only after the final events of all its tasks are published: a
worker killed in between leaves the message claimed, the coordinator sees the heartbeat
stop and queues the tasks again, and applies the events it did get only once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

from spool import SpoolQueue, StorageError
from workers.claims import Claim
from workers.wire import Event, EventKind, EventMessage, FailKind

log = logging.getLogger("workers.worker")  # the daemon's log, whichever part speaks

#: seconds a flush holding only "started" events waits for a final event to join it
STARTED_DELAY = 0.05
#: seconds final events wait to share a message while other attempts still run
FLUSH_DELAY = 0.01
#: seconds final events wait to share a message while tasks of a claimed bundle wait here
BACKLOG_FLUSH_DELAY = 0.1
#: events that make a batch go at once
FLUSH_MAX = 64
#: seconds before the first retry of a write that failed (a full disk), doubling up to RETRY_MAX
RETRY_FIRST = 0.1
RETRY_MAX = 5.0


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
        self._stalled_since: float | None = None  # monotonic time of the first failed write
        self._retry_at = 0.0
        self._delay = RETRY_FIRST
        self._batch_len = 0

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
        """How long (seconds) the loop may wait before a flush may be due (a retry, when
        `stalled`); None: nothing waits."""
        if self.stalled:
            return max(0.0, self._retry_at - time.monotonic())
        if not self.events:
            return None
        return FLUSH_DELAY if self._finals else STARTED_DELAY

    def flush(
        self, *, running: bool, backlog: bool = False, force: bool = False, now: float | None = None
    ) -> bool:
        """Publish the queued events as one message if the policy says so (or `force`), then
        ack the messages they settle. `running`: whether attempts still run here; `backlog`:
        whether claimed tasks wait here to start; `now`: wall-clock seconds (default: the
        time). Returns True if it published.

        A write that fails (`StorageError`: a full disk, a read-only or failing file
        system) loses nothing and raises nothing: the events and acks stay queued, in
        order, and are tried again after a backoff (`wait_bound`; `force` tries at once),
        logged once when it starts and once when it ends (`stalled`).
        """
        if self.stalled and not force and time.monotonic() < self._retry_at:
            return False
        if not self.events:
            self._ack()  # tasks of a bundle that were dropped or given back
            return False
        if not force:
            age = (time.time() if now is None else now) - self.events[0].at
            if not self._finals and age < STARTED_DELAY:
                return False
            hold = BACKLOG_FLUSH_DELAY if backlog else FLUSH_DELAY if running else 0.0
            if age < hold and len(self.events) < FLUSH_MAX:
                return False
        events = self.events
        # A task that started and ended within one flush needs no separate "started".
        ended = {e.key for e in events if e.kind is not EventKind.STARTED}
        sending = [e for e in events if e.kind is not EventKind.STARTED or e.key not in ended]
        for batch in self._messages(sending):
            try:
                self.completions.put_encoded(batch)
            except StorageError as e:
                # What went before this batch is out; the rest waits (retried from the first
                # unsent event: a "started" dropped above is not needed any more).
                self.events = sending
                self._finals = sum(ev.kind is not EventKind.STARTED for ev in sending)
                self._stall(e)
                return False
            del sending[: self._batch_len]
        self.events = []
        self._finals = 0
        self._ack()
        if self.published is not None:
            self.published()
        return True

    def _messages(self, events: list[Event]) -> Iterator[bytes]:
        """The encoded messages that carry `events`: one, or, where they cannot go together
        (too large for the queue's limit, or one that msgpack cannot encode), one per event,
        an event that cannot go even alone being replaced by the failure of its attempt. So
        no event can keep the others from being published. Sets `_batch_len` to how many
        events the message yielded last carries."""
        try:
            data = self._encode(events)
        except (TypeError, ValueError) as e:  # MessageTooLargeError is a ValueError
            log.warning(
                "worker %s: %d events cannot go in one message (%s): sending them one by one",
                self.worker,
                len(events),
                e,
            )
        else:
            self._batch_len = len(events)
            yield data
            return
        for event in list(events):
            try:
                data = self._encode([event])
            except (TypeError, ValueError) as e:
                log.error(
                    "worker %s: the event of attempt %s cannot be published (%s): reported as failed",
                    self.worker,
                    event.key,
                    e,
                )
                data = self._encode([unpublishable(event, e)])
            self._batch_len = 1
            yield data

    def _encode(self, events: list[Event]) -> bytes:
        # sent_at lets the coordinator place the events' times on its own clock: it takes
        # only differences of this host's clock (sent_at - at), never the times themselves.
        message = EventMessage(self.worker, sent_at=time.time(), events=tuple(e.to_wire() for e in events))
        return self.completions.encode(message.to_wire())

    @property
    def stalled(self) -> bool:
        """Whether the last try to publish or ack failed (a retry waits for `wait_bound`)."""
        return self._stalled_since is not None

    def _stall(self, e: OSError | StorageError) -> None:
        """Note a failed write: retry after a backoff (doubling up to RETRY_MAX); log once."""
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
            self._delay = RETRY_FIRST
            log.warning(
                "worker %s cannot write to the home (%s); keeping %d event(s) and %d ack(s), "
                "retrying until it can",
                self.worker,
                e,
                len(self.events),
                len(self.acks),
            )
        else:
            self._delay = min(self._delay * 2, RETRY_MAX)
        self._retry_at = now + self._delay

    def _ack(self) -> bool:
        """Ack the settled messages, in order; on a failure keep the rest (`_stall`).
        True if none is left."""
        while self.acks:
            claim = self.acks[0]
            try:
                # RACE: False when the coordinator already reaped it (it judged this worker dead
                # while it was paused): it queued the tasks again and applies these events once.
                claim.q.ack(claim.msg)
            except OSError as e:  # unlink failing: an I/O error, a read-only remount
                self._stall(e)
                return False
            self.acks.pop(0)
        if self._stalled_since is not None:
            log.warning(
                "worker %s writes to the home again after %.1f s; nothing was lost",
                self.worker,
                time.monotonic() - self._stalled_since,
            )
            self._stalled_since = None
        return True


def unpublishable(event: Event, e: Exception) -> Event:
    """The failure that reports `event`'s attempt when `event` itself cannot be published."""
    return dataclasses.replace(
        event,
        kind=EventKind.FAILED,
        output=None,
        output_ref=None,
        error=f"the worker could not publish this attempt's outcome: {str(e)[:500]}",
        reason=FailKind.ERROR,
        exit_code=None,
    )
