"""What the coordinator looks for between rounds: dead workers, and ready tasks whose
message is nowhere.

Dead workers (`DeadWorkers`): a worker whose heartbeat did not change for `dead_after`
seconds of the coordinator's clock is dead; so is one that holds claimed messages or
running attempts but has no heartbeat record at all (it was removed, or never became
visible here) for as long. Its running attempts fail as `lost` (retried per policy), the
messages it claimed but never started go back to their queue (the members of a bundle one
by one), and its record is renamed `<id>.dead`.

Ready-repair (`ReadyRepair`): a task the state says is ready, but whose message is in no
queue (ready, delayed, claimed, inside a bundle), is queued again. That happens when a
coordinator dies between writing a state and queueing the tasks it made ready, so a
coordinator that just took over looks at once; in steady state it looks for tasks ready for
`repair_after` seconds (a listing on NFS may lag behind a rename). Absence is believed only
when two looks in a row find it and the completions queue is empty after the look (a worker
acks a message only after publishing its events).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from spool import Home, Lease, LivenessTracker, SpoolQueue, layout
from spool.janitor import remove_stale_temps
from spool.queue import parse_name
from tuiflow.engine.loaded import Loaded, LoadedRuns
from tuiflow.engine.runstate import READY, RUNNING, Action, Dispatch
from tuiflow.engine.spans import CoordinatorSpans
from workers.errors import WireError
from workers.wire import Bundle, TaskMessage, decode_task_payload, is_bundle_id, message_id

log = logging.getLogger("tuiflow.engine.coordinator")

Apply = Callable[[str, Loaded, list[Action], float], None]

#: sweeps after taking over in which to look for ready tasks a predecessor never queued
TAKEOVER_LOOKS = 30


class DeadWorkers:
    """Finds dead workers and gives back their work (see the module docstring).

    Parameters:
        dead_after: seconds without a sign of life (the coordinator's monotonic clock).
    """

    def __init__(
        self,
        workers_dir: str,
        dead_after: float,
        runs: LoadedRuns,
        queues: Callable[[], list[SpoolQueue]],
        apply: Apply,
        spans: CoordinatorSpans,
    ):
        self.workers_dir = workers_dir
        self.dead_after = dead_after
        self.runs = runs
        self.queues = queues
        self.apply = apply
        self.spans = spans
        self.tracker = LivenessTracker(dead_after)
        self._unbeating: dict[str, float] = {}  # worker with work but no heartbeat -> first seen
        self.lost = 0

    def sweep(self, now: float) -> None:
        """Look once. `now`: the coordinator's wall clock (for the states it changes)."""
        beating = set()
        for obs in self.tracker.scan(self.workers_dir):
            beating.add(obs.holder)
            if not obs.alive:
                self.worker_lost(obs.holder, now, obs.path)
        holders = set()
        for _, loaded in self.runs.items():
            run = loaded.run
            holders.update(w for i, w in run.worker.items() if run.st[i] == RUNNING and w not in beating)
        for q in self.queues():
            holders.update(w for w in q.claimants() if w not in beating and q.holds_any(w))
        mono = time.monotonic()
        for worker in [w for w in self._unbeating if w not in holders]:
            del self._unbeating[worker]
        for worker in holders:
            if mono - self._unbeating.setdefault(worker, mono) >= self.dead_after:
                del self._unbeating[worker]
                self.worker_lost(worker, now)

    def worker_lost(self, worker: str, now: float, heartbeat_path: str | None = None) -> None:
        """Fail the attempts a dead worker ran (as "lost") and give back what it had claimed."""
        self.lost += 1
        why = "no heartbeat" if heartbeat_path is None else "its heartbeat stopped"
        log.warning("worker %s is dead (%s for %g s)", worker, why, self.dead_after)
        for wf_id, loaded in self.runs.items():
            run = loaded.run
            lost = [(i, run.attempt[i], run.started[i]) for i in run.running_on(worker)]
            for idx, attempt, started in lost:
                error = f"worker {worker} lost"
                self.spans.attempt_never_ran(
                    wf_id, run, idx, attempt, now, "lost", error, start=started, worker=worker
                )
            actions = run.on_worker_lost(worker, now)
            if actions or lost:
                self.apply(wf_id, loaded, actions, now)
        for q in self.queues():
            self._give_back(q, worker)
        if heartbeat_path is not None:
            with contextlib.suppress(OSError):
                os.replace(heartbeat_path, layout.dead_path(heartbeat_path))
        self.tracker.forget(worker)

    def _give_back(self, q: SpoolQueue, worker: str) -> None:
        """Messages the worker claimed but never started go back; stale ones (their task was
        queued again meanwhile) go away."""
        queued: set[str] | None = None
        for msg in q.claimed_messages(worker):
            try:
                payload = decode_task_payload(msg.payload)
            except WireError as e:
                q.quarantine(msg.path, str(e))
                continue
            if isinstance(payload, TaskMessage):
                if self._still_waiting(payload):
                    q.release(msg)
                else:
                    q.ack(msg)
                continue
            # A bundle: the tasks of it that never started go back, each alone, unless the
            # worker gave them back itself before it died.
            if queued is None:
                queued = queued_ids(q)
            for m in payload.members:
                if self._still_waiting(m) and m.message_id not in queued:
                    q.put(m.to_wire(), priority=msg.priority, msg_id=m.message_id, order_ns=msg.put_ns)
            q.ack(msg)
        q.forget_claimant(worker)

    def _still_waiting(self, m: TaskMessage) -> bool:
        """Whether a task message's attempt is still the one its (ready) task waits for."""
        loaded = self.runs.get(m.wf)
        return (
            loaded is not None
            and 0 <= m.idx < len(loaded.run)
            and loaded.run.st[m.idx] == READY
            and loaded.run.attempt[m.idx] == m.attempt
        )


class ReadyRepair:
    """Queues again ready tasks whose message is nowhere (see the module docstring).

    Parameters:
        repair_after: seconds a task must have been ready (wall clock of the states) before
            steady-state repair judges its message missing.
        queueing: the task indices of a workflow whose messages are decided but not queued
            yet (they are not missing).
    """

    def __init__(
        self,
        runs: LoadedRuns,
        queue: Callable[[str], SpoolQueue],
        completions: SpoolQueue,
        apply: Apply,
        queueing: Callable[[str], set[int]],
        repair_after: float,
    ):
        self.runs = runs
        self.queue = queue
        self.completions = completions
        self.apply = apply
        self.queueing = queueing
        self.repair_after = repair_after
        self._missing: set[tuple[str, int, int]] = set()  # what the last conclusive look missed
        self._takeover_looks = [2, TAKEOVER_LOOKS]  # conclusive looks still wanted, sweeps left
        self._next = 0.0
        self.repaired = 0

    def after_takeover(self) -> None:
        """Look again as after a takeover (the coordinator resumed from what is on disk)."""
        self._takeover_looks = [2, TAKEOVER_LOOKS]
        self._missing = set()

    def sweep(self, now: float) -> None:
        """After a takeover: look for every ready task's message until two conclusive looks
        (in at most TAKEOVER_LOOKS sweeps). Then: every repair_after / 3 (at least 10 s)."""
        if self._takeover_looks[0] and self._takeover_looks[1]:
            self._takeover_looks[1] -= 1
            if self.look(now, min_age=0.0):
                self._takeover_looks[0] -= 1
            return
        mono = time.monotonic()
        if mono >= self._next:
            self.look(now)
            self._next = mono + max(10.0, self.repair_after / 3)

    def look(self, now: float, min_age: float | None = None) -> bool:
        """Queue again what two conclusive looks in a row found missing. Returns whether this
        look was conclusive. `now`: wall clock; `min_age`: seconds (default repair_after)."""
        min_age = self.repair_after if min_age is None else min_age
        stale: dict[str, list[tuple[str, int, int]]] = {}
        for wf_id, loaded in self.runs.items():
            run = loaded.run
            if run.terminal:
                continue
            queueing = self.queueing(wf_id)
            for idx, code in enumerate(run.st):
                if code == READY and now - run.ready_at[idx] >= min_age and idx not in queueing:
                    stale.setdefault(run.definition.tasks[idx].queue, []).append(
                        (wf_id, idx, run.attempt[idx])
                    )
        missing: set[tuple[str, int, int]] = set()
        for queue, items in stale.items():
            present = queued_task_ids(self.queue(queue))
            if present is not None:
                missing.update(i for i in items if message_id(*i) not in present)
        if self.completions.counts().ready:
            return False  # events not yet applied may explain them: no conclusion
        confirmed, self._missing = missing & self._missing, missing
        for wf_id, idx, attempt in sorted(confirmed):
            self._requeue(wf_id, idx, attempt, now, takeover=not min_age)
        return True

    def _requeue(self, wf_id: str, idx: int, attempt: int, now: float, *, takeover: bool) -> None:
        loaded = self.runs.get(wf_id)
        if loaded is None or loaded.run.st[idx] != READY or loaded.run.attempt[idx] != attempt:
            return
        why = (
            "ready in the state a predecessor wrote, which did not queue it before it stopped"
            if takeover
            else "its message is missing"
        )
        log.warning(
            "re-queueing %s/%s attempt %d: %s", wf_id, loaded.run.definition.tasks[idx].name, attempt, why
        )
        self.repaired += 1
        self.apply(wf_id, loaded, [Dispatch(idx, attempt)], now)


def queued_ids(q: SpoolQueue) -> set[str]:
    """The ids of every message in the queue: ready, delayed or claimed."""
    return {parsed[2] for name in q.all_names() if (parsed := parse_name(name)) is not None}


def queued_task_ids(q: SpoolQueue) -> set[str] | None:
    """Ids of the task messages anywhere in `q`, bundle members included; None if a bundle
    moved while we looked (judge this queue next time)."""
    present = queued_ids(q)
    bundles = [i for i in present if is_bundle_id(i)]

    def add_members(payload: Any) -> None:
        with contextlib.suppress(WireError):
            decoded = decode_task_payload(payload)
            if isinstance(decoded, Bundle):
                present.update(m.message_id for m in decoded.members)

    if bundles and not q.payloads(bundles, add_members)[1]:
        return None
    return present


def take_over_claims(
    lease: Lease, me: str, queues: tuple[SpoolQueue, ...], *, mine_too: bool = False
) -> None:
    """Give back what an earlier coordinator claimed and never acked (it was killed
    mid-round, or deposed), and with `mine_too` what this one claimed (it starts again
    from disk). Only the lease holder claims completion and control messages, so every
    other claimant there is a predecessor; a deposed one that still runs cannot write
    state any more (fenced) and its late ack finds nothing. Applying is idempotent, so
    messages it did apply cost nothing the second time."""
    lease.assert_held()  # a deposed coordinator must not take its successor's claims
    for q in queues:
        for claimant in q.claimed():
            if (claimant != me or mine_too) and (back := q.reap(claimant)):
                log.warning(
                    "%s: %d message(s) claimed by %s were never acked; applying them again",
                    me,
                    len(back),
                    claimant,
                )


def clean_up(home: Home, lease_dir: str, queues: list[SpoolQueue], directories: list[str]) -> None:
    """Remove the temporary files of writers that died (`spool.janitor`) from the home's
    top directories, the lease's, every queue's and `directories`."""
    found = [home.workers_dir, home.workflows_dir, lease_dir, *directories]
    for q in queues:
        found += q.directories()
    removed = remove_stale_temps(found)
    if removed:
        log.info("removed %d temporary file(s) left by writers that died", removed)
