"""The coordinator: the one process that applies events to workflow state.

It holds the lease (`spool.lease`) and wakes on new completion and control messages. Each
round (`step`) it claims them and applies them to the run states it keeps in memory
(`tuiflow.engine.loaded`, `tuiflow.engine.runstate`). The group commit (`commit`) then
writes each touched state once (a CAS write fenced by the lease), queues the tasks those
states made ready (`tuiflow.engine.dispatch`), and only then acks the messages. A crash
anywhere in between applies the messages again after a restart, which changes nothing:
events apply once per task and attempt. Execution is at-least-once; a task is queued only
after the state that made it ready is on disk, so a successor never queues it twice.

Between rounds, every `sweep_interval` seconds (`sweep`): predecessors' unacked claims are
taken back, dead workers are handled and ready tasks whose message went missing queued
again (`tuiflow.engine.sweeper`), running attempts past their timeout fail, workflows
whose submit request never arrived are adopted, and dead writers' temporary files removed.

`tuiflow coordinator` runs this in its own process; `tuiflow run-local` runs the same
class on a thread (`tuiflow.engine.local`), through the hooks `after_step` and
`after_commit`.

Clocks: `now` arguments are the coordinator's wall clock (time.time(): timestamps in
states); intervals and timeouts of its own are measured on time.monotonic().
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from analyzer.contract import NOT_RUN_OUTCOMES
from spool import ChangeWaiter, DeposedError, Home, SpoolError, SpoolQueue
from spool.watch import drain
from tuiflow.engine.dispatch import Dispatcher
from tuiflow.engine.intake import Intake
from tuiflow.engine.isolation import Isolation
from tuiflow.engine.loaded import TRANSIENT, Loaded, LoadedRuns
from tuiflow.engine.markers import Markers
from tuiflow.engine.outage import wait_out
from tuiflow.engine.runstate import (
    Action,
    Changed,
    Dispatch,
    Finished,
    Kill,
    RunState,
)
from tuiflow.engine.spans import CoordinatorSpans
from tuiflow.engine.store import WorkflowStore
from tuiflow.engine.sweeper import DeadWorkers, ReadyRepair, clean_up, take_over_claims
from workers import wire
from workers.tracing import Telemetry

log = logging.getLogger("tuiflow.engine.coordinator")

#: longest a busy coordinator waits between state writes (seconds)
FLUSH_INTERVAL = 0.05
#: longest a coordinator busy with completions goes without looking for control requests
CONTROL_INTERVAL = 0.05
#: seconds between looks for temporary files that dead writers left (`spool.janitor`)
JANITOR_INTERVAL = 600.0
#: when the queues run dry, write once the first change is this old: the completions of a
#: busy fan-out arrive a few milliseconds apart, and each state write costs about a
#: millisecond (the lock, two files) whatever the state's size. A workflow that ends is
#: written at once (whoever waits for it reads the stored state).
IDLE_FLUSH = 0.02


class Coordinator:
    """Parameters:
    max_running_workflows: admission control (None: no limit).
    claim_max: most messages one round claims (its group commit is at most that big).
    sweep_interval: seconds between sweeps.
    timeout_grace: seconds past a task's timeout before the coordinator fails it itself
        (the worker enforces the timeout first; this is the backstop for a hung worker).
    repair_after: seconds a task must have been ready before steady-state repair judges
        its message missing (default: max(30, dead_after)).
    clock: wall clock (state timestamps); injectable.
    on_change: called as (wf_id, action, run) for every action (run-local prints them).
    after_step: called with the number of messages a round handled.
    after_commit: called with the number of task messages a commit queued (run-local wakes
        its workers when it is not 0).
    wake_fd: a descriptor whose readability wakes the loop (run-local's forked workers poke it).
    bundle_max: most tasks of a fan-out in one message (1: every task alone).
    """

    def __init__(
        self,
        home: Home,
        *,
        name: str | None = None,
        max_running_workflows: int | None = None,
        claim_max: int = 4096,
        sweep_interval: float = 1.0,
        stats_interval: float = 10.0,
        timeout_grace: float = 30.0,
        repair_after: float | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str, Action, RunState], None] | None = None,
        after_step: Callable[[int], None] | None = None,
        after_commit: Callable[[int], None] | None = None,
        wake_fd: int | None = None,
        bundle_max: int = wire.BUNDLE_MAX,
    ):
        self.home = home
        self.id = name or f"coordinator-{socket.gethostname()}-{os.getpid()}"
        self.clock = clock
        self.on_change = on_change
        self.after_step = after_step
        self.after_commit = after_commit
        self.wake_fd = wake_fd
        self.claim_max = claim_max
        self.sweep_interval = sweep_interval
        self.stats_interval = stats_interval
        self.timeout_grace = timeout_grace
        self.lease = home.lease(self.id)
        # Claims, queued tasks and markers are checked against the lease right before each
        # rename: no file access within lease_ttl / 2 of a renewal that began on our clock
        # (a contender takes over only after a whole ttl without one), a renewal otherwise.
        self._fence = functools.partial(self.lease.renew_if_older_than, home.settings.lease_ttl / 2)
        self.store = WorkflowStore(home)
        self.markers = Markers(home.root, self._fence)
        self.runs = LoadedRuns(self.store, max_running_workflows)
        self.control = home.control()
        self.completions = home.completions()
        self.control.fence = self.completions.fence = self._fence
        self._queues: dict[str, SpoolQueue] = {}
        self.telemetry = Telemetry(home.root, f"tuiflow-coordinator/{self.id}")
        self._build_parts(bundle_max, repair_after)
        self.rounds = 0
        self.stop_event = threading.Event()
        self._waiter: ChangeWaiter | None = None
        # Applied but not acked yet: (queue, message, workflows it touched).
        self._unacked: list[tuple[SpoolQueue, Any, set[str]]] = []
        # Decided (and written) but not yet queued: tasks are queued only after the state
        # that made them ready is on disk, so a successor never queues them a second time.
        self._to_push: dict[str, list[Dispatch]] = {}
        self._unflushed_since: float | None = None  # monotonic: when the oldest unwritten change was made
        self._ended_unflushed = False  # a workflow ended since the last write
        self._next_control = self._next_sweep = self._next_adopt = self._next_janitor = 0.0
        self._next_stats = 0.0
        self._last_stats = (0.0, 0)

    def _build_parts(self, bundle_max: int, repair_after: float | None) -> None:
        """The parts the loop composes: intake, dispatch, the sweepers, the spans."""
        home = self.home
        self.spans = CoordinatorSpans(self.telemetry, self.id)
        self.isolation = Isolation(
            self.runs, self.markers, self._apply, lambda wf_id: self._to_push.pop(wf_id, None), self.clock
        )
        self.intake = Intake(self.runs, self.markers, self._apply, self.isolation.guard, self._start)
        self.dispatcher = Dispatcher(home.root, self.queue, self.spans, bundle_max)
        self.dead_workers = DeadWorkers(
            home.workers_dir, home.settings.dead_after, self.runs, self.task_queues, self._apply, self.spans
        )
        self.repair = ReadyRepair(
            self.runs,
            self.queue,
            self.completions,
            self._apply,
            lambda wf_id: {d.idx for d in self._to_push.get(wf_id, ())},
            repair_after if repair_after is not None else max(30.0, home.settings.dead_after),
        )

    # ---------------------------------------------------------------- lifecycle
    def acquire(self, *, wait: float | None = None, break_lease: bool = False) -> int:
        """Take the lease (waiting up to `wait` seconds; None: refuse a live holder at once).
        Raises LeaseHeldError if another live coordinator has it. Returns the generation."""
        if break_lease:
            self.lease.break_lease(f"--break-lease by {self.id}")
        ttl = self.home.settings.lease_ttl
        generation = self.lease.acquire(
            timeout=wait if wait is not None else ttl * 1.5, refuse_live=wait is None
        )
        log.info("%s holds the coordinator lease, generation %d", self.id, generation)
        return generation

    def run(self, *, acquire: bool = True) -> None:
        """Serve until `stop()` is called (or the lease is lost: DeposedError)."""
        if acquire and not self.lease.held:
            self.acquire()
        self.home.check_writable()
        self._waiter = ChangeWaiter(
            [*self.completions.watch_paths(), *self.control.watch_paths()],
            mode=self.home.settings.watch,
            poll_interval=self.home.settings.poll_interval,
            step_ms=1,
            arrivals_only=True,
        )
        try:
            take_over_claims(self.lease, self.id, (self.completions, self.control))
            self.runs.adopt_unfinished(self._start)  # every unfinished workflow
            while not self.stop_event.is_set():
                try:
                    self._round()
                except TRANSIENT as e:
                    wait_out(e, self._resume_from_disk, self.stop_event, self.id)
        except DeposedError as e:
            log.error("%s: %s; stopping without claiming or writing anything more", self.id, e)
            raise
        finally:
            if self._unacked and self.lease.held:
                try:
                    self.commit(self.clock())
                except SpoolError as e:
                    log.warning(
                        "%s: last commit failed (%s); the next coordinator applies it again", self.id, e
                    )
            self._waiter.close()
            self.telemetry.flush_exports()
            if self.lease.held:
                try:
                    self.lease.release()
                except SpoolError as e:
                    log.warning("%s: could not release the lease (%s); it expires", self.id, e)
            log.info("%s stopped", self.id)

    def _round(self) -> None:
        # Renew before anything else: a coordinator that was stopped (SIGSTOP) past its
        # lease learns it was deposed here, before it claims or writes.
        renew_every = self.home.settings.lease_ttl / 4
        self.lease.renew_if_older_than(renew_every)
        busy = self.step(self.clock())
        mono = time.monotonic()
        if mono >= self._next_sweep:
            self.sweep(self.clock())
            self._next_sweep = mono + self.sweep_interval
        if mono >= self._next_stats:
            self._log_stats(mono)
        if busy:
            return
        renew_in = renew_every - (self.lease.since_renewal or 0.0)
        timeout = max(0.0, min(renew_in, self._next_sweep - time.monotonic()))
        if self._unflushed_since is not None:
            timeout = min(timeout, max(0.0, IDLE_FLUSH - (time.monotonic() - self._unflushed_since)))
        woken = [self.wake_fd] if self.wake_fd is not None else []
        if self._waiter is not None and self._waiter.wait(timeout, woken) and woken:
            drain(self.wake_fd)

    def _resume_from_disk(self) -> None:
        """Forget what is not on disk and go on from what is, as a successor would."""
        self.lease.renew()  # our right to write (DeposedError if it went), and a write that must succeed
        self._unacked = []  # given back with every claim of ours, below
        self._to_push = {}
        self._unflushed_since = None
        self.runs.forget_all()
        take_over_claims(self.lease, self.id, (self.completions, self.control), mine_too=True)
        self.repair.after_takeover()
        self.runs.adopt_unfinished(self._start)

    def stop(self) -> None:
        self.stop_event.set()
        if self._waiter is not None:
            self._waiter.wake()

    def wake(self) -> None:
        if self._waiter is not None:
            self._waiter.wake()

    def queue(self, name: str) -> SpoolQueue:
        """Task queue `name`, fenced by the lease (every rename checks it first)."""
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = self.home.queue(name)
            q.fence = self._fence
        return q

    def task_queues(self) -> list[SpoolQueue]:
        """Every task queue of the home (fenced, like `queue`)."""
        return [self.queue(name) for name in self.home.list_queues()]

    # ----------------------------------------------------------------- a round
    def step(self, now: float, *, force_flush: bool = False) -> int:
        """Claim and apply control and completion messages once; returns how many.

        Group commit: applied messages are acked only after the states they touched are
        written: at once when a workflow ended or tasks became ready, else at most every
        FLUSH_INTERVAL while messages keep coming and IDLE_FLUSH after the first change once
        they stop. `now`: the coordinator's wall clock.
        """
        self._fence()
        events: list[Any] = []
        while len(events) < self.claim_max:
            got = self.completions.claim(self.id, 512)
            events.extend(got)
            if len(got) < 512:
                break  # it looked at every shard: nothing more for now
        # A look for control requests stats every shard directory: while completions keep
        # coming, look at most every CONTROL_INTERVAL (a cancel waits that much longer).
        controls: list[Any] = []
        mono = time.monotonic()
        if not events or mono >= self._next_control:
            controls = self.control.claim(self.id, 256)
            self._next_control = mono + CONTROL_INTERVAL
        for msg in controls:
            self._unacked.append((self.control, msg, self.intake.control(msg.payload, now)))
        for msg in events:
            self._unacked.append((self.completions, msg, self.intake.events(msg.payload, now)))
        handled = len(controls) + len(events)
        if handled:
            self.rounds += 1
            self.runs.admit(self._start)
            if self._unflushed_since is None:
                self._unflushed_since = time.monotonic()
        age = time.monotonic() - self._unflushed_since if self._unflushed_since is not None else -1.0
        if (
            self._to_push
            or self._ended_unflushed
            or force_flush
            or age >= FLUSH_INTERVAL
            or (age >= 0 and (len(self._unacked) >= self.claim_max or (not handled and age >= IDLE_FLUSH)))
        ):
            self.commit(now)
        if self.after_step is not None:
            self.after_step(handled)
        return handled

    def commit(self, now: float) -> None:
        """Write every touched state, queue the tasks they made ready, then ack (or give
        back) the messages applied to them."""
        self._ended_unflushed = False
        failed = self.runs.write_dirty(self.lease.assert_held, self.isolation.unwritable)
        queued = self._push(now, failed)
        for queue, msg, wfs in self._unacked:
            if wfs & failed:
                queue.release(msg)  # applied to a state we could not write: apply again later
            else:
                queue.ack(msg)
        self._unacked = []
        self._unflushed_since = None
        if self.after_commit is not None:
            self.after_commit(queued)

    def _push(self, now: float, failed: set[str]) -> int:
        """Queue the tasks that became ready in states now written (not those of `failed`,
        whose writes failed: they are reloaded and decided again). Returns how many."""
        pending, self._to_push = self._to_push, {}
        before = self.dispatcher.queued
        for wf_id, dispatches in pending.items():
            loaded = self.runs.peek(wf_id)
            if wf_id in failed or loaded is None:
                continue
            # Tasks that could not be queued fail; what that changes is written (and
            # anything it makes ready queued) at the next commit.
            with self.isolation.guard(wf_id):
                self._apply(wf_id, loaded, self.dispatcher.dispatch(wf_id, loaded.run, dispatches, now), now)
            if loaded.dirty and self._unflushed_since is None:
                self._unflushed_since = time.monotonic()
        return self.dispatcher.queued - before

    # ------------------------------------------------------------ applying
    def _apply(self, wf_id: str, loaded: Loaded, actions: list[Action], now: float) -> None:
        """Carry out actions. Dispatches wait in `_to_push` until the state is written."""
        run = loaded.run
        if actions:
            loaded.dirty = True
        for action in actions:
            if isinstance(action, Dispatch):
                self._to_push.setdefault(wf_id, []).append(action)
            elif isinstance(action, Kill):
                if action.reason == "timeout":
                    self.markers.kill(wf_id, action.idx, action.attempt)
            elif isinstance(action, Finished):
                log.info("workflow %s (%s) %s", wf_id, run.definition.name, action.state)
                self._ended_unflushed = True  # written at once, not IDLE_FLUSH later
                self.spans.workflow_ended(wf_id, run, action.state, run.ended_at or self.clock())
            if isinstance(action, Changed):
                if action.state == "cancelled":
                    self.spans.cancelled_while_queued(wf_id, run, action.idx, now)
                elif action.state in NOT_RUN_OUTCOMES:
                    self.spans.not_run(wf_id, run, action.idx, now, action.state, action.reason)
            if self.on_change is not None:
                self.on_change(wf_id, action, run)

    # ------------------------------------------------------------------ sweeps
    def sweep(self, now: float) -> None:
        """Look after what no message announces (see the module docstring). `now`: wall clock."""
        self._fence()
        take_over_claims(self.lease, self.id, (self.completions, self.control))
        self.dead_workers.sweep(now)
        for wf_id, loaded in self.runs.items():
            with self.isolation.guard(wf_id):
                actions = loaded.run.check_timeouts(now, self.timeout_grace)
                if actions:
                    self._apply(wf_id, loaded, actions, now)
        self.repair.sweep(now)
        mono = time.monotonic()
        if mono >= self._next_adopt:
            self.runs.adopt_unfinished(self._start)  # a submit whose request was lost
            self._next_adopt = mono + 5.0
        if mono >= self._next_janitor:
            queues = [self.completions, self.control, *self.task_queues()]
            directories = [self.store.dir(wf_id) for wf_id, _ in self.runs.items()]
            clean_up(self.home, self.lease.path, queues, directories)
            self._next_janitor = mono + JANITOR_INTERVAL
        self.commit(now)

    def _start(self, wf_id: str, loaded: Loaded) -> None:
        """Admit a workflow: its roots become ready."""
        now = self.clock()
        with self.isolation.guard(wf_id):
            self._apply(wf_id, loaded, loaded.run.start(now), now)

    def _log_stats(self, mono: float) -> None:
        last_t, last_n = self._last_stats
        s = self.intake
        if last_t:
            log.info(
                "coordinator stats: completions=%d (+%d, %.1f/s) queued=%d rounds=%d conflicts=%d dupes=%d "
                "loaded=%d waiting=%d workers_lost=%d repaired=%d",
                s.completions,
                s.completions - last_n,
                (s.completions - last_n) / max(mono - last_t, 1e-9),
                self.dispatcher.queued,
                self.rounds,
                self.runs.conflicts,
                s.duplicates,
                len(self.runs),
                self.runs.waiting,
                self.dead_workers.lost,
                self.repair.repaired,
            )
        self._last_stats = (mono, s.completions)
        self._next_stats = mono + self.stats_interval


def freeze_heap() -> None:
    """Exclude what the process holds so far (imports, loaded definitions) from garbage
    collection: a burst of events allocates enough to trigger full collections, and
    each one walked all of it (~25 ms of a 1,000-task fan-out's 0.4 s). Called by the
    processes that host a coordinator, once they are set up."""
    gc.freeze()


__all__ = ["Coordinator", "freeze_heap"]
