"""What a worker's loop sleeps on, and what wakes it.

* its queues (a `ChangeWaiter` on their ready directories: a message arrived);
* its wake pipe, poked by slot threads when an attempt ended there, by `Worker.stop` and
  by `Worker.wake` (run-local's coordinator in the same process, after pushing tasks);
* ``wake_fd``, a descriptor run-local's coordinator in another process pokes;
* the descriptors of the inline attempts it follows (readable: the attempt ended).

A wait records which descriptors it found readable, so the next round need not look at
each of them again; a round that did not wait (it claimed) looks once at all of them.
"""

from __future__ import annotations

import select
from collections.abc import Iterable

from spool import ChangeWaiter
from spool.watch import WakePipe, drain


class Wakeups:
    """The loop's sleeps and wake-ups (see the module docstring). `poke` is thread-safe and
    safe in a signal handler; the rest is for the loop alone."""

    def __init__(self, waiter: ChangeWaiter, wake_fd: int | None = None):
        self.waiter = waiter
        self.wake_fd = wake_fd
        self.pipe = WakePipe()
        self._readable: list[int] | None = None  # what the last wait found readable

    def poke(self) -> None:
        """Make the loop look around now."""
        self.pipe.poke()

    def fds(self, followed: Iterable[int]) -> list[int]:
        """Every descriptor the loop waits on besides the queues, `followed` included."""
        fds = [self.pipe.r, *followed]
        if self.wake_fd is not None:
            fds.append(self.wake_fd)
        return fds

    def readable(self, followed: Iterable[int]) -> list[int]:
        """What the last wait found readable (if the loop did not wait, or the wait could
        not tell, one look at them all now), with the wake-ups it found drained."""
        readable, self._readable = self._readable, None
        if readable is None:
            readable = select.select(self.fds(followed), [], [], 0)[0]
        if self.pipe.r in readable:
            self.pipe.drain()
        if self.wake_fd is not None and self.wake_fd in readable:
            drain(self.wake_fd)
        return readable

    def wait(self, timeout: float, followed: Iterable[int], *, queues: bool = True) -> None:
        """Sleep up to `timeout` seconds, until a descriptor is readable or (`queues`) a
        message arrives in a queue."""
        fds = self.fds(followed)
        if queues:
            self.waiter.wait(timeout, fds)
            self._readable = self.waiter.ready_fds
        else:
            self._readable = select.select(fds, [], [], timeout)[0]

    def close(self) -> None:
        self.waiter.close()
