"""A worker's slots and GPUs, and the claimed tasks that wait for them.

* Slots are numbered 0..n-1; each keeps its own executors (a warm python process), so the
  number matters. A freed slot goes to the back of the line: the next task takes the slot
  free longest.
* GPUs (``--gpus 0,1,...``; None: the worker does not hand out GPUs) are handed out first
  free first, and go back in the order ``--gpus`` listed them, so a multi-GPU task gets a
  stable device order.
* Held: claimed task messages that found no free slot or not enough free GPUs, in claim
  order. While any is held, nothing new is claimed.
* Backlog: the unstarted tasks of claimed bundles, started in bundle order as slots (and
  GPUs) free up; tasks in a row that share a merge key start together as one merged batch
  (`next_bundled`). They go back to the queue, each as a message of its own, when a task
  of theirs runs long or the worker stops (`give_back`), so that other workers' slots can
  take them.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Hashable, Sequence

from spool import SpoolError
from workers.claims import Claim
from workers.wire import Bundle, TaskMessage

log = logging.getLogger("workers.worker")  # the daemon's log, whichever part speaks


class SlotPool:
    """Slots, GPUs, held task messages and the bundle backlog of one worker (see the module
    docstring). Not thread-safe: the worker's loop alone uses it."""

    def __init__(self, slots: int, gpus: Sequence[int] | None = None, owner: str = "worker"):
        self.size = slots
        self.gpus = list(gpus) if gpus is not None else None
        self.owner = owner
        self.free_slots = list(range(slots))
        self.free_gpus = list(gpus) if gpus is not None else []
        self._gpu_rank = {g: i for i, g in enumerate(gpus or [])}
        #: the GPUs each slot last ran with: its model host is bound to them, so it gets
        #: them again when they are free (a host given other GPUs must start afresh)
        self.bound: dict[int, tuple[int, ...]] = {}
        self.held: list[tuple[Claim, TaskMessage]] = []
        self.backlog: collections.deque[tuple[Claim, TaskMessage]] = collections.deque()

    @property
    def free(self) -> int:
        """How many slots are free."""
        return len(self.free_slots)

    @property
    def waiting(self) -> bool:
        """Whether claimed tasks wait here for a slot or GPUs (then nothing new is claimed)."""
        return bool(self.held or self.backlog)

    def fits(self, gpus: int) -> bool:
        """Whether a task needing `gpus` GPUs could ever run here."""
        return not gpus or self.gpus is None or gpus <= len(self.gpus)

    def take(self, gpus: int, prefer: Sequence[int] = ()) -> tuple[int, list[int]] | None:
        """A free slot and `gpus` free GPUs (none when the worker does not hand out GPUs),
        taken; None when there are not enough free now.

        Parameters:
            prefer: slots to use first when free (those whose model host holds the task's
                model); among them, and then among the others, a slot whose own GPUs are
                free comes first."""
        if not self.free_slots or (self.gpus is not None and gpus > len(self.free_gpus)):
            return None
        order = [s for s in prefer if s in self.free_slots]
        order += [s for s in self.free_slots if s not in order]
        slot, taken = order[0], []
        if self.gpus is not None and gpus:
            # a preferred slot given other GPUs would start its host afresh (losing its
            # model): a slot whose own GPUs are free goes first, preferred ones before
            own = [s for s in order if self._own_gpus_free(s, gpus)]
            slot = own[0] if own else order[0]
            taken = list(self.bound[slot]) if own else self.free_gpus[:gpus]
            self.free_gpus = [g for g in self.free_gpus if g not in taken]
            self.bound[slot] = tuple(taken)
        self.free_slots.remove(slot)
        return slot, taken

    def _own_gpus_free(self, slot: int, gpus: int) -> bool:
        own = self.bound.get(slot)
        return own is not None and len(own) == gpus and all(g in self.free_gpus for g in own)

    def release(self, slot: int, gpus: Sequence[int]) -> None:
        """Give back what `take` gave."""
        self.free_slots.append(slot)
        if gpus:
            self.free_gpus = sorted(self.free_gpus + list(gpus), key=self._gpu_rank.__getitem__)

    def hold(self, claim: Claim, task: TaskMessage) -> None:
        """Keep a claimed task that cannot start yet, after those already held."""
        self.held.append((claim, task))

    def retry_held(self, start: Callable[[Claim, TaskMessage], bool]) -> int:
        """Offer every held task to `start` (True: it started), in order; returns how many
        started. The others stay held, in order."""
        if not self.held:
            return 0
        held, self.held = self.held, []
        for claim, task in held:
            if not start(claim, task):
                self.held.append((claim, task))
        return len(held) - len(self.held)

    def release_held(self) -> None:
        """Put every held message back in its queue as it was (the worker stops hard)."""
        for claim, _ in self.held:
            claim.q.release(claim.msg)  # RACE: None when the coordinator reaped it first: nothing to do
        self.held = []

    def add_bundle(self, claim: Claim, tasks: Sequence[TaskMessage]) -> None:
        """The tasks of a claimed bundle, to start one per free slot (`next_bundled`)."""
        self.backlog.extend((claim, task) for task in tasks)

    def next_bundled(
        self, most: int = 1, merge_key: Callable[[TaskMessage], Hashable | None] = lambda task: None
    ) -> list[tuple[Claim, TaskMessage]] | None:
        """The backlog's first task, and up to `most` - 1 tasks right behind it with the
        same (not None) `merge_key`, taken off it, if a slot is free; else None."""
        if not (self.free_slots and self.backlog):
            return None
        taken = [self.backlog.popleft()]
        key = merge_key(taken[0][1]) if most > 1 else None
        while key is not None and len(taken) < most and self.backlog and merge_key(self.backlog[0][1]) == key:
            taken.append(self.backlog.popleft())
        return taken

    def give_back(
        self,
        why: str,
        settle: Callable[[Claim], None],
        merge_key: Callable[[TaskMessage], Hashable | None] = lambda task: None,
    ) -> int:
        """Put the backlog's tasks back in their queues, keeping their bundle's priority and
        place: each alone, except tasks in a row of one `merge_key` (of one claimed bundle),
        which go back together so that whoever takes them can still merge them. `settle` is
        told of each (its bundle is acked once the tasks that started here end). Stops at
        the first that cannot be put (tried again later). Returns how many went back."""
        n = 0
        while self.backlog:
            claim, first = self.backlog[0]
            group = [first]
            key = merge_key(first)
            while key is not None and len(group) < len(self.backlog):
                other_claim, task = self.backlog[len(group)]
                if other_claim is not claim or merge_key(task) != key:
                    break
                group.append(task)
            payload = Bundle(tuple(group)) if len(group) > 1 else first
            try:
                claim.q.put(
                    payload.to_wire(),
                    priority=claim.msg.priority,
                    msg_id=payload.message_id,
                    order_ns=claim.msg.put_ns,  # it keeps its bundle's place in the queue
                )
            except SpoolError as e:
                log.warning(
                    "worker %s: could not give back a bundled task (will try again): %s", self.owner, e
                )
                break
            for _ in group:
                self.backlog.popleft()
                settle(claim)
            n += len(group)
        if n:
            log.info("worker %s gave back %d bundled task(s): %s", self.owner, n, why)
        return n
