"""One attempt on a worker, and what the worker does around its executor for every one.

Before the executor (`AttemptSetup.prepare`): the attempt directory
(`layout.attempt_dir`, with its logs directory), made and opened through descriptors that
follow no link (`workers.attemptdir`), the attempt's span (`AttemptTrace`, the root of its
spans, parented on the workflow's; its file opened now), its environment (the task's
``env`` and the ``TUIFLOW_*`` variables on top of the worker's), its inputs file, and the
`TaskContext` the executor gets. After (`AttemptSetup.conclude`): the executor's phases as
spans, the output collected (`workers.outputs`), and the spans written, before the
attempt's final event can be published; then the directory's descriptors are closed. Each
of these is the same for every executor. A link or a planted file met on the way
(`UnsafePathError`) fails the attempt with reason ``setup``, naming the path.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import json
import logging
import os
import socket
import time
from typing import Any, cast

from analyzer import contract as c
from analyzer.contract import MODEL_EXECUTORS
from spool import StorageError, layout
from workers import outputs
from workers.attemptdir import DEFAULT_MAX_LOG_BYTES, AttemptDir, HomeDirs
from workers.claims import Claim
from workers.errors import UnsafePathError
from workers.executors import Executor, Outcome, TaskContext, resolve_cwd
from workers.tracing import AttemptTrace, Telemetry, span_context_from_traceparent
from workers.wire import AttemptKey, Event, EventKind, FailKind, TaskMessage

log = logging.getLogger("workers.worker")  # the daemon's log, whichever part speaks

HOSTNAME = socket.gethostname()


@dataclasses.dataclass(slots=True, eq=False)
class Attempt:
    """An attempt this worker runs: its task, the claim it came in, its slot and GPUs, and
    what the worker learns about it on the way. Times are wall-clock epoch seconds."""

    task: TaskMessage
    claim: Claim
    slot: int
    gpus: list[int]
    started_at: float
    #: why it must stop (set by the loop: markers, a hard stop); read by its executor
    stop_reason: FailKind | None = None
    #: its directory, open from `AttemptSetup.prepare` to `AttemptSetup.end_span`
    files: AttemptDir | None = None
    span: AttemptTrace | None = None
    ctx: TaskContext | None = None
    executor: Executor | None = None
    #: an inline attempt's executor descriptor, readable once it ended (-1: none)
    fd: int = -1
    #: the slot thread's work on it, if any (a hard stop waits for it)
    future: concurrent.futures.Future | None = None
    output: outputs.Output = outputs.NO_OUTPUT
    #: the merged batch it runs in (`AttemptRunner.launch_batch`): its id and size
    batch: tuple[str, int] | None = None
    #: whether ending it frees its slot and GPUs (in a batch, only its first member does)
    holds_slot: bool = True
    key: AttemptKey = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.key = self.task.key  # made once: the loop looks attempts up by it several times

    def should_stop(self) -> FailKind | None:
        return self.stop_reason

    def started(self) -> Event:
        return Event(EventKind.STARTED, self.key, self.started_at)

    def ended(self, outcome: Outcome, at: float) -> Event:
        """Its final event: completed with its output, or failed with its reason."""
        if outcome.ok:
            out = self.output
            return Event(
                EventKind.COMPLETED,
                self.key,
                at,
                started_at=self.started_at,
                output=out.value,
                output_ref=out.ref,
            )
        return Event(
            EventKind.FAILED,
            self.key,
            at,
            started_at=self.started_at,
            error=outcome.error or str(outcome.failure),
            reason=outcome.failure,
            exit_code=outcome.exit_code,
        )


class AttemptSetup:
    """Prepares attempts for their executors and concludes them (see the module docstring).

    Parameters:
        home_root: the home (attempt directories are under it).
        worker_id: goes into spans and ``$TUIFLOW_WORKER``.
        telemetry: makes the attempts' spans.
        gpus_managed: the worker hands out GPUs (``$CUDA_VISIBLE_DEVICES`` is set, empty
            for a task that needs none).
        kill_grace: seconds between SIGTERM and SIGKILL when an attempt is stopped.
        max_log_bytes: most bytes of stdout (and as many of stderr) kept per attempt.
    """

    def __init__(
        self,
        home_root: str,
        worker_id: str,
        telemetry: Telemetry,
        *,
        gpus_managed: bool,
        kill_grace: float,
        max_log_bytes: int = DEFAULT_MAX_LOG_BYTES,
    ):
        self.home_root = home_root
        self.worker_id = worker_id
        self.telemetry = telemetry
        self.gpus_managed = gpus_managed
        self.kill_grace = kill_grace
        self.dirs = HomeDirs(home_root, max_log_bytes)
        # Every task starts from this environment (copied once: os.environ decodes per key).
        # One dict for the worker's life: a python executor is sent only what changed.
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("TUIFLOW_")}

    def prepare(self, a: Attempt) -> Outcome | None:
        """Attempt directory, span, environment and context of `a` (set on it). Returns an
        Outcome when it cannot run at all (no such executor, no such working directory).

        Raises:
            UnsafePathError: a link or a planted file in its directory (the runner fails
                the attempt with reason ``setup``; `end_span` closes what was opened).
        """
        task = a.task
        files = a.files = self.dirs.attempt(task.wf, task.task, task.attempt)
        attempt_dir = files.path
        output_path = files.file_path(layout.OUTPUT_FILE)
        if not files.fresh:
            # A previous run of this very attempt (after a crash) must not leak in.
            files.remove(layout.OUTPUT_FILE)
        spans = files.open_append(layout.SPANS_FILE, logs=True)
        span = a.span = self.telemetry.attempt(
            files.log_path(layout.SPANS_FILE),
            span_context_from_traceparent(task.traceparent),
            self._attributes(a),
            a.started_at,
            fd=spans,
        )
        env = self._environment(a, files, output_path, span)
        a.ctx = TaskContext(
            msg=task,
            home_root=self.home_root,
            attempt_dir=attempt_dir,
            base_env=self.base_env,
            task_env=env,
            cwd=resolve_cwd(task.base_dir or os.getcwd(), task.spec.get("cwd")),
            stdout_path=files.file_path(layout.STDOUT_FILE),
            stderr_path=files.file_path(layout.STDERR_FILE),
            output_path=output_path,
            gpus=a.gpus,
            deadline=time.monotonic() + float(task.timeout) if task.timeout else None,
            should_stop=a.should_stop,
            kill_grace=self.kill_grace,
            files=files,
        )
        if a.executor is None:
            return Outcome.failed(FailKind.ERROR, f"this worker has no executor {task.executor!r}")
        if not os.path.isdir(a.ctx.cwd):
            return Outcome.failed(
                FailKind.ERROR, f"working directory {a.ctx.cwd} does not exist on {socket.gethostname()}"
            )
        return None

    def _attributes(self, a: Attempt) -> dict[str, Any]:
        task = a.task
        attributes = {
            c.ATTR_WORKFLOW_ID: task.wf,
            c.ATTR_WORKFLOW_NAME: task.wf_name,
            c.ATTR_RUN_ID: task.wf,
            c.ATTR_TASK: task.task,
            c.ATTR_ATTEMPT: task.attempt,
            c.ATTR_DEPENDS_ON: list(task.deps),
            c.ATTR_READY_AT: task.ready_at,
            c.ATTR_WORKER: self.worker_id,
            c.ATTR_HOST: HOSTNAME,
            c.ATTR_QUEUE: task.queue,
            c.ATTR_GPUS: list(a.gpus),
            c.ATTR_EXECUTOR: task.executor,
            c.ATTR_DATA_ID: f"{task.wf}/{task.task}",
        }
        if a.batch is not None:
            attributes[c.ATTR_BATCH_ID], attributes[c.ATTR_BATCH_SIZE] = a.batch
        model = (task.spec.get("with") or {}).get("model") if task.executor in MODEL_EXECUTORS else None
        if model is not None:
            attributes[c.ATTR_MODEL] = str(model)
        return attributes

    def _environment(
        self, a: Attempt, files: AttemptDir, output_path: str, span: AttemptTrace
    ) -> dict[str, str]:
        """What the attempt sets on top of the worker's environment (not copied into it: a
        python executor is sent only what changed since its last task, found without
        looking at the shared part). Writes the inputs file if dependencies produced output."""
        task = a.task
        env = dict(task.spec.get("env") or {})
        env.update(
            {
                "TUIFLOW_HOME": self.home_root,
                "TUIFLOW_WORKFLOW_ID": task.wf,
                "TUIFLOW_TASK": task.task,
                "TUIFLOW_ATTEMPT": str(task.attempt),
                "TUIFLOW_TASK_DIR": files.path,
                "TUIFLOW_OUTPUT": output_path,
                "TUIFLOW_WORKER": self.worker_id,
            }
        )
        if self.gpus_managed:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, a.gpus))
        inputs = task.inputs
        if inputs is not None and any(v is not None for v in inputs.values()):
            t0 = time.time()
            data = json.dumps(inputs).encode()
            files.write(layout.INPUTS_FILE, data)  # before the task runs: nobody reads it yet
            env["TUIFLOW_INPUTS"] = files.file_path(layout.INPUTS_FILE)
            span.phase(c.READ_INPUTS_SPAN, t0, time.time(), **{c.ATTR_BYTES: len(data)})
        elif inputs:
            # No dependency produced output: name them without writing a file.
            env["TUIFLOW_UPSTREAM"] = json.dumps(list(inputs))
        # The task's own code parents its spans on its execute span; a model executor runs
        # none (its phases come back with the result, a merged batch's once for all)
        env["TRACEPARENT"] = span.traceparent if task.executor in MODEL_EXECUTORS else span.task_traceparent
        return env

    def conclude(self, a: Attempt, outcome: Outcome) -> Outcome:
        """The executor's phases as spans; on success, the output collected (`a.output`).
        Returns the attempt's outcome: a completed one fails if its output is not JSON."""
        span = a.span
        if span is None:  # it failed before it had one
            return outcome
        for phase in outcome.phases:
            span.phase(phase.name, phase.start, phase.end, phase.events, **phase.attributes)
        if outcome.ok:
            t0 = time.time()
            try:
                a.output = outputs.collect(a.task, a.ctx.files, self.home_root, a.ctx.output)
            except outputs.BadOutput as e:
                return Outcome.failed(FailKind.ERROR, str(e), exit_code=outcome.exit_code)
            span.phase(c.READY_SPAN, t0, time.time(), **{c.ATTR_BYTES: a.output.size})
        return outcome

    def end_span(self, a: Attempt, outcome: Outcome) -> None:
        """Write the attempt's spans (on disk before its event is published), then close its
        directory. Never raises: telemetry must not keep an attempt from ending."""
        span = a.span
        try:
            if span is None:
                return
            for key, value in outcome.attributes.items():
                span.set_attribute(key, value)
            span.set_attribute(c.ATTR_OUTCOME, outcome.label)
            if outcome.exit_code is not None:
                span.set_attribute(c.ATTR_EXIT_CODE, outcome.exit_code)
            end = time.time()
            if not outcome.ok:
                span.set_attribute(c.ATTR_ERROR, (outcome.error or "")[:500])
                span.set_error(outcome.error or str(outcome.failure))
                if not outcome.phases:
                    end = a.started_at  # it never started executing: a zero-length span
            span.end(end)
        except Exception:
            log.exception("could not write the spans of attempt %s", a.task.message_id)
        finally:
            if span is not None:
                span.close()
            if a.files is not None:
                a.files.close()

    def close(self) -> None:
        """Close the directory descriptors kept across attempts."""
        self.dirs.close()


def refused(a: Attempt, e: UnsafePathError) -> Outcome:
    """The outcome of an attempt whose directory held a link or a planted file (logged: an
    operator should know someone tried)."""
    log.warning("attempt %s of %s: %s", a.task.message_id, a.task.task, e)
    return Outcome.failed(FailKind.SETUP, str(e))


#: what the file system answers when the home takes no more files; not the task's fault
_HOME_UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def is_home_unwritable(e: BaseException) -> bool:
    """Whether `e` says the home takes no more files (an OSError or a StorageError)."""
    return getattr(e, "errno", None) in _HOME_UNWRITABLE


def home_unwritable(a: Attempt, e: Exception) -> Outcome:
    """The outcome of an attempt whose files the home could not take: it runs again once
    there is room, spending no retry (`FailKind.STORAGE`)."""
    if not isinstance(e, StorageError):  # a bare OSError of a write names no path: say where
        where = getattr(e, "filename", None) or (a.files.path if a.files is not None else "the home")
        e = StorageError.from_os("write in", where, cast(OSError, e))
    log.warning("attempt %s of %s: %s", a.task.message_id, a.task.task, e)
    return Outcome.failed(FailKind.STORAGE, f"the home could not take its files: {e}")


def worker_error(a: Attempt, e: Exception) -> Outcome:
    """The outcome of an attempt that a bug in the worker (not the task) ended."""
    log.exception("attempt %s failed inside the worker", a.task.task)
    return Outcome.failed(FailKind.ERROR, f"worker error: {type(e).__name__}: {e}")
