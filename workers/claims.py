"""What a worker claims: the queues it serves, taken in turn, and the messages it holds.

A claimed message stays in the queue's ``claimed/<worker>/`` until the worker acks it,
which it does only once the final event of every task in it is published (`Outbox`): a
worker killed at any point before leaves the message to the coordinator, which sees the
heartbeat stop and queues the tasks again. A bundle message (`wire.Bundle`) holds several
tasks; a `Claim` counts how many of them are still with this worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from spool import Home, Message, SpoolQueue


@dataclasses.dataclass(slots=True, eq=False)
class Claim:
    """A claimed message of queue `q`, and how many of its tasks are still with this worker
    (1 for a task message; a bundle's live members). It is acked when that reaches 0."""

    msg: Message
    q: SpoolQueue
    left: int = 1

    def let_go_of_one(self) -> bool:
        """One of its tasks is done with here (its final event queued, given back, or
        dropped): True once none is left, when the message may be acked."""
        self.left -= 1
        return self.left == 0


class WorkerQueues:
    """The queues one worker serves (`names`, duplicates dropped, default ``default``),
    claimed from in turn so that a busy queue does not starve the others."""

    def __init__(self, home: Home, names: Iterable[str]):
        self.names = list(dict.fromkeys(names)) or ["default"]
        self.by_name = {name: home.queue(name) for name in self.names}
        self._cycle = 0

    def claim(self, worker: str, n: int) -> tuple[SpoolQueue, list[Message]] | None:
        """Up to `n` messages from the first queue, in turn, that has any; None if none has.
        Each claim that finds messages moves the starting queue on by one."""
        names = self.names
        for k in range(len(names)):
            q = self.by_name[names[(self._cycle + k) % len(names)]]
            msgs = q.claim(worker, n)
            if msgs:
                self._cycle += 1
                return q, msgs
        return None

    def empty(self) -> bool:
        """Nothing ready and nothing delayed in any of them (burst mode's end)."""
        for q in self.by_name.values():
            counts = q.counts()
            if counts.ready or counts.delayed:
                return False
        return True

    def next_due_in(self) -> float | None:
        """Seconds until the first delayed message (a retry waiting out its backoff) is due."""
        due = [d for q in self.by_name.values() if (d := q.next_due_in()) is not None]
        return min(due) if due else None

    def watch_paths(self) -> list[str]:
        return [path for q in self.by_name.values() for path in q.watch_paths()]

    def let_go(self, worker: str) -> bool:
        """At a clean exit: True if `worker` holds no message in any of them (and its claim
        directories are removed); False as soon as one still holds something."""
        for q in self.by_name.values():
            if q.holds_any(worker):
                return False
            q.forget_claimant(worker)
        return True
