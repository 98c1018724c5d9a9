"""The worker daemon: claims task messages, runs them, reports what happened.

One worker per GPU node (or several per machine). It heartbeats (a record in the home's
workers directory, `spool.liveness`), claims up to its free slots from its queues, in turn
(`claims.WorkerQueues`), gives each task a slot and its GPUs (`slots.SlotPool`), runs it
through its executor (`runner.AttemptRunner`: shell tasks in their own process group on a
slot thread, python tasks in long-lived executor processes the loop follows), and reports
``started`` / ``completed`` / ``failed`` events to the coordinator's completion spool,
grouped into one message per flush (`outbox.Outbox`). A task message is acknowledged only after its final event is
published, so a worker killed at any point loses nothing: the coordinator sees the
heartbeat stop and re-queues.

The loop (`Worker._serve`), each round: look at what ended (inline attempts' descriptors,
slot threads' hand-backs) and report it; heartbeat; look for stop markers
(`markers.StopMarkers`) and give back a bundle's unstarted tasks when one of its tasks runs
long; claim and start; publish; then sleep until something can change (`wakeups.Wakeups`).

Stopping (flags only in signal handlers; the loop acts on them):
* drain (first SIGTERM, SIGUSR1, or `stop(drain=True)`): finish running tasks, claim no
  more, exit;
* hard stop (second SIGTERM, SIGINT, or `stop()`; under Slurm the first SIGTERM, which
  Slurm follows with SIGKILL after its KillWait): give back claimed-but-unstarted
  messages, kill running tasks (reported as "worker stopped", which costs no retry), exit;
* idle exit (`idle_exit`): exit once the queues were empty and nothing ran for that many
  seconds (burst mode, `burst=True`: at once).
Only a clean exit that settled everything (every event published, every claimed message
acked or given back) removes the heartbeat; any other exit leaves it to expire, so that the
coordinator retries or gives back what the worker held.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from spool import ChangeWaiter, Home, Message, SpoolError, SpoolQueue
from spool.liveness import HeartbeatWriter
from workers import wire
from workers.attempt import HOSTNAME, Attempt, AttemptSetup
from workers.claims import Claim, WorkerQueues
from workers.errors import WireError, WorkerConfigError
from workers.executors import EXECUTORS
from workers.markers import MARKER_CHECK_INTERVAL, StopMarkers
from workers.models.merging import DEFAULT_MERGE_MAX, merge_key
from workers.outbox import Outbox
from workers.runner import AttemptRunner
from workers.slots import SlotPool
from workers.slurm import SlurmJob
from workers.tracing import Telemetry
from workers.wakeups import Wakeups

log = logging.getLogger("workers.worker")


def _merge_key(task: wire.TaskMessage) -> tuple | None:
    return merge_key(task.executor, task.spec, task.gpus)


def new_worker_id() -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


class Worker:
    """A worker serving `queues` from `home`.

    Parameters:
        slots: how many attempts run at once.
        gpus: GPU ids this worker hands out (None: it does not manage GPUs).
        burst: exit when the queues are empty and nothing is running.
        idle_exit: exit when the queues stayed empty, and nothing ran, for this many seconds
            (a Slurm job gives its node back; None: never).
        kill_grace: seconds between SIGTERM and SIGKILL when stopping an attempt.
        on_event: called with every event (`wire.Event`) as it is queued.
        wake: called after each published message of events (run-local wakes its coordinator).
        parent_pid: stop hard once this process is no longer the parent (run-local's forks).
        warm: executor names whose long-lived processes start with the worker, one per slot.
        wake_fd: a descriptor whose readability makes the loop look for work at once (a
            wake pipe its coordinator pokes after pushing tasks; see `spool.watch.poke`).
        bundle_hold: once a task of a claimed bundle has run this many seconds, the
            bundle's unstarted tasks go back to the queue for other slots.
        merge_max: most tasks of one merge key (`workers.models.merging`) run as one call
            of their model executor (1: each alone).

    Raises:
        WorkerConfigError: no slots, or an executor to warm that does not exist.
    """

    def __init__(
        self,
        home: Home,
        queues: list[str],
        *,
        slots: int = 1,
        gpus: list[int] | None = None,
        worker_id: str | None = None,
        burst: bool = False,
        idle_exit: float | None = None,
        kill_grace: float = 5.0,
        on_event: Callable[[wire.Event], None] | None = None,
        wake: Callable[[], None] | None = None,
        parent_pid: int | None = None,
        warm: Sequence[str] = (),
        wake_fd: int | None = None,
        bundle_hold: float = wire.BUNDLE_HOLD,
        merge_max: int = DEFAULT_MERGE_MAX,
    ):
        if slots < 1:
            raise WorkerConfigError("slots must be at least 1")
        if merge_max < 1:
            raise WorkerConfigError("merge_max must be at least 1")
        unknown = [name for name in warm if name not in EXECUTORS]
        if unknown:
            raise WorkerConfigError(
                f"cannot warm unknown executor(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(EXECUTORS))}"
            )
        self.home = home
        self.slurm = SlurmJob.from_env(os.environ)
        self.id = worker_id or (self.slurm.worker_id() if self.slurm else new_worker_id())
        self.warm = list(dict.fromkeys(warm))
        self.queues = WorkerQueues(home, queues)
        self.slots = SlotPool(slots, gpus, owner=self.id)
        self.idle = IdleClock(0.0 if burst else idle_exit)
        self.bundle_hold = bundle_hold
        self.merge_max = merge_max
        self.parent_pid = parent_pid
        self.heartbeat = HeartbeatWriter(home.workers_dir, self.id)
        self.markers = StopMarkers(home.root)
        self.outbox = Outbox(home.completions(), self.id, on_event=on_event, published=wake)
        self.telemetry = Telemetry(home.root, f"tuiflow-worker/{self.id}")
        setup = AttemptSetup(
            home.root,
            self.id,
            self.telemetry,
            gpus_managed=gpus is not None,
            kill_grace=kill_grace,
            max_log_bytes=home.settings.max_log_bytes,
        )
        self.runner = AttemptRunner(setup, slots, self.wake, name=self.id)
        waiter = ChangeWaiter(
            self.queues.watch_paths(),
            mode=home.settings.watch,
            poll_interval=home.settings.poll_interval,
            step_ms=1,
            arrivals_only=True,
        )
        self.wakeups = Wakeups(waiter, wake_fd)
        self.started_at = time.time()
        self.tasks_done = 0
        self._drain = False
        self._hard_stop = False
        self._next_heartbeat = 0.0
        self._next_marker_check = 0.0

    # ------------------------------------------------------------------ control
    def stop(self, drain: bool = False) -> None:
        """Ask the loop to stop (thread-safe; what signal handlers call, via flags)."""
        if drain and not self._hard_stop:
            self._drain = True
        else:
            self._hard_stop = True
        self.wake()

    def wake(self) -> None:
        """Make the loop look around now (thread-safe, and safe in a signal handler)."""
        self.wakeups.poke()

    @property
    def state(self) -> str:
        return "stopping" if self._hard_stop else "draining" if self._drain else "running"

    # --------------------------------------------------------------------- loop
    def run(self) -> None:
        """Serve until stopped (or, in burst mode, until there is nothing left)."""
        self.home.check_writable()
        log.info(
            "worker %s serving %s with %d slot(s)%s",
            self.id,
            ", ".join(self.queues.names),
            self.slots.size,
            f", GPUs {self.slots.gpus}" if self.slots.gpus is not None else "",
        )
        self.runner.executors.warm(self.warm)
        clean = False
        try:
            self._serve()
            clean = True
        finally:
            clean = self._shut_down() and clean
            if clean:
                self.heartbeat.remove()
                log.info("worker %s stopped after %d task(s)", self.id, self.tasks_done)
            else:
                # Only a clean, drained exit removes the heartbeat: left to expire, it tells the
                # coordinator this worker died, and what it ran and held is retried or given back.
                self.heartbeat.close()
                log.error(
                    "worker %s stopped abnormally after %d task(s); its heartbeat is left to expire so "
                    "that the coordinator retries or gives back what it held",
                    self.id,
                    self.tasks_done,
                )

    def _serve(self) -> None:
        """The loop (see the module docstring); returns when told to stop, or, in burst
        mode, when there is nothing left."""
        runner, slots = self.runner, self.slots
        while True:
            now = time.monotonic()
            runner.supervise(self.wakeups.readable(runner.inline))
            self._report_finished()
            if self._hard_stop:
                # In this order: held messages back to their queues as they were, bundled
                # tasks given back, running attempts stopped (each waited for up to
                # kill_grace + 15 s) and reported.
                slots.release_held()
                slots.give_back("the worker is stopping", self.outbox.settle, _merge_key)
                runner.stop_all(wait=runner.setup.kill_grace + 15)
                self._report_finished()
                return
            if not self._keep_up(now):
                continue
            # While the outbox cannot write (a full disk) new work would only pile up events
            # (and fail on the same disk): claim nothing until it can.
            claimed = 0 if self._drain or self.outbox.stalled else self._fill_slots()
            self.outbox.flush(running=bool(runner.running), backlog=bool(slots.backlog))
            if self._drain and not runner.running:
                log.info("worker %s drained: nothing runs; exiting", self.id)
                return
            idle = not claimed and not runner.running and not slots.waiting
            if self.idle.over(now, idle and self.idle.limit is not None and self.queues.empty()):
                log.info("worker %s: nothing to do for %g s; exiting", self.id, self.idle.limit)
                return
            if not claimed:
                self._sleep(now)

    def _keep_up(self, now: float) -> bool:
        """Heartbeat, stop markers and bundle give-backs when due (`now`: monotonic seconds).
        False if the loop must stop hard at once (run-local, its parent, is gone)."""
        if now >= self._next_heartbeat:
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.error("worker %s: parent process %d is gone; stopping", self.id, self.parent_pid)
                self._hard_stop = True
                return False
            self._beat()
            self._next_heartbeat = now + self.home.settings.heartbeat_interval
        slots = self.slots
        if now >= self._next_marker_check and self.runner.running:
            self.markers.check(self.runner.running.values())
            self._next_marker_check = now + MARKER_CHECK_INTERVAL
            if (
                slots.backlog
                and (slots.held or not slots.free)
                and self.runner.longest_run(time.time()) > self.bundle_hold
            ):
                slots.give_back("a task of its bundle runs long", self.outbox.settle, _merge_key)
        if self._drain and slots.backlog:
            slots.give_back("the worker is draining", self.outbox.settle, _merge_key)
        return True

    def _sleep(self, now: float) -> None:
        """Wait until something may need the loop: an attempt ends, a message arrives (only
        if a slot is free), a flush, a deadline, a heartbeat or a marker check is due."""
        timeout = min(self.home.settings.heartbeat_interval, 1.0)
        if self.runner.running:
            timeout = min(timeout, MARKER_CHECK_INTERVAL)
        flush = self.outbox.wait_bound()
        if flush is not None:
            timeout = min(timeout, flush)
        deadline = self.runner.next_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - now))
        if not self.slots.free or self._drain or self.outbox.stalled:
            # New messages cannot matter until an attempt ends (or the outbox can write):
            # wait for that alone.
            self.wakeups.wait(timeout, self.runner.inline, queues=False)
            return
        due = self.queues.next_due_in()  # a retry waiting out its backoff: wake when it is due
        if due is not None:
            timeout = min(timeout, due + 0.01)
        self.wakeups.wait(timeout, self.runner.inline)

    def _shut_down(self) -> bool:
        """Publish what is left, close executors and threads. True if nothing is left held:
        every event published, every claimed message settled."""
        settled = True
        try:
            self.outbox.flush(running=bool(self.runner.running), force=True)
        except Exception:
            log.exception("worker %s could not publish its last events", self.id)
            settled = False
        self.runner.close()
        self.wakeups.close()
        self.telemetry.flush_exports()
        if self.runner.running or self.slots.waiting or self.outbox.pending:
            return False
        return self.queues.let_go(self.id) and settled

    def _beat(self) -> None:
        running = [
            [a.task.wf, a.task.idx, a.task.attempt, a.task.task, a.started_at]
            for a in self.runner.running.values()
        ]
        info = {
            "host": HOSTNAME,
            "pid": os.getpid(),
            "queues": self.queues.names,
            "slots": self.slots.size,
            "gpus": self.slots.gpus,
            "running": running,
            "state": self.state,
            "started_at": self.started_at,
            "tasks_done": self.tasks_done,
            "models": self.runner.executors.residency(),
        }
        if self.slurm is not None:
            info["slurm"] = self.slurm.describe()
        try:
            self.heartbeat.beat(info)
        except SpoolError as e:
            # Not fatal: a heartbeat that stays unwritten for dead_after gets this worker
            # judged dead and its work retried elsewhere, which is all a crash would do.
            log.warning("worker %s could not write its heartbeat (will try again): %s", self.id, e)

    # ------------------------------------------------------------------ claiming
    def _fill_slots(self) -> int:
        """Start what waits here, then claim while slots are free; returns how many attempts
        were started. Held tasks keep their order: nothing new until they all could start."""
        started = self.slots.retry_held(self._start)
        if self.slots.held:
            return started
        started += self._start_bundled()
        while self.slots.free and not self.slots.waiting:
            got = self.queues.claim(self.id, self.slots.free)
            if got is None:
                break
            q, msgs = got
            for msg in msgs:
                started += self._admit(msg, q)
        return started

    def _admit(self, msg: Message, q: SpoolQueue) -> int:
        """Take on a claimed message; returns how many attempts it started."""
        try:
            decoded = wire.decode_task_payload(msg.payload)
        except WireError as e:
            q.quarantine(msg.path, f"worker {self.id}: {e}")  # logged there
            return 0
        if isinstance(decoded, wire.Bundle):
            live = [task for task in decoded.members if not self.markers.cancelled(task.wf)]
            if not live:
                q.ack(msg)
                return 0
            if not all(self.slots.fits(task.gpus) for task in live):
                log.error("a bundle needs more GPUs than this worker has: giving it back")
                q.release(msg)
                return 0
            self.slots.add_bundle(Claim(msg, q, len(live)), live)
            return self._start_bundled()
        task = decoded
        if self.markers.cancelled(task.wf):
            q.ack(msg)  # the coordinator already marked it cancelled
            return 0
        if not self.slots.fits(task.gpus):
            log.error(
                "task %s needs %d GPUs, this worker has %d: giving it back",
                task.task,
                task.gpus,
                len(self.slots.gpus or ()),
            )
            q.release(msg)
            return 0
        claim = Claim(msg, q)
        if not self._start(claim, task):
            self.slots.hold(claim, task)
            return 0
        return 1

    def _start_bundled(self) -> int:
        """Start bundled tasks while slots are free (dropping those of cancelled workflows);
        consecutive ones of one merge key start as one merged batch of up to `merge_max`."""
        started = 0
        while (items := self.slots.next_bundled(self.merge_max, _merge_key)) is not None:
            live = []
            for claim, task in items:
                if self.markers.cancelled(task.wf):
                    self.outbox.settle(claim)
                else:
                    live.append((claim, task))
            if not live:
                continue
            if not self._start_batch(live):
                self.slots.backlog.extendleft(reversed(live))
                break
            started += len(live)
        return started

    def _start(self, claim: Claim, task: wire.TaskMessage) -> bool:
        """Start `task` if a slot and its GPUs are free; False (nothing done) if not."""
        return self._start_batch([(claim, task)])

    def _start_batch(self, items: list[tuple[Claim, wire.TaskMessage]]) -> bool:
        """Start the tasks (one, or several of one merge key) in one slot with the first's
        GPUs, as one call of their executor; False (nothing done) if no slot is free."""
        first = items[0][1]
        place = self.slots.take(first.gpus, prefer=self.runner.executors.slots_holding(first))
        if place is None:
            return False
        now = time.time()
        batch = (secrets.token_hex(8), len(items)) if len(items) > 1 else None
        attempts = [
            Attempt(task, claim, place[0], place[1], now, batch=batch, holds_slot=k == 0)
            for k, (claim, task) in enumerate(items)
        ]
        for a in attempts:
            self.outbox.add(a.started())
        self.runner.launch_batch(attempts)
        return True

    # -------------------------------------------------------------- settling
    def _report_finished(self) -> None:
        """Free the slots and GPUs of attempts that ended, and queue their final events."""
        for a, outcome in self.runner.finished():
            if a.holds_slot:  # a batch's slot is freed once, by its first member
                self.slots.release(a.slot, a.gpus)
            self.tasks_done += 1
            self.outbox.add(a.ended(outcome, time.time()), settles=a.claim)


class IdleClock:
    """How long a worker has had nothing to do, against its limit (None: no limit)."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self._since: float | None = None

    def over(self, now: float, idle: bool) -> bool:
        """Whether it has now been idle for `limit` seconds (`now`: monotonic)."""
        if not idle:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        return self.limit is not None and now - self._since >= self.limit


def install_stop_handlers(stop: Callable[[bool], None], *, term_is_hard: bool = False) -> None:
    """A daemon's signals: the first SIGTERM stops gracefully (`stop(False)`), a second
    SIGTERM or any SIGINT stops hard (`stop(True)`); SIGUSR1 (what `tuiflow slurm` asks
    Slurm to send before a job's time limit) stops gracefully. `term_is_hard`: the first
    SIGTERM already stops hard (under Slurm, SIGKILL follows it within KillWait seconds:
    running work is handed back at once rather than lost with the process). Handlers only
    set flags."""
    seen = {"term": 0}

    def on_term(signum: int, frame: Any) -> None:
        seen["term"] += 1
        stop(term_is_hard or seen["term"] > 1)

    def on_int(signum: int, frame: Any) -> None:
        stop(True)

    def on_usr1(signum: int, frame: Any) -> None:
        stop(False)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGUSR1, on_usr1)
