"""Runs a worker's attempts through their executors, one path for every executor.

An attempt goes through steps, each of which either ends it (an `Outcome`) or leaves it
running: *begin* (`AttemptSetup.prepare`, then the executor's `start` or `run`), then, for
an inline executor, *finish* (its `fileno` became readable) or *stop* (past its deadline,
or told to stop). Where a step runs is the executor's declared kind
(`Executor.inline`): an inline executor's begin and finish run on the worker's loop
(a short task costs no thread hand-off), its stop on a slot thread (stopping waits out a
grace period); every other executor's begin, a whole `run`, on a slot thread. Whatever ended
it, the same `_step` concludes the attempt (`AttemptSetup.conclude` and `end_span`), a link
or a planted file met anywhere on the way (`UnsafePathError`) ends it with reason ``setup``,
a home that takes no more files (full, over quota, read-only) with reason ``storage`` (the
coordinator runs it again, spending no retry), and a bug anywhere on the way still ends it,
reported as a worker error. Ended attempts wait in
`finished` for the loop, which a slot thread wakes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import select
import time
from collections.abc import Callable, Sequence
from typing import cast

from workers.attempt import Attempt, AttemptSetup, home_unwritable, is_home_unwritable, refused, worker_error
from workers.errors import UnsafePathError
from workers.executors import EXECUTORS, Executor, InlineExecutor, Outcome, TaskContext
from workers.wire import AttemptKey, FailKind, TaskMessage

log = logging.getLogger("workers.worker")  # the daemon's log, whichever part speaks


class AttemptRunner:
    """Starts, follows and concludes attempts (see the module docstring).

    Parameters:
        setup: prepares and concludes each attempt.
        slots: how many slots (one thread and one executor of each name per slot).
        wake: called (from a slot thread) when an attempt ended there.
        name: prefix of the slot threads' names.
    """

    def __init__(self, setup: AttemptSetup, slots: int, wake: Callable[[], None], name: str = "worker"):
        self.setup = setup
        self.wake = wake
        self.name = name
        #: attempts that run here, until the loop takes them from `finished`
        self.running: dict[AttemptKey, Attempt] = {}
        #: inline attempts the loop follows, by their executor's descriptor
        self.inline: dict[int, Attempt] = {}
        # appended to by slot threads and the loop, taken from by the loop (deque: atomic)
        self._finished: collections.deque[tuple[Attempt, Outcome]] = collections.deque()
        #: each slot's executors (a warm python process, a model host, ...)
        self.executors = SlotExecutors(slots, name)
        # One thread per slot, reused: an attempt's supervision waits on its process, not the loop.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=slots, thread_name_prefix=f"{name}-slot"
        )

    def launch(self, a: Attempt) -> None:
        """Start attempt `a` in its slot (it runs until it shows up in `finished`)."""
        self.running[a.key] = a
        a.executor = ex = self.executors.get(a.slot, a.task.executor)
        if ex is not None and ex.inline:
            self._step(a, False, self._begin, a)
        else:
            a.future = self.pool.submit(self._step, a, True, self._begin, a)

    def launch_batch(self, batch: list[Attempt]) -> None:
        """Start the attempts of a merged batch (one slot, one executor, tasks of one merge
        key) as one call of their executor, on a slot thread."""
        if len(batch) == 1:
            return self.launch(batch[0])
        ex = self.executors.get(batch[0].slot, batch[0].task.executor)
        for a in batch:
            self.running[a.key] = a
            a.executor = ex
        future = self.pool.submit(self._run_batch, batch)
        for a in batch:
            a.future = future

    def _run_batch(self, batch: list[Attempt]) -> None:
        """Prepare each attempt (one that cannot start ends alone), run the rest as one
        call, conclude each; they show up in `finished` together (the slot is free then)."""
        ended: list[tuple[Attempt, Outcome]] = []
        ready: list[Attempt] = []
        for a in batch:
            try:
                outcome = self.setup.prepare(a)
            except Exception as e:
                outcome = outcome_of_error(a, e)
            if outcome is None:
                ready.append(a)
            else:
                ended.append((a, self._conclude(a, outcome)))
        if ready:
            ex = cast(Executor, ready[0].executor)
            try:
                outcomes = ex.run_batch([cast(TaskContext, a.ctx) for a in ready])
            except Exception as e:  # a bug here must still end the attempts, reported
                outcomes = [outcome_of_error(a, e) for a in ready]
            ended += [(a, self._conclude(a, o)) for a, o in zip(ready, outcomes, strict=True)]
        self._finished.extend(ended)
        self.wake()

    def _begin(self, a: Attempt) -> Outcome | None:
        outcome = self.setup.prepare(a)
        if outcome is not None:
            return outcome
        ex = cast(Executor, a.executor)
        return cast(InlineExecutor, ex).start(a.ctx) if ex.inline else ex.run(a.ctx)

    def _step(self, a: Attempt, on_thread: bool, step: Callable[..., Outcome | None], *args: object) -> None:
        """Run one step of `a`; if it ended the attempt, conclude it and queue it in
        `finished`, else follow it on its executor's descriptor."""
        try:
            outcome = step(*args)
            if outcome is None:
                if on_thread:  # only an inline executor's start may leave it running
                    raise TypeError(f"executor {a.task.executor!r} returned no outcome")
                a.fd = cast(InlineExecutor, a.executor).fileno()
                self.inline[a.fd] = a
                return
        except Exception as e:
            outcome = outcome_of_error(a, e)
        self._finished.append((a, self._conclude(a, outcome)))
        if on_thread:
            self.wake()

    def _conclude(self, a: Attempt, outcome: Outcome) -> Outcome:
        """Conclude `a` (`AttemptSetup.conclude`) and write its spans; its final outcome."""
        try:
            outcome = self.setup.conclude(a, outcome)
        except Exception as e:
            outcome = outcome_of_error(a, e)
        self.setup.end_span(a, outcome)
        return outcome

    def supervise(self, readable: Sequence[int] | None = None) -> None:
        """Finish inline attempts that ended; stop those past their deadline or told to stop.
        `readable`: descriptors the loop's last wait found readable (None: look now)."""
        if not self.inline:
            return
        if readable is None:
            readable = select.select(list(self.inline), [], [], 0)[0]
        for fd in readable:
            a = self.inline.pop(fd, None)
            if a is not None:
                self._step(a, False, cast(InlineExecutor, a.executor).finish, a.ctx)
        if not self.inline:
            return
        now = time.monotonic()
        for a in list(self.inline.values()):
            deadline = a.ctx.deadline
            reason = FailKind.TIMEOUT if deadline is not None and now >= deadline else a.stop_reason
            if reason:
                # Stopping kills with a grace period: a slot thread does it, the loop goes on.
                del self.inline[a.fd]
                ex = cast(InlineExecutor, a.executor)
                a.future = self.pool.submit(self._step, a, True, ex.stop, a.ctx, reason)

    def finished(self) -> list[tuple[Attempt, Outcome]]:
        """The attempts that ended since the last call, with their outcomes; they no longer
        count as running."""
        done = []
        while self._finished:
            a, outcome = self._finished.popleft()
            self.running.pop(a.key, None)
            done.append((a, outcome))
        return done

    def next_deadline(self) -> float | None:
        """The earliest deadline (monotonic seconds) of the inline attempts."""
        deadlines = [a.ctx.deadline for a in self.inline.values() if a.ctx.deadline is not None]
        return min(deadlines) if deadlines else None

    def longest_run(self, now: float) -> float:
        """Seconds the longest-running attempt has run at wall-clock time `now`."""
        return max((now - a.started_at for a in self.running.values()), default=0.0)

    def stop_all(self, wait: float) -> None:
        """Stop every attempt (reason: worker stopped) and wait up to `wait` seconds for each
        to end; those that end show up in `finished`."""
        for a in self.running.values():
            a.stop_reason = FailKind.WORKER_STOPPED
        self.supervise()  # inline attempts go to slot threads to be stopped
        for a in list(self.running.values()):
            if a.future is not None:
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    a.future.result(timeout=wait)

    def close(self) -> None:
        """Close every executor, then wait for the slot threads."""
        self.executors.close()
        self.pool.shutdown(wait=True)
        self.setup.close()


class SlotExecutors:
    """Each slot's executors, one of each name, made at first use and kept for the worker's
    life (a warm python process, a model host and the models it holds)."""

    def __init__(self, slots: int, owner: str = "worker"):
        self.owner = owner
        self._by_slot: list[dict[str, Executor]] = [{} for _ in range(slots)]

    def get(self, slot: int, name: str) -> Executor | None:
        """Slot `slot`'s executor called `name` (made at first use); None if none is."""
        ex = self._by_slot[slot].get(name)
        if ex is None:
            cls = EXECUTORS.get(name)
            if cls is None:
                return None
            ex = self._by_slot[slot][name] = cls()
        return ex

    def warm(self, names: Sequence[str]) -> None:
        """Start each slot's executors of these names now, so the first task does not pay
        for an interpreter start and its imports (they start side by side, in the background)."""
        for slot in range(len(self._by_slot)):
            for name in names:
                ex = self.get(slot, name)
                try:
                    if ex is not None:
                        ex.warm()
                except OSError as e:  # the first task will try again, and report it
                    log.warning("worker %s: could not warm the %s executor: %s", self.owner, name, e)

    def slots_holding(self, task: TaskMessage) -> list[int]:
        """The slots whose executor of `task`'s kind holds what it needs (its model)."""
        return [
            slot
            for slot, executors in enumerate(self._by_slot)
            if (ex := executors.get(task.executor)) is not None and ex.holds(task.spec)
        ]

    def residency(self) -> dict[str, list[list[str]]]:
        """What each slot's model hosts hold, by slot (for the heartbeat: doctor and the
        dashboard show it); slots that hold nothing are left out."""
        held: dict[str, list[list[str]]] = {}
        for slot, executors in enumerate(self._by_slot):
            keys = [list(k) for ex in executors.values() for k in sorted(ex.loaded())]
            if keys:
                held[str(slot)] = keys
        return held

    def close(self) -> None:
        for executors in self._by_slot:
            for ex in executors.values():
                ex.close()


def outcome_of_error(a: Attempt, e: Exception) -> Outcome:
    """The outcome of an attempt that an exception on the way ended."""
    if isinstance(e, UnsafePathError):  # a link or a planted file in the attempt's directory
        return refused(a, e)
    if is_home_unwritable(e):
        return home_unwritable(a, e)
    return worker_error(a, e)  # a bug here must still end the attempt, reported
