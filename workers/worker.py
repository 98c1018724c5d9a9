"""The worker daemon: claims task messages, runs them, reports what happened.

One worker per GPU node (or several per machine). It heartbeats (``<home>/workers/<id>.hb``),
claims up to its free slots from its queues, assigns GPUs, runs each attempt on a thread
of its own through an executor (shell tasks in their own process group, python tasks in
long-lived executor processes), and reports ``started`` / ``completed`` / ``failed`` events
to the coordinator's completion spool, batched into one message per flush. A task
message is acknowledged only after its final event is published, so a worker killed at
any point loses nothing: the coordinator sees the heartbeat stop and re-queues.

Stopping (flags only in signal handlers; the loop acts on them):
* drain (first SIGTERM, or `stop(drain=True)`): finish running tasks, claim no more, exit;
* hard stop (second SIGTERM, SIGINT, or `stop()`): give back claimed-but-unstarted
  messages, kill running tasks (reported as "worker stopped", which costs no retry), exit;
* burst mode (`burst=True`): exit once the queues are empty and nothing runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue as queue_mod
import secrets
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from analyzer import contract as c
from spool import ChangeWaiter, Home, Message, SpoolError, SpoolQueue
from spool.atomic import append, atomic_write, read_bytes
from spool.liveness import HeartbeatWriter
from spool.watch import WakePipe, drain
from workers import wire as p
from workers.executors import EXECUTORS, Outcome, TaskContext, resolve_cwd
from workers.tracing import AttemptTrace, Telemetry, span_context_from_traceparent

log = logging.getLogger("workers.worker")

MARKER_CHECK_INTERVAL = 0.25
HOSTNAME = socket.gethostname()
STARTED_DELAY = 0.05
FLUSH_DELAY = 0.01
FLUSH_MAX = 64
#: seconds a task's output.json may stay listed but unreadable (an NFS client's negative cache)
OUTPUT_VISIBLE_WAIT = 10.0


def new_worker_id() -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclasses.dataclass
class _Bundle:
    """A claimed bundle message: acked once none of its tasks is left here."""

    msg: Message
    q: SpoolQueue
    left: int


@dataclasses.dataclass
class _Running:
    msg: Message
    payload: dict[str, Any]
    slot: int
    gpus: list[int]
    started_at: float
    future: concurrent.futures.Future | None = None
    stop_reason: str | None = None
    fresh_dir: bool = False
    span: AttemptTrace | None = None
    ctx: TaskContext | None = None
    executor: Any = None
    fd: int = -1  # an inline attempt's executor pipe: readable when it ended
    bundle: _Bundle | None = None


class Worker:
    """A worker serving `queues` from `home`.

    Parameters:
        slots: how many attempts run at once.
        gpus: GPU ids this worker hands out (None: it does not manage GPUs).
        burst: exit when the queues are empty and nothing is running.
        kill_grace: seconds between SIGTERM and SIGKILL when stopping an attempt.
        on_event: called with every event as it is queued (run-local prints them).
        wake: called after each published batch of events (run-local wakes its coordinator).
        wake_fd: a descriptor whose readability makes the loop look for work at once (a
            wake pipe its coordinator pokes after pushing tasks; see `spool.watch.poke`).
        bundle_hold: once a task of a claimed bundle has run this many seconds, the
            bundle's unstarted tasks go back to the queue for other slots.
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
        kill_grace: float = 5.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        wake: Callable[[], None] | None = None,
        parent_pid: int | None = None,
        warm: Sequence[str] = (),
        wake_fd: int | None = None,
        bundle_hold: float = p.BUNDLE_HOLD,
    ):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        unknown = [name for name in warm if name not in EXECUTORS]
        if unknown:
            raise ValueError(
                f"cannot warm unknown executor(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(EXECUTORS))}"
            )
        self.warm = list(dict.fromkeys(warm))
        self.home = home
        self.id = worker_id or new_worker_id()
        self.queue_names = list(dict.fromkeys(queues)) or ["default"]
        self.queues = {name: home.queue(name) for name in self.queue_names}
        self.completions = home.completions()
        self.slots = slots
        self.all_gpus = list(gpus) if gpus is not None else None
        self.free_gpus = list(gpus) if gpus is not None else []
        self._gpu_rank = {g: i for i, g in enumerate(gpus or [])}
        self.burst = burst
        self.bundle_hold = bundle_hold
        self.kill_grace = kill_grace
        self.on_event = on_event
        self.wake_coordinator = wake
        self.parent_pid = parent_pid
        self.heartbeat = HeartbeatWriter(home.workers_dir, self.id)
        self.running: dict[tuple[str, int, int], _Running] = {}
        self.held: list[tuple[Message, dict[str, Any], SpoolQueue]] = []  # claimed, waiting for GPUs
        self.backlog: collections.deque[tuple[dict[str, Any], _Bundle]] = (
            collections.deque()
        )  # bundled, unstarted
        self.free_slots = list(range(slots))
        self.executors: list[dict[str, Any]] = [{} for _ in range(slots)]
        self.outbox: list[dict[str, Any]] = []
        self.to_ack: list[tuple[SpoolQueue, Message]] = []
        self._finals = 0  # events in the outbox that end an attempt
        self.done: queue_mod.Queue[tuple[_Running, Outcome]] = queue_mod.Queue()
        self.inline: dict[int, _Running] = {}  # executor pipe -> attempt the loop follows
        self._handed_off = 0  # attempts on slot threads, not yet collected from `done`
        self._readable: list[int] | None = None  # what the last wait found readable
        self._wake = WakePipe()  # attempts on slot threads, stop() and wake() poke it
        self.wake_fd = wake_fd
        self._early: list[tuple[_Running, Outcome]] = []
        # One thread per slot, reused: an attempt's supervision waits on its process, not the loop.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=slots, thread_name_prefix=f"{self.id}-slot"
        )
        self.started_at = time.time()
        self.tasks_done = 0
        self._drain = False
        self._hard_stop = False
        self._marker_cache: dict[str, tuple[float, bool]] = {}
        self._next_heartbeat = 0.0
        self._next_marker_check = 0.0
        self._queue_cycle = 0
        self.telemetry = Telemetry(home.root, f"tuiflow-worker/{self.id}")
        # Every task starts from this environment (copied once: os.environ decodes per key).
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("TUIFLOW_")}
        watch = [path for q in self.queues.values() for path in q.watch_paths()]
        self.waiter = ChangeWaiter(
            watch,
            mode=home.settings.watch,
            poll_interval=home.settings.poll_interval,
            step_ms=1,
            arrivals_only=True,
        )

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
        self._wake.poke()

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
            ", ".join(self.queue_names),
            self.slots,
            f", GPUs {self.all_gpus}" if self.all_gpus is not None else "",
        )
        self._warm_executors()
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
        """The loop: claim, supervise, publish, heartbeat; returns when told to stop (or, in
        burst mode, when there is nothing left)."""
        while True:
            now = time.monotonic()
            readable, self._readable = self._readable, None
            if readable is None:  # not waited (a round after claims): one look at them all
                readable = select.select(self._fds(), [], [], 0)[0]
            self._drain_wakes(readable)
            self._supervise_inline(readable)
            self._collect_finished()
            if self._hard_stop:
                self._stop_everything()
                break
            if now >= self._next_heartbeat:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.error("worker %s: parent process %d is gone; stopping", self.id, self.parent_pid)
                    self._hard_stop = True
                    continue
                self._beat()
                self._next_heartbeat = now + self.home.settings.heartbeat_interval
            if now >= self._next_marker_check and self.running:
                self._check_markers()
                self._next_marker_check = now + MARKER_CHECK_INTERVAL
                if (
                    self.backlog
                    and (self.held or not self.free_slots)
                    and self._longest_run() > self.bundle_hold
                ):
                    self._give_back_backlog("a task of its bundle runs long")
            if self._drain and self.backlog:
                self._give_back_backlog("the worker is draining")
            claimed = 0 if self._drain else self._fill_slots()
            self._flush()
            if self._drain and not self.running:
                break
            if (
                self.burst
                and not self.running
                and not self.held
                and not self.backlog
                and claimed == 0
                and self._queues_empty()
            ):
                break
            if claimed:
                continue
            timeout = min(self.home.settings.heartbeat_interval, 1.0)
            if self.running:
                timeout = min(timeout, MARKER_CHECK_INTERVAL)
            if self.outbox:
                timeout = min(timeout, FLUSH_DELAY if self._finals else STARTED_DELAY)
            for run in self.inline.values():
                if run.ctx.deadline is not None:
                    timeout = max(0.0, min(timeout, run.ctx.deadline - now))
            fds = self._fds()
            if not self.free_slots or self._drain:
                # New messages cannot matter until an attempt ends: wait for that alone.
                self._readable = select.select(fds, [], [], timeout)[0]
                continue
            for q in self.queues.values():
                due = q.next_due_in()  # a retry waiting out its backoff: wake when it is due
                if due is not None:
                    timeout = min(timeout, due + 0.01)
            self.waiter.wait(timeout, fds)
            self._readable = self.waiter.ready_fds

    def _shut_down(self) -> bool:
        """Publish what is left, close executors and threads. True if nothing is left held:
        every event published, every claimed message settled."""
        settled = True
        try:
            self._flush(force=True)
        except Exception:
            log.exception("worker %s could not publish its last events", self.id)
            settled = False
        for slot in self.executors:
            for ex in slot.values():
                ex.close()
        self.pool.shutdown(wait=True)
        self.waiter.close()
        self.telemetry.flush_exports()
        if self.running or self.held or self.backlog or self.outbox or self.to_ack:
            return False
        for q in self.queues.values():
            if q.holds_any(self.id):
                return False
            q.forget_claimant(self.id)
        return settled

    def _warm_executors(self) -> None:
        """Start each slot's long-lived executors now, so the first task does not pay for
        an interpreter start and its imports (they start side by side, in the background)."""
        for slot in range(self.slots):
            for name in self.warm:
                warm = getattr(self._executor(slot, name), "warm", None)
                if warm is not None:
                    try:
                        warm()
                    except OSError as e:  # the first task will try again, and report it
                        log.warning("worker %s: could not warm the %s executor: %s", self.id, name, e)

    def _queues_empty(self) -> bool:
        for q in self.queues.values():
            c_ = q.counts()
            if c_.ready or c_.delayed:
                return False
        return True

    def _beat(self) -> None:
        running = [
            [r.payload["wf"], r.payload["idx"], r.payload["attempt"], r.payload["task"], r.started_at]
            for r in self.running.values()
        ]
        info = {
            "host": HOSTNAME,
            "pid": os.getpid(),
            "queues": self.queue_names,
            "slots": self.slots,
            "gpus": self.all_gpus,
            "running": running,
            "state": self.state,
            "started_at": self.started_at,
            "tasks_done": self.tasks_done,
        }
        try:
            self.heartbeat.beat(info)
        except SpoolError as e:
            # Not fatal: a heartbeat that stays unwritten for dead_after gets this worker
            # judged dead and its work retried elsewhere, which is all a crash would do.
            log.warning("worker %s could not write its heartbeat (will try again): %s", self.id, e)

    # ------------------------------------------------------------------ claiming
    def _fill_slots(self) -> int:
        """Claim while slots are free; returns how many attempts were started."""
        started = 0
        if self.held:
            still = []
            for msg, payload, q in self.held:
                if not self._start(msg, payload, q):
                    still.append((msg, payload, q))
                else:
                    started += 1
            self.held = still
            if self.held:
                return started  # keep FIFO: nothing new until the GPU-bound head can start
        started += self._start_backlog()
        names = self.queue_names
        while self.free_slots and not self.held and not self.backlog:
            got = False
            for k in range(len(names)):
                q = self.queues[names[(self._queue_cycle + k) % len(names)]]
                msgs = q.claim(self.id, len(self.free_slots))
                if not msgs:
                    continue
                self._queue_cycle += 1
                got = True
                for msg in msgs:
                    started += self._admit(msg, q)
                break
            if not got:
                break
        return started

    def _admit(self, msg: Message, q: SpoolQueue) -> int:
        """Take on a claimed message; returns how many attempts it started."""
        payload = msg.payload
        members = p.members(payload)
        if members is not None:
            return self._admit_bundle(msg, q, members)
        if not _is_task(payload):
            q.quarantine(msg.path, f"not a task message of protocol {p.PROTOCOL}")
            return 0
        if self._cancelled(payload["wf"]):
            q.ack(msg)  # the coordinator already marked it cancelled
            return 0
        need = int(payload.get("gpus") or 0)
        if need and self.all_gpus is not None and need > len(self.all_gpus):
            log.error(
                "task %s needs %d GPUs, this worker has %d: giving it back",
                payload.get("task"),
                need,
                len(self.all_gpus),
            )
            q.release(msg)
            return 0
        if not self._start(msg, payload, q):
            self.held.append((msg, payload, q))
            return 0
        return 1

    def _admit_bundle(self, msg: Message, q: SpoolQueue, members: list[Any]) -> int:
        if not members or not all(_is_task(m) for m in members):
            q.quarantine(msg.path, f"not a bundle of task messages of protocol {p.PROTOCOL}")
            return 0
        live = [m for m in members if not self._cancelled(m["wf"])]
        if not live:
            q.ack(msg)
            return 0
        b = _Bundle(msg, q, len(live))
        self.backlog.extend((m, b) for m in live)
        return self._start_backlog()

    def _start_backlog(self) -> int:
        started = 0
        while self.free_slots and self.backlog:
            payload, b = self.backlog.popleft()
            if self._cancelled(payload["wf"]):
                self._settle_member(b)
                continue
            self._start(b.msg, payload, b.q, b)  # bundled tasks need no GPUs: a free slot is enough
            started += 1
        return started

    def _settle_member(self, b: _Bundle) -> None:
        """One task of a bundle is done with here: ack the bundle (with the next published
        batch of events) once none is left."""
        b.left -= 1
        if not b.left:
            self.to_ack.append((b.q, b.msg))

    def _give_back_backlog(self, why: str) -> None:
        """Put the unstarted tasks of claimed bundles back in their queue, each alone, so
        that other slots can take them (the bundle is acked once its started tasks end)."""
        n = 0
        while self.backlog:
            payload, b = self.backlog[0]
            try:
                b.q.put(
                    payload,
                    priority=b.msg.priority,
                    msg_id=p.message_id(payload["wf"], payload["idx"], payload["attempt"]),
                    order_ns=b.msg.put_ns,  # it keeps its bundle's place in the queue
                )
            except SpoolError as e:
                log.warning("worker %s: could not give back a bundled task (will try again): %s", self.id, e)
                break
            self.backlog.popleft()
            self._settle_member(b)
            n += 1
        if n:
            log.info("worker %s gave back %d bundled task(s): %s", self.id, n, why)

    def _longest_run(self) -> float:
        now = time.time()
        return max((now - r.started_at for r in self.running.values()), default=0.0)

    def _start(
        self, msg: Message, payload: dict[str, Any], q: SpoolQueue, bundle: _Bundle | None = None
    ) -> bool:
        need = int(payload.get("gpus") or 0)
        if not self.free_slots or (self.all_gpus is not None and need > len(self.free_gpus)):
            return False
        gpus = []
        if self.all_gpus is not None and need:
            gpus, self.free_gpus = self.free_gpus[:need], self.free_gpus[need:]
        run = _Running(msg, payload, self.free_slots.pop(0), gpus, time.time(), bundle=bundle)
        self.running[(payload["wf"], payload["idx"], payload["attempt"])] = run
        self._emit(p.event("started", payload, run.started_at, worker=self.id), q)
        executor = self._executor(run.slot, payload.get("executor", "shell"))
        if executor is not None and hasattr(executor, "start"):
            self._start_inline(run)
        else:
            run.future = self.pool.submit(self._attempt, run, q)
            self._handed_off += 1
        return True

    # -------------------------------------------------------------- one attempt
    # An attempt is prepared (attempt directory, span, environment), executed, and concluded
    # (phases, output, the span written). Executors that can be followed without a thread
    # (`start` / `fileno` / `finish` / `stop`: the python executor) run inline: the loop
    # sends the attempt and waits on the executor's pipe with everything else, so a short
    # task costs no thread hand-offs. Others (shell) run on a slot thread.
    def _attempt(self, run: _Running, q: SpoolQueue) -> None:
        """A slot thread: run the attempt to its end, then hand it to the loop."""
        try:
            outcome = self._execute(run)
        except Exception as e:  # a bug here must still end the attempt, reported
            outcome = _worker_error(run, e)
        self._hand_back(run, outcome)

    def _hand_back(self, run: _Running, outcome: Outcome) -> None:
        self.done.put((run, outcome))
        self.wake()

    def _execute(self, run: _Running) -> Outcome:
        outcome = Outcome("error", "not run")
        try:
            outcome = self._prepare(run)
            if outcome is None:
                outcome = run.executor.run(run.ctx)
            outcome = self._after(run, outcome)
            return outcome
        finally:
            self._end_span(run, outcome)

    def _start_inline(self, run: _Running) -> None:
        try:
            outcome = self._prepare(run)
            if outcome is None:
                outcome = run.executor.start(run.ctx)
            if outcome is None:
                run.fd = run.executor.fileno()
                self.inline[run.fd] = run
                return
            outcome = self._after(run, outcome)
        except Exception as e:  # a bug here must still end the attempt, reported
            outcome = _worker_error(run, e)
        self._end_span(run, outcome)
        self._early.append((run, outcome))

    def _finish_inline(self, run: _Running) -> None:
        del self.inline[run.fd]
        try:
            outcome = self._after(run, run.executor.finish(run.ctx))
        except Exception as e:  # a bug here must still end the attempt, reported
            outcome = _worker_error(run, e)
        self._end_span(run, outcome)
        self._early.append((run, outcome))

    def _stop_inline(self, run: _Running, reason: str) -> None:
        """Stopping kills with a grace period: a slot thread does it, the loop goes on."""
        del self.inline[run.fd]

        def stop() -> None:
            try:
                outcome = self._after(run, run.executor.stop(run.ctx, reason))
            except Exception as e:  # a bug here must still end the attempt, reported
                outcome = _worker_error(run, e)
            self._end_span(run, outcome)
            self._hand_back(run, outcome)

        run.future = self.pool.submit(stop)
        self._handed_off += 1

    def _supervise_inline(self, readable: list[int] | None = None) -> None:
        """Conclude inline attempts that ended; stop those past their deadline or told to stop.
        `readable`: what the wait that just ended found readable (None: unknown, look)."""
        if not self.inline:
            return
        if readable is None:
            readable = select.select(list(self.inline), [], [], 0)[0]
        for fd in readable:
            run = self.inline.get(fd)
            if run is not None:
                self._finish_inline(run)
        now = time.monotonic()
        for run in list(self.inline.values()):
            deadline = run.ctx.deadline
            reason = "timeout" if deadline is not None and now >= deadline else run.stop_reason
            if reason:
                self._stop_inline(run, reason)

    def _prepare(self, run: _Running) -> Outcome | None:
        """Attempt directory, span, environment and executor of an attempt (on `run`).
        Returns an Outcome when it cannot run at all."""
        msg = run.payload
        root = self.home.root
        attempt_dir = p.resolve(root, p.attempt_dir_rel(msg["wf"], msg["task"], msg["attempt"]))
        run.fresh_dir = _make_attempt_dir(attempt_dir)
        attrs = {
            c.ATTR_WORKFLOW_ID: msg["wf"],
            c.ATTR_WORKFLOW_NAME: msg.get("wf_name", ""),
            c.ATTR_RUN_ID: msg["wf"],
            c.ATTR_TASK: msg["task"],
            c.ATTR_ATTEMPT: msg["attempt"],
            c.ATTR_DEPENDS_ON: list(msg.get("deps", [])),
            c.ATTR_READY_AT: float(msg.get("ready_at") or 0.0),
            c.ATTR_WORKER: self.id,
            c.ATTR_HOST: HOSTNAME,
            c.ATTR_QUEUE: msg.get("queue", ""),
            c.ATTR_GPUS: list(run.gpus),
            c.ATTR_EXECUTOR: msg.get("executor", ""),
            c.ATTR_DATA_ID: f"{msg['wf']}/{msg['task']}",
        }
        span = run.span = self.telemetry.attempt(
            f"{attempt_dir}/{c.LOGS_DIR}/{c.SPANS_FILE}",
            span_context_from_traceparent((msg.get("trace") or {}).get("traceparent")),
            attrs,
            run.started_at,
        )
        spec = msg["spec"]
        base_dir = msg.get("base_dir") or os.getcwd()
        # On top of the worker's environment (not copied: a python executor is sent only
        # what changed since its last task, found without looking at the shared part).
        env = dict(spec.get("env") or {})
        env.update(
            {
                "TUIFLOW_HOME": self.home.root,
                "TUIFLOW_WORKFLOW_ID": msg["wf"],
                "TUIFLOW_TASK": msg["task"],
                "TUIFLOW_ATTEMPT": str(msg["attempt"]),
                "TUIFLOW_TASK_DIR": attempt_dir,
                "TUIFLOW_OUTPUT": f"{attempt_dir}/output.json",
                "TUIFLOW_WORKER": self.id,
            }
        )
        if self.all_gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, run.gpus))
        inputs = msg.get("inputs")
        if inputs is not None and any(v is not None for v in inputs.values()):
            t0 = time.time()
            data = json.dumps(inputs).encode()
            atomic_write(f"{attempt_dir}/inputs.json", data)
            env["TUIFLOW_INPUTS"] = f"{attempt_dir}/inputs.json"
            span.phase(c.READ_INPUTS_SPAN, t0, time.time(), **{c.ATTR_BYTES: len(data)})
        elif inputs:
            # No dependency produced output: name them without writing a file.
            env["TUIFLOW_UPSTREAM"] = json.dumps(list(inputs))
        env["TRACEPARENT"] = span.traceparent
        output_path = f"{attempt_dir}/output.json"
        if not run.fresh_dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(output_path)  # a previous run of this very attempt (after a crash) must not leak in
        deadline = time.monotonic() + float(msg["timeout"]) if msg.get("timeout") else None
        run.ctx = TaskContext(
            msg=msg,
            home_root=self.home.root,
            attempt_dir=attempt_dir,
            base_env=self._base_env,
            task_env=env,
            cwd=resolve_cwd(base_dir, spec.get("cwd")),
            stdout_path=f"{attempt_dir}/stdout.log",
            stderr_path=f"{attempt_dir}/stderr.log",
            output_path=output_path,
            gpus=run.gpus,
            deadline=deadline,
            should_stop=lambda: run.stop_reason,
            kill_grace=self.kill_grace,
        )
        run.executor = self._executor(run.slot, msg.get("executor", "shell"))
        if run.executor is None:
            return Outcome("error", f"this worker has no executor {msg.get('executor')!r}")
        if not os.path.isdir(run.ctx.cwd):
            return Outcome(
                "error", f"working directory {run.ctx.cwd} does not exist on {socket.gethostname()}"
            )
        return None

    def _after(self, run: _Running, outcome: Outcome) -> Outcome:
        """The executor's phases as spans; on success, the output collected."""
        span = run.span
        for phase in outcome.phases:
            span.phase(phase.name, phase.start, phase.end, **phase.attributes)
        if outcome.ok:
            t0 = time.time()
            outcome = self._collect_output(run, run.ctx.attempt_dir, outcome)
            span.phase(c.READY_SPAN, t0, time.time(), **{c.ATTR_BYTES: run.payload.get("_out_bytes", 0)})
        return outcome

    def _end_span(self, run: _Running, outcome: Outcome) -> None:
        """Write the attempt's spans (on disk before its event is published)."""
        span = run.span
        if span is None:
            return
        span.set_attribute(c.ATTR_OUTCOME, "failed" if outcome.reason == "error" else outcome.reason)
        if outcome.exit_code is not None:
            span.set_attribute(c.ATTR_EXIT_CODE, outcome.exit_code)
        end = time.time()
        if not outcome.ok:
            span.set_attribute(c.ATTR_ERROR, (outcome.error or "")[:500])
            span.set_error(outcome.error or outcome.reason)
            if not outcome.phases:
                end = run.started_at  # it never started executing: a zero-length span
        span.end(end)

    def _executor(self, slot: int, name: str) -> Any:
        ex = self.executors[slot].get(name)
        if ex is None:
            cls = EXECUTORS.get(name)
            if cls is None:
                return None
            ex = self.executors[slot][name] = cls()
        return ex

    def _collect_output(self, run: _Running, attempt_dir: str, outcome: Outcome) -> Outcome:
        """Read output.json (if any), and record the attempt's asset and lineage rows."""
        msg = run.payload
        path = f"{attempt_dir}/output.json"
        output: Any = None
        ref = None
        try:
            # The task may have renamed it into place just now: on NFS this client may
            # still answer "no such file" from its cache; a listing settles it.
            raw = read_bytes(path, wait_visible=OUTPUT_VISIBLE_WAIT)
        except FileNotFoundError:
            raw = None
        if raw is not None:
            try:
                output = json.loads(raw) if raw.strip() else None
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                return Outcome("error", f"{path} is not valid JSON: {e}", exit_code=outcome.exit_code)
            msg["_out_bytes"] = len(raw)
            if len(raw) > p.INLINE_OUTPUT_MAX:
                ref = [os.path.relpath(path, self.home.root), len(raw)]
                output = None
            data_id = f"{msg['wf']}/{msg['task']}"
            rows = [
                (
                    c.ASSETS_FILE,
                    {
                        "path": os.path.relpath(path, self.home.root),
                        "bytes": len(raw),
                        "sha256": hashlib.sha256(raw).hexdigest(),
                        "owner": msg.get("owner"),
                        "task": msg["task"],
                        "attempt": msg["attempt"],
                        "data_id": data_id,
                    },
                ),
                (
                    c.LINEAGE_FILE,
                    {
                        "data_id": data_id,
                        # the data it was made from: the dependencies that produced some
                        "sources": [
                            f"{msg['wf']}/{d}" for d, v in (msg.get("inputs") or {}).items() if v is not None
                        ],
                        "task": msg["task"],
                        "attempt": msg["attempt"],
                    },
                ),
            ]
            for name, row in rows:
                append(f"{attempt_dir}/{c.LOGS_DIR}/{name}", (json.dumps(row) + "\n").encode())
        run.payload["_output"] = output
        run.payload["_output_ref"] = ref
        return outcome

    # -------------------------------------------------------------- settling
    def _fds(self) -> list[int]:
        """What the loop waits on besides the queues: attempts end on a slot thread (which
        pokes the wake pipe) or on an executor pipe; run-local pokes `wake_fd`."""
        fds = [self._wake.r, *self.inline]
        if self.wake_fd is not None:
            fds.append(self.wake_fd)
        return fds

    def _drain_wakes(self, readable: list[int] | None) -> None:
        if readable is None or self._wake.r in readable:
            self._wake.drain()
        if self.wake_fd is not None and (readable is None or self.wake_fd in readable):
            drain(self.wake_fd)

    def _collect_finished(self) -> None:
        while True:
            if self._early:
                run, outcome = self._early.pop()
            elif self._handed_off:
                try:
                    run, outcome = self.done.get_nowait()
                except queue_mod.Empty:
                    return
                self._handed_off -= 1
            else:
                return
            msg = run.payload
            key = (msg["wf"], msg["idx"], msg["attempt"])
            self.running.pop(key, None)
            self.free_slots.append(run.slot)
            # back in the order --gpus listed them, so a multi-GPU task gets a stable device order
            self.free_gpus = sorted(self.free_gpus + run.gpus, key=self._gpu_rank.__getitem__)
            self.tasks_done += 1
            if run.bundle is not None:
                self._settle_member(run.bundle)
                q, settles = None, None
            else:
                q = self.queues[msg["queue"]] if msg.get("queue") in self.queues else None
                settles = run.msg
            now = time.time()
            if outcome.ok:
                ev = p.event(
                    "completed",
                    msg,
                    now,
                    started_at=run.started_at,
                    worker=self.id,
                    output=msg.pop("_output", None),
                    output_ref=msg.pop("_output_ref", None),
                )
            else:
                ev = p.event(
                    "failed",
                    msg,
                    now,
                    started_at=run.started_at,
                    worker=self.id,
                    error=outcome.error or outcome.reason,
                    reason=outcome.reason,
                    exit_code=outcome.exit_code,
                )
            self._emit(ev, q, settles)

    def _emit(self, ev: dict[str, Any], q: SpoolQueue | None, settles: Message | None = None) -> None:
        self.outbox.append(ev)
        if ev["kind"] != "started":
            self._finals += 1
        if settles is not None and q is not None:
            self.to_ack.append((q, settles))
        if self.on_event is not None:
            self.on_event(ev)

    def _flush(self, force: bool = False) -> None:
        """Publish queued events as one message, then ack the task messages they settle.

        Lone "started" events wait up to STARTED_DELAY: a short task's "completed" then
        carries its start time and saves a message.
        """
        if not self.outbox:
            self._ack_settled()  # tasks of a bundle that were cancelled or given back
            return
        if not force:
            age = time.time() - self.outbox[0]["at"]
            if not self._finals and age < STARTED_DELAY:
                return
            # While attempts still run here, completions wait a few ms to share one message;
            # with nothing running, nobody gains from waiting (a chain's next task needs it).
            if self.running and age < FLUSH_DELAY and len(self.outbox) < FLUSH_MAX:
                return
        events = self.outbox
        # A task that started and ended within one flush needs no separate "started".
        ended = {(e["wf"], e["idx"], e["attempt"]) for e in events if e["kind"] != "started"}
        events = [
            e for e in events if e["kind"] != "started" or (e["wf"], e["idx"], e["attempt"]) not in ended
        ]
        # sent_at lets the coordinator place the events' times on its own clock: it takes
        # only differences of this host's clock (sent_at - at), never the times themselves.
        self.completions.put({"v": p.PROTOCOL, "worker": self.id, "sent_at": time.time(), "events": events})
        self.outbox = []
        self._finals = 0
        self._ack_settled()
        if self.wake_coordinator is not None:
            self.wake_coordinator()

    def _ack_settled(self) -> None:
        for q, msg in self.to_ack:
            q.ack(msg)
        self.to_ack = []

    # ------------------------------------------------------------ cancellation
    def _cancelled(self, wf_id: str) -> bool:
        now = time.monotonic()
        cached = self._marker_cache.get(wf_id)
        if cached is not None and now - cached[0] < MARKER_CHECK_INTERVAL:
            return cached[1]
        gone = os.path.exists(p.cancel_marker(self.home.root, wf_id))
        self._marker_cache[wf_id] = (now, gone)
        return gone

    def _check_markers(self) -> None:
        for (wf, idx, attempt), run in list(self.running.items()):
            if run.stop_reason:
                continue
            if self._cancelled(wf):
                run.stop_reason = "cancelled"
            elif os.path.exists(p.kill_marker(self.home.root, wf, idx, attempt)):
                run.stop_reason = "timeout"

    def _stop_everything(self) -> None:
        for msg, _, q in self.held:
            q.release(msg)
        self.held = []
        self._give_back_backlog("the worker is stopping")
        for run in self.running.values():
            run.stop_reason = "worker stopped"
        self._supervise_inline()  # inline attempts go to slot threads to be stopped
        for run in list(self.running.values()):
            if run.future is not None:
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    run.future.result(timeout=self.kill_grace + 15)
        self._collect_finished()


def _is_task(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("v") == p.PROTOCOL and "wf" in payload


def _worker_error(run: _Running, e: Exception) -> Outcome:
    log.exception("attempt %s failed inside the worker", run.payload.get("task"))
    return Outcome("error", f"worker error: {type(e).__name__}: {e}")


def install_stop_handlers(stop: Callable[[bool], None]) -> None:
    """A daemon's signals: the first SIGTERM stops gracefully (`stop(False)`), a second
    SIGTERM or any SIGINT stops hard (`stop(True)`). Handlers only set flags."""
    seen = {"term": 0}

    def on_term(signum: int, frame: Any) -> None:
        seen["term"] += 1
        stop(seen["term"] > 1)

    def on_int(signum: int, frame: Any) -> None:
        stop(True)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)


def _make_attempt_dir(attempt_dir: str) -> bool:
    """<task>/<attempt>/logs with three mkdir(2) calls in the common case (makedirs walks up).
    Returns True if the attempt directory is new (so it holds nothing from an earlier run)."""
    task_dir = os.path.dirname(attempt_dir)
    fresh = False
    for d in (task_dir, attempt_dir, f"{attempt_dir}/{c.LOGS_DIR}"):
        try:
            os.mkdir(d)
            fresh = fresh or d == attempt_dir
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(f"{attempt_dir}/{c.LOGS_DIR}", exist_ok=True)
            return True
    return fresh
