"""The coordinator: the one process that applies events to workflow state.

It holds the lease (`spool.lease`), wakes on new completion and control messages, and for
each batch: applies them to the in-memory states (`tuiflow.engine.runstate`), pushes newly ready
tasks to their queues at once, writes each touched workflow's state once (a CAS write
fenced by the lease), and only then acks the messages. A crash anywhere in between
re-applies the batch after restart; applying is idempotent, so nothing is lost or applied
twice (tasks may run twice: execution is at-least-once).

Sweepers run every `sweep_interval` seconds: dead workers (their running attempts fail as
"lost"; their claimed-but-unstarted messages go back to the queue), running attempts past
their timeout, ready tasks whose message went missing (ready-repair), and workflows whose
submit request never arrived. `max_running_workflows` admits workflows in FIFO order.

`tuiflow coordinator` runs this in its own process; `tuiflow run-local` runs the same
class in a thread next to its workers.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace as otel_trace

from analyzer import contract as c
from spool import ChangeWaiter, ConflictError, DeposedError, Home, LivenessTracker, SpoolError, SpoolQueue
from spool.janitor import remove_stale_temps
from spool.liveness import SUFFIX as HB_SUFFIX
from spool.queue import parse_name
from spool.watch import drain
from tuiflow.engine.expr import ExpressionError, MissingValue, Template, has_template, render_value, to_text
from tuiflow.engine.runstate import (
    COMPLETED,
    READY,
    RUNNING,
    STATE_NAMES,
    WF_PENDING,
    WF_TERMINAL,
    Action,
    Changed,
    Dispatch,
    Finished,
    Kill,
    NotRetryable,
    Run,
)
from tuiflow.engine.store import WorkflowStore
from workers import wire as p
from workers.tracing import Telemetry, forced_ids, ns, set_error, traceparent, workflow_context

log = logging.getLogger("tuiflow.engine.coordinator")

#: longest a busy coordinator waits between state writes (seconds)
FLUSH_INTERVAL = 0.05
#: longest a coordinator busy with completions goes without looking for control requests
CONTROL_INTERVAL = 0.05
#: seconds between looks for temporary files that dead writers left (`spool.janitor`)
JANITOR_INTERVAL = 600.0
#: sweeps after taking over in which to look for ready tasks a predecessor never queued
TAKEOVER_LOOKS = 30
#: when the queues run dry, write once the first change is this old: the completions of a
#: busy fan-out arrive a few milliseconds apart, and each state write costs about a
#: millisecond (the lock, two files) whatever the state's size. A workflow that ends is
#: written at once (whoever waits for it reads the stored state).
IDLE_FLUSH = 0.02


@dataclasses.dataclass
class _Active:
    run: Run
    version: int
    dirty: bool = False


@dataclasses.dataclass
class Stats:
    completions: int = 0
    events: int = 0
    pushed: int = 0
    batches: int = 0
    conflicts: int = 0
    duplicates: int = 0
    workers_lost: int = 0
    repaired: int = 0


class Coordinator:
    """Parameters:
    max_running_workflows: admission control (None: no limit).
    sweep_interval: seconds between sweeps.
    timeout_grace: seconds past a task's timeout before the coordinator fails it itself
        (the worker enforces the timeout first; this is the backstop for a hung worker).
    clock: wall clock (state timestamps); injectable.
    on_change: called as (wf_id, action, run) for every action (run-local prints them).
    on_pushed: called after tasks were queued (run-local wakes its workers).
    """

    def __init__(
        self,
        home: Home,
        *,
        name: str | None = None,
        max_running_workflows: int | None = None,
        batch: int = 4096,
        sweep_interval: float = 1.0,
        stats_interval: float = 10.0,
        timeout_grace: float = 30.0,
        repair_after: float | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str, Action, Run], None] | None = None,
        wake_fd: int | None = None,
        bundle_max: int = p.BUNDLE_MAX,
        on_pushed: Callable[[], None] | None = None,
    ):
        self.home = home
        self.bundle_max = bundle_max
        # Readable when a worker in another process has just published events (run-local's
        # forked workers poke it): no waiting for the filesystem watcher.
        self.wake_fd = wake_fd
        self.store = WorkflowStore(home)
        self.id = name or f"coordinator-{socket.gethostname()}-{os.getpid()}"
        self.lease = home.lease(self.id)
        # Claims, queued tasks and markers are checked against the lease right before each
        # rename: no file access within lease_ttl / 2 of a renewal that began on our clock
        # (a contender takes over only after a whole ttl without one), a renewal otherwise.
        self._fence = functools.partial(self.lease.renew_if_older_than, home.settings.lease_ttl / 2)
        self.store.fence = self._fence
        self.control = home.control()
        self.completions = home.completions()
        self.control.fence = self.completions.fence = self._fence
        self.queues: dict[str, SpoolQueue] = {}
        self.max_running = max_running_workflows
        self.batch = batch
        self.sweep_interval = sweep_interval
        self.stats_interval = stats_interval
        self.timeout_grace = timeout_grace
        self.repair_after = repair_after if repair_after is not None else max(30.0, home.settings.dead_after)
        self.clock = clock
        self.on_change = on_change
        self.active: dict[str, _Active] = {}
        self.waiting: collections.deque[str] = collections.deque()  # admission FIFO
        self.tracker = LivenessTracker(home.settings.dead_after)
        self.stats = Stats()
        self.stop_event = threading.Event()
        self.telemetry = Telemetry(home.root, f"tuiflow-coordinator/{self.id}")
        self.tracer = self.telemetry.tracer
        self._next_sweep = 0.0
        self._next_adopt = 0.0
        self._next_janitor = 0.0
        self._next_repair = 0.0
        self._next_stats = 0.0
        self._last_stats = (0.0, 0)
        self._waiter: ChangeWaiter | None = None
        self._unacked: list[tuple[SpoolQueue, Any, set[str]]] = []
        self._unflushed_since: float | None = None
        self._ended_unflushed = False  # a workflow ended since the last write
        self._next_control = 0.0
        self._renew_every = home.settings.lease_ttl / 4
        # Decided (and written) but not yet queued: tasks are queued only after the state
        # that made them ready is on disk, so a successor never queues them a second time.
        self._to_push: dict[str, list[Dispatch]] = {}
        self._missing: set[tuple[str, int, int]] = set()  # ready tasks whose message the last look missed
        # Looks for every ready task's message after taking over: two conclusive ones (no
        # unapplied completions at the time) settle it, in at most TAKEOVER_LOOKS sweeps.
        self._takeover_looks = [2, TAKEOVER_LOOKS]
        self._unbeating: dict[str, float] = {}  # worker with work but no heartbeat -> first seen (monotonic)
        self.on_pushed = on_pushed

    # ---------------------------------------------------------------- lifecycle
    def acquire(self, *, wait: float | None = None, break_lease: bool = False) -> int:
        """Take the lease. Raises LeaseHeldError if another live coordinator has it."""
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
        watch = [*self.completions.watch_paths(), *self.control.watch_paths()]
        self._waiter = ChangeWaiter(
            watch,
            mode=self.home.settings.watch,
            poll_interval=self.home.settings.poll_interval,
            step_ms=1,
            arrivals_only=True,
        )
        try:
            self._take_over_claims()
            self.adopt_all(self.clock())
            while not self.stop_event.is_set():
                # Renew before anything else: a coordinator that was stopped (SIGSTOP) past
                # its lease learns it was deposed here, before it claims or writes.
                self.lease.renew_if_older_than(self._renew_every)
                busy = self.step(self.clock())
                mono = time.monotonic()
                if mono >= self._next_sweep:
                    self.sweep(self.clock())
                    self._next_sweep = mono + self.sweep_interval
                if mono >= self._next_stats:
                    self._log_stats(mono)
                if not busy:
                    renew_in = self._renew_every - (self.lease.since_renewal or 0.0)
                    timeout = max(0.0, min(renew_in, self._next_sweep - time.monotonic()))
                    flush_in = self._next_flush_in()
                    if flush_in is not None:
                        timeout = min(timeout, flush_in)
                    woken = [self.wake_fd] if self.wake_fd is not None else []
                    if self._waiter.wait(timeout, woken) and woken:
                        drain(self.wake_fd)
        except DeposedError as e:
            log.error("%s: %s; stopping without claiming or writing anything more", self.id, e)
            raise
        finally:
            if self._unacked and self.lease.held:
                with contextlib.suppress(SpoolError):
                    self.commit(self.clock())
            self._waiter.close()
            self.telemetry.flush_exports()
            if self.lease.held:
                with contextlib.suppress(SpoolError):
                    self.lease.release()
            log.info("%s stopped", self.id)

    def stop(self) -> None:
        self.stop_event.set()
        if self._waiter is not None:
            self._waiter.wake()

    def wake(self) -> None:
        if self._waiter is not None:
            self._waiter.wake()

    # -------------------------------------------------------------- workflows
    def _get(self, wf_id: str) -> _Active | None:
        active = self.active.get(wf_id)
        if active is None:
            try:
                run, version = self.store.load_run(wf_id)
            except SpoolError as e:
                log.error("cannot load workflow %s: %s", wf_id, e)
                return None
            except Exception as e:  # NotFound: a request for a purged workflow
                log.warning("ignoring workflow %s: %s", wf_id, e)
                return None
            active = self.active[wf_id] = _Active(run, version)
        return active

    def adopt_all(self, now: float) -> None:
        """Load every unfinished workflow (startup, and periodically for lost submits)."""
        for summary in sorted(self.store.summaries(), key=lambda s: s.get("created_at", 0)):
            wf_id = summary.get("id")
            if wf_id in self.active or summary.get("state") in WF_TERMINAL or wf_id is None:
                continue
            active = self._get(wf_id)
            if active is not None and active.run.state == WF_PENDING and wf_id not in self.waiting:
                self.waiting.append(wf_id)
        self._admit(now)

    def _running_count(self) -> int:
        return sum(
            1 for a in self.active.values() if a.run.state not in WF_TERMINAL and a.run.state != WF_PENDING
        )

    def _admit(self, now: float) -> None:
        while self.waiting and (self.max_running is None or self._running_count() < self.max_running):
            wf_id = self.waiting.popleft()
            active = self._get(wf_id)
            if active is None or active.run.state != WF_PENDING:
                continue
            self._apply(wf_id, active, active.run.start(now), now)

    # ----------------------------------------------------------------- a batch
    def step(self, now: float, *, force_flush: bool = False) -> int:
        """Drain control and completion messages once; returns how many were handled.

        Group commit: applied messages are acknowledged only after the states they touched
        are written, and states are written at most every FLUSH_INTERVAL while messages keep
        coming (IDLE_FLUSH after the first change when the queues run dry), at once when a
        workflow ended or tasks became ready. Tasks are queued right after the state that
        made them ready is written: a coordinator that dies between the two leaves a ready
        task without a message (ready-repair queues it), never a message its successor
        queues a second time.
        """
        self._fence()
        events: list[Any] = []
        while len(events) < self.batch:
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
            self._unacked.append((self.control, msg, self._on_control(msg.payload, now)))
        for msg in events:
            self._unacked.append((self.completions, msg, self._on_events(msg.payload, now)))
        handled = len(controls) + len(events)
        if handled:
            self.stats.batches += 1
            self._admit(now)
        if handled and self._unflushed_since is None:
            self._unflushed_since = time.monotonic()
        if self._unflushed_since is not None or self._to_push:
            age = time.monotonic() - (self._unflushed_since or time.monotonic())
            if (
                force_flush
                or self._ended_unflushed
                or self._to_push
                or age >= FLUSH_INTERVAL
                or len(self._unacked) >= self.batch
                or (not handled and age >= IDLE_FLUSH)
            ):
                self.commit(now)
        return handled

    def commit(self, now: float) -> None:
        """Write every touched state, queue the tasks they made ready, then ack (or give
        back) the messages applied to them."""
        failed = self._flush(now)
        self._push(now, failed)
        for queue, msg, wfs in self._unacked:
            if wfs & failed:
                queue.release(msg)  # applied to a state we could not write: apply again later
            else:
                queue.ack(msg)
        self._unacked = []
        self._unflushed_since = None

    def _next_flush_in(self) -> float | None:
        if self._unflushed_since is None:
            return None
        return max(0.0, IDLE_FLUSH - (time.monotonic() - self._unflushed_since))

    def _on_control(self, payload: Any, now: float) -> set[str]:
        if not isinstance(payload, dict) or "wf" not in payload or "op" not in payload:
            log.warning("ignoring malformed control request %r", payload)
            return set()
        wf_id, op = payload["wf"], payload["op"]
        active = self._get(wf_id)
        if active is None:
            return set()
        run = active.run
        if op == "submit":
            if run.state == WF_PENDING and wf_id not in self.waiting:
                self.waiting.append(wf_id)
            self._admit(now)
        elif op == "cancel":
            if run.seen_request(payload.get("request")):
                return {wf_id}
            self.store.mark_cancelled(wf_id)  # workers stop its running tasks
            with contextlib.suppress(ValueError):
                self.waiting.remove(wf_id)
            self._apply(wf_id, active, run.cancel(now), now)
            active.dirty = True
        elif op == "retry":
            if run.seen_request(payload.get("request")):
                return {wf_id}
            try:
                actions = run.retry(payload.get("tasks") or None, now)
            except NotRetryable as e:
                log.error("retry of %s refused: %s", wf_id, e)
                return {wf_id}
            self.store.clear_cancelled(wf_id)
            self._apply(wf_id, active, actions, now)
            active.dirty = True
        else:
            log.warning("ignoring unknown control op %r for %s", op, wf_id)
        return {wf_id}

    def _on_events(self, payload: Any, now: float) -> set[str]:
        if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
            log.warning("ignoring malformed completion message %r", str(payload)[:200])
            return set()
        touched = set()
        worker = payload.get("worker", "?")
        # The worker's times are moved onto our clock by how long before sending (on its own
        # clock) each thing happened: only differences of one host's clock are used, so a
        # worker whose clock is minutes off still reports true durations. What is ignored is
        # the time the message took to reach us (milliseconds, unless we were down).
        sent = payload.get("sent_at")
        shift = now - sent if _is_time(sent) else 0.0
        for ev in payload["events"]:
            try:
                wf_id, idx, attempt, kind = ev["wf"], int(ev["idx"]), int(ev["attempt"]), ev["kind"]
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring malformed event %r", str(ev)[:200])
                continue
            active = self._get(wf_id)
            if active is None:
                continue
            run = active.run
            at = min(now, ev["at"] + shift) if shift and _is_time(ev.get("at")) else now
            started_at = ev.get("started_at")
            started_at = min(at, started_at + shift) if _is_time(started_at) else None
            before = run.stats["duplicates_ignored"]
            self.stats.events += 1
            if kind == "started":
                actions = run.on_started(idx, attempt, worker, at)
            elif kind == "completed":
                ref = ev.get("output_ref")
                actions = run.on_completed(
                    idx,
                    attempt,
                    worker,
                    at,
                    output=ev.get("output"),
                    output_ref=(ref[0], ref[1]) if ref else None,
                    started_at=started_at,
                )
                self.stats.completions += 1
            elif kind == "failed":
                actions = run.on_failed(
                    idx,
                    attempt,
                    worker,
                    at,
                    error=str(ev.get("error") or "failed"),
                    kind=ev.get("reason") or "error",
                    exit_code=ev.get("exit_code"),
                    started_at=started_at,
                )
            else:
                log.warning("ignoring event of unknown kind %r", kind)
                continue
            self.stats.duplicates += run.stats["duplicates_ignored"] - before
            active.dirty = True
            touched.add(wf_id)
            self._apply(wf_id, active, actions, now)
        return touched

    # ------------------------------------------------------------------ actions
    def _apply(self, wf_id: str, active: _Active, actions: list[Action], now: float) -> None:
        """Carry out actions. Dispatches wait in `_to_push` until the state is written."""
        run = active.run
        if actions:
            active.dirty = True
        for action in actions:
            if isinstance(action, Dispatch):
                self._to_push.setdefault(wf_id, []).append(action)
            elif isinstance(action, Kill):
                if action.reason == "timeout":
                    self.store.mark_kill(wf_id, action.idx, action.attempt)
            elif isinstance(action, Finished):
                self._finished(wf_id, run, action)
            if isinstance(action, Changed) and action.state == "cancelled":
                self._cancelled_span(wf_id, run, action.idx, now)
            if self.on_change is not None:
                self.on_change(wf_id, action, run)

    def _push(self, now: float, failed: set[str]) -> None:
        """Queue the tasks that became ready in states now written (not those of `failed`,
        whose writes failed: they are reloaded and decided again)."""
        pending, self._to_push = self._to_push, {}
        pushed = False
        for wf_id, dispatches in pending.items():
            active = self.active.get(wf_id)
            if wf_id in failed or active is None:
                continue
            # Tasks that could not be queued fail; what that changes is written (and
            # anything it makes ready queued) at the next commit.
            not_queued = self._dispatch(wf_id, active.run, dispatches, now)
            self._apply(wf_id, active, not_queued, now)
            pushed = True
            if active.dirty and self._unflushed_since is None:
                self._unflushed_since = time.monotonic()
        if pushed and self.on_pushed is not None:
            self.on_pushed()

    def _queue(self, name: str) -> SpoolQueue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = self.home.queue(name)
            q.fence = self._fence
        return q

    def _dispatch(self, wf_id: str, run: Run, dispatches: list[Dispatch], now: float) -> list[Action]:
        """Queue the attempts; returns the actions of those that could not be queued.

        Many tasks that became ready at once in one queue (a fan-out) travel in bundles:
        one message of up to `bundle_max` task messages, so that a thousand short tasks cost
        a few dozen message files rather than a thousand. Bundles are only made where they
        leave at least `p.BUNDLE_SPREAD` messages, so up to that many slots start at once; a
        worker hands back what is left of a bundle when a task of it runs long (see
        `workers.worker`). Delayed retries and GPU tasks always travel alone.
        """
        failed: list[Action] = []
        groups: dict[tuple[str, int], list[Dispatch]] = {}
        for action in dispatches:
            t = run.definition.tasks[action.idx]
            if action.delay > 0 or t.gpus:
                failed.extend(self._queue_tasks(wf_id, run, [action], 1, now, action.delay))
            else:
                groups.setdefault((t.queue, t.priority), []).append(action)
        for actions in groups.values():
            size = p.bundle_size(len(actions), self.bundle_max)
            failed.extend(self._queue_tasks(wf_id, run, actions, size, now))
        return failed

    def _queue_tasks(
        self, wf_id: str, run: Run, actions: list[Dispatch], size: int, now: float, delay: float = 0.0
    ) -> list[Action]:
        """Queue attempts of tasks of one queue and priority, `size` to a message."""
        t = run.definition.tasks[actions[0].idx]
        failed: list[Action] = []
        batch: list[dict[str, Any]] = []
        # Messages are built as they are queued: a 100k fan-out never holds 100k of them.
        for k, action in enumerate(actions, 1):
            try:
                batch.append(self.build_message(wf_id, run, action.idx, action.attempt, now))
            except (ExpressionError, ValueError, TypeError) as e:
                failed.extend(self._not_queued(wf_id, run, action.idx, action.attempt, now, e))
            if batch and (len(batch) == size or k == len(actions)):
                failed.extend(self._put(wf_id, run, t.queue, t.priority, batch, now, delay))
                batch = []
        return failed

    def _put(
        self,
        wf_id: str,
        run: Run,
        queue: str,
        priority: int,
        messages: list[dict[str, Any]],
        now: float,
        delay: float = 0.0,
    ) -> list[Action]:
        first = messages[0]
        msg_id = p.message_id(wf_id, first["idx"], first["attempt"])
        try:
            if len(messages) == 1:
                self._queue(queue).put(first, priority=priority, msg_id=msg_id, delay=delay)
            else:
                self._queue(queue).put(
                    p.bundle(messages), priority=priority, msg_id=p.bundle_id(msg_id, len(messages))
                )
        except SpoolError as e:
            if len(messages) > 1:  # too large as one message, say: each on its own
                return [a for m in messages for a in self._put(wf_id, run, queue, priority, [m], now)]
            return self._not_queued(wf_id, run, first["idx"], first["attempt"], now, e)
        self.stats.pushed += len(messages)
        return []

    def _not_queued(
        self, wf_id: str, run: Run, idx: int, attempt: int, now: float, e: Exception
    ) -> list[Action]:
        error = f"could not start: {e}"
        self._zero_span(wf_id, run, idx, attempt, now, "failed", error)
        return run.on_failed(idx, attempt, None, now, error=error, kind="setup")

    def build_message(self, wf_id: str, run: Run, idx: int, attempt: int, now: float) -> dict[str, Any]:
        """The task message for one attempt: templates rendered, inputs attached."""
        d = run.definition
        t = d.tasks[idx]
        spec = t.spec  # shared, never changed: a rendered spec is a copy
        if d.templated(idx):
            spec = dict(spec)
            env = run.env_for(idx)
            try:
                if "run" in spec:
                    spec["run"] = Template(spec["run"]).render(env, shell=True)
                if "argv" in spec:
                    spec["argv"] = [
                        to_text(Template(a).render(env)) if has_template(a) else a for a in spec["argv"]
                    ]
                for key in ("kwargs", "with"):
                    if key in spec:
                        spec[key] = render_value(spec[key], env)
                if "env" in spec:
                    spec["env"] = {k: to_text(render_value(v, env)) for k, v in spec["env"].items()}
                if "cwd" in spec:
                    spec["cwd"] = to_text(render_value(spec["cwd"], env))
            except MissingValue as e:
                raise ExpressionError(f"template refers to {e.path}, which does not exist") from None
        deps = d.deps[idx]
        inputs = None
        if deps:
            inputs = {}
            for dep in deps:
                name = d.tasks[dep].name
                if dep in run.output_refs:
                    inputs[name] = {"$ref": p.resolve(self.home.root, run.output_refs[dep][0])}
                else:
                    inputs[name] = run.outputs.get(dep)
        return {
            "v": p.PROTOCOL,
            "wf": wf_id,
            "wf_name": d.name,
            "idx": idx,
            "task": t.name,
            "attempt": attempt,
            "executor": t.executor,
            "spec": spec,
            "base_dir": d.base_dir,
            "timeout": t.timeout,
            "gpus": t.gpus,
            "queue": t.queue,
            "deps": [d.tasks[i].name for i in deps],
            "inputs": inputs,
            "ready_at": now,
            "owner": d.owner,
            "trace": {"traceparent": workflow_traceparent(wf_id)},
        }

    def _finished(self, wf_id: str, run: Run, action: Finished) -> None:
        log.info("workflow %s (%s) %s", wf_id, run.definition.name, action.state)
        self._ended_unflushed = True  # written at the next step, not IDLE_FLUSH later
        if self._unflushed_since is None:
            self._unflushed_since = time.monotonic()
        with forced_ids(wf_id, workflow_span=True):
            span = self.tracer.start_span(
                c.WORKFLOW_SPAN,
                attributes={
                    c.ATTR_WORKFLOW_ID: wf_id,
                    c.ATTR_WORKFLOW_NAME: run.definition.name,
                    c.ATTR_RUN_ID: wf_id,
                    c.ATTR_OUTCOME: action.state,
                    "tuiflow.tasks": len(run),
                    **{f"tuiflow.count.{k}": v for k, v in run.count_dict().items() if v},
                },
                start_time=ns(run.created_at),
            )
        if action.state != "completed":
            set_error(span, f"workflow {action.state}")
        span.end(end_time=ns(run.ended_at or self.clock()))

    # ------------------------------------------------------------ telemetry
    def _attempt_attrs(self, wf_id: str, run: Run, idx: int, attempt: int) -> dict[str, Any]:
        t = run.definition.tasks[idx]
        return {
            c.ATTR_WORKFLOW_ID: wf_id,
            c.ATTR_WORKFLOW_NAME: run.definition.name,
            c.ATTR_RUN_ID: wf_id,
            c.ATTR_TASK: t.name,
            c.ATTR_ATTEMPT: attempt,
            c.ATTR_DEPENDS_ON: list(t.depends_on),
            c.ATTR_READY_AT: run.ready_at[idx] or 0.0,
            c.ATTR_QUEUE: t.queue,
            c.ATTR_EXECUTOR: t.executor,
            c.ATTR_WORKER: self.id,
            c.ATTR_HOST: socket.gethostname(),
        }

    def _zero_span(
        self,
        wf_id: str,
        run: Run,
        idx: int,
        attempt: int,
        at: float,
        outcome: str,
        error: str,
        start: float | None = None,
    ) -> None:
        """A closed error span for an attempt that never ran (or whose worker vanished)."""
        attrs = self._attempt_attrs(wf_id, run, idx, attempt)
        attrs[c.ATTR_OUTCOME] = outcome
        attrs[c.ATTR_ERROR] = error[:500]
        span = self.tracer.start_span(
            c.TASK_SPAN,
            context=workflow_context(wf_id),
            attributes=attrs,
            start_time=ns(start if start else at),
        )
        set_error(span, error)
        span.end(end_time=ns(at))

    def _cancelled_span(self, wf_id: str, run: Run, idx: int, now: float) -> None:
        # Only attempts that had been queued exist in the trace; pending tasks never had one.
        if run.ready_at[idx] and not run.started[idx]:
            self._zero_span(
                wf_id, run, idx, run.attempt[idx], now, "cancelled", "workflow cancelled while queued"
            )

    # --------------------------------------------------------------- writing
    def _flush(self, now: float) -> set[str]:
        """Write every dirty state once; returns the workflows whose write failed."""
        self._ended_unflushed = False
        failed = set()
        for wf_id, active in list(self.active.items()):
            if not active.dirty:
                continue
            try:
                active.version = self.store.write_run(
                    active.run, active.version, fence=self.lease.assert_held
                )
                active.dirty = False
            except ConflictError:
                # Someone else wrote this state (an operator tool, or a deposed coordinator's
                # last gasp). Reload and let the released messages be applied again.
                self.stats.conflicts += 1
                log.warning("state of %s changed under us; reloading it", wf_id)
                self.active.pop(wf_id, None)
                failed.add(wf_id)
                continue
            except DeposedError:
                raise
            except SpoolError as e:
                log.error("cannot write state of %s: %s (will retry)", wf_id, e)
                self.active.pop(wf_id, None)
                failed.add(wf_id)
                continue
            if active.run.terminal and not active.run.counts[RUNNING]:
                self.active.pop(wf_id, None)  # finished: nothing will change it until a retry
        return failed

    # ------------------------------------------------------------------ sweeps
    def sweep(self, now: float) -> None:
        self._fence()
        self._take_over_claims()
        self._sweep_workers(now)
        for wf_id, active in list(self.active.items()):
            actions = active.run.check_timeouts(now, self.timeout_grace)
            if actions:
                self._apply(wf_id, active, actions, now)
        mono = time.monotonic()
        if self._takeover_looks[0] and self._takeover_looks[1]:
            # A predecessor may have died (or been deposed) between writing a state and
            # queueing the tasks it made ready: look for them now, not after repair_after.
            # Tasks this coordinator queued itself are where it put them.
            self._takeover_looks[1] -= 1
            if self._repair_ready(now, min_age=0.0):
                self._takeover_looks[0] -= 1
        elif mono >= self._next_repair:
            self._repair_ready(now)
            self._next_repair = mono + max(10.0, self.repair_after / 3)
        if mono >= self._next_adopt:
            self.adopt_all(now)
            self._next_adopt = mono + 5.0
        if mono >= self._next_janitor:
            self._clean_up()
            self._next_janitor = mono + JANITOR_INTERVAL
        self.commit(now)

    def _clean_up(self) -> None:
        """Remove the temporary files of writers that died (`spool.janitor`)."""
        h = self.home
        directories = [h.workers_dir, h.workflows_dir, self.lease.path, *map(self.store.dir, self.active)]
        for q in (self.completions, self.control, *map(self._queue, h.list_queues())):
            directories += q.directories()
        removed = remove_stale_temps(directories)
        if removed:
            log.info("removed %d temporary file(s) left by writers that died", removed)

    def _sweep_workers(self, now: float) -> None:
        """Workers whose heartbeat stopped changing for `dead_after` are dead; so are workers
        that hold claimed messages or running attempts but have no heartbeat record at all
        (it was removed, or never became visible here) for as long, judged on our clock."""
        beating = set()
        for obs in self.tracker.scan(self.home.workers_dir):
            beating.add(obs.holder)
            if not obs.alive:
                self._worker_lost(obs.holder, now, obs.path)
        holders = set()
        for active in self.active.values():
            run = active.run
            holders.update(w for i, w in run.worker.items() if run.st[i] == RUNNING and w not in beating)
        for name in self.home.list_queues():
            q = self._queue(name)
            holders.update(w for w in q.claimants() if w not in beating and q.holds_any(w))
        mono = time.monotonic()
        for worker in [w for w in self._unbeating if w not in holders]:
            del self._unbeating[worker]
        for worker in holders:
            if mono - self._unbeating.setdefault(worker, mono) >= self.home.settings.dead_after:
                del self._unbeating[worker]
                self._worker_lost(worker, now)

    def _take_over_claims(self) -> None:
        """Give back what an earlier coordinator claimed and never acked (it was killed
        mid-batch, or deposed). Only the lease holder claims completion and control
        messages, so every other claimant there is a predecessor; a deposed one that still
        runs cannot write state any more (fenced) and its late ack finds nothing. Applying
        is idempotent, so messages it did apply cost nothing the second time."""
        self.lease.assert_held()  # a deposed coordinator must not take its successor's claims
        for q in (self.completions, self.control):
            for claimant in q.claimed():
                if claimant != self.id:
                    back = q.reap(claimant)
                    if back:
                        log.warning(
                            "%s: %d message(s) claimed by %s were never acked; applying them again",
                            self.id,
                            len(back),
                            claimant,
                        )

    def _worker_lost(self, worker: str, now: float, heartbeat_path: str | None = None) -> None:
        """Fail the attempts a dead worker ran (as "lost") and give back what it had claimed."""
        self.stats.workers_lost += 1
        why = "no heartbeat" if heartbeat_path is None else "its heartbeat stopped"
        log.warning("worker %s is dead (%s for %g s)", worker, why, self.home.settings.dead_after)
        for wf_id, active in list(self.active.items()):
            run = active.run
            lost = [(i, run.attempt[i], run.started[i]) for i in run.running_on(worker)]
            for idx, attempt, started in lost:
                self._zero_span(wf_id, run, idx, attempt, now, "lost", f"worker {worker} lost", start=started)
            actions = run.on_worker_lost(worker, now)
            if actions or lost:
                self._apply(wf_id, active, actions, now)
        # Messages it had claimed but not started go back; stale ones (already re-queued) go away.
        for name in self.home.list_queues():
            q = self._queue(name)
            queued: set[str] | None = None
            for msg in q.claimed_messages(worker):
                members = p.members(msg.payload)
                if members is None:
                    if self._still_waiting(msg.payload):
                        q.release(msg)
                    else:
                        q.ack(msg)
                    continue
                # A bundle: the tasks of it that never started go back, each alone, unless
                # the worker gave them back itself before it died.
                if queued is None:
                    queued = _queued_ids(q)
                for m in members:
                    if self._still_waiting(m):
                        msg_id = p.message_id(m["wf"], m["idx"], m["attempt"])
                        if msg_id not in queued:
                            q.put(m, priority=msg.priority, msg_id=msg_id, order_ns=msg.put_ns)
                q.ack(msg)
            q.forget_claimant(worker)
        if heartbeat_path is not None:
            with contextlib.suppress(OSError):
                os.replace(heartbeat_path, heartbeat_path[: -len(HB_SUFFIX)] + ".dead")
        self.tracker.forget(worker)

    def _still_waiting(self, payload: Any) -> bool:
        """Whether a task message's attempt is still the one its (ready) task waits for."""
        if not isinstance(payload, dict) or not payload.get("wf"):
            return False
        active = self._get(payload["wf"])
        idx, attempt = payload.get("idx", -1), payload.get("attempt", -1)
        return (
            active is not None
            and isinstance(idx, int)
            and 0 <= idx < len(active.run)
            and active.run.st[idx] == READY
            and active.run.attempt[idx] == attempt
        )

    def _repair_ready(self, now: float, min_age: float | None = None) -> bool:
        """Re-queue ready tasks whose message is nowhere (after a crash between a state
        write and the queueing it decided, or a purge). Absence is only believed when two
        looks in a row find it, the completions queue is empty after the look (a message
        is acked only after its events are published), and the task has been ready for
        `min_age` seconds (default `repair_after`: on NFS a listing may lag behind a rename)."""
        min_age = self.repair_after if min_age is None else min_age
        stale: dict[str, list[tuple[str, int, int]]] = {}
        for wf_id, active in self.active.items():
            run = active.run
            if run.terminal:
                continue
            queueing = {d.idx for d in self._to_push.get(wf_id, ())}
            for idx, code in enumerate(run.st):
                if code == READY and now - run.ready_at[idx] >= min_age and idx not in queueing:
                    stale.setdefault(run.definition.tasks[idx].queue, []).append(
                        (wf_id, idx, run.attempt[idx])
                    )
        missing: set[tuple[str, int, int]] = set()
        for queue, items in stale.items():
            present = self._queued_task_ids(self._queue(queue))
            if present is not None:
                missing.update(i for i in items if p.message_id(*i) not in present)
        if self.completions.counts().ready:
            return False  # events not yet applied may explain them: no conclusion
        confirmed, self._missing = missing & self._missing, missing
        for wf_id, idx, attempt in sorted(confirmed):
            active = self.active.get(wf_id)
            if active is None or active.run.st[idx] != READY or active.run.attempt[idx] != attempt:
                continue
            log.warning(
                "re-queueing %s/%s attempt %d: %s",
                wf_id,
                active.run.definition.tasks[idx].name,
                attempt,
                "its message is missing"
                if min_age
                else "ready in the state a predecessor wrote, which did not queue it before it stopped",
            )
            self.stats.repaired += 1
            self._apply(wf_id, active, [Dispatch(idx, attempt)], now)
        return True

    def _queued_task_ids(self, q: SpoolQueue) -> set[str] | None:
        """Ids of the task messages anywhere in `q`, bundle members included; None if a
        bundle moved while we looked (judge this queue next time)."""
        present = _queued_ids(q)
        bundles = [i for i in present if p.is_bundle_id(i)]

        def add_members(payload: Any) -> None:
            present.update(
                p.message_id(m["wf"], m["idx"], m["attempt"])
                for m in p.members(payload) or []
                if _is_task_message(m)
            )

        if bundles and not q.payloads(bundles, add_members)[1]:
            return None
        return present

    def _log_stats(self, mono: float) -> None:
        last_t, last_n = self._last_stats
        s = self.stats
        if last_t:
            rate = (s.completions - last_n) / max(mono - last_t, 1e-9)
            log.info(
                "coordinator stats: completions=%d (+%d, %.1f/s) pushed=%d batches=%d conflicts=%d dupes=%d "
                "active=%d waiting=%d workers_lost=%d repaired=%d",
                s.completions,
                s.completions - last_n,
                rate,
                s.pushed,
                s.batches,
                s.conflicts,
                s.duplicates,
                len(self.active),
                len(self.waiting),
                s.workers_lost,
                s.repaired,
            )
        self._last_stats = (mono, s.completions)
        self._next_stats = mono + self.stats_interval


def freeze_heap() -> None:
    """Exclude what the process holds so far (imports, loaded definitions) from garbage
    collection: a burst of events allocates enough to trigger full collections, and
    each one walked all of it (~25 ms of a 1,000-task fan-out's 0.4 s). Called by the
    processes that host a coordinator, once they are set up."""
    gc.freeze()


def _queued_ids(q: SpoolQueue) -> set[str]:
    """The ids of every message in the queue: ready, delayed or claimed."""
    return {parsed[2] for name in q.all_names() if (parsed := parse_name(name)) is not None}


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _is_task_message(m: Any) -> bool:
    return isinstance(m, dict) and {"wf", "idx", "attempt"} <= m.keys()


@functools.lru_cache(maxsize=1024)
def workflow_traceparent(wf_id: str) -> str:
    """W3C traceparent naming the workflow's root span (every task span's parent)."""
    return traceparent(otel_trace.get_current_span(workflow_context(wf_id)).get_span_context())


__all__ = ["COMPLETED", "STATE_NAMES", "Coordinator"]
