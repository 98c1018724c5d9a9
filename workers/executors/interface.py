"""The executor interface: what a worker hands an executor, what it gets back, and every
method it calls on one. A new executor (diffusers, vLLM, ...) is written against this page.

Two kinds, told apart by the class attribute ``inline`` (never by probing for methods):

* `Executor` (``inline = False``): `run` takes an attempt to its end on a slot thread of the
  worker, honouring ``ctx.deadline`` and ``ctx.should_stop()`` (the shell executor);
* `InlineExecutor` (``inline = True``): the worker's loop follows the attempt itself, with no
  thread: `start` sends it, `fileno` becomes readable when it ended, `finish` reads its
  outcome; past its deadline or told to stop, `stop` ends it (on a slot thread, since
  stopping waits out a grace period). The python executor, whose long-lived process
  answers on a pipe, is one.

Either way the worker prepares the attempt (directory, span, environment: `TaskContext`)
before, and collects its output and writes its spans after, the same for every executor.

The attempt's files are reached through ``ctx.files`` (`workers.attemptdir.AttemptDir`),
never by path: ``ctx.files.log(layout.STDOUT_FILE)`` is the stdout log, opened without
following links and capped at the home's ``max_log_bytes`` (`workers.logcap.CappedLog`),
and ``ctx.files.write(layout.OUTPUT_FILE, data)`` writes an output the executor holds. The
``*_path`` fields are for the task (its environment) and for messages. An
`UnsafePathError` raised by ``ctx.files`` may be left to propagate: the attempt fails
with reason ``setup``, naming the path.
Executors subclass the protocol they implement, which gives them the defaults of the
optional methods (`warm`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from workers.attemptdir import AttemptDir
from workers.wire import FailKind, TaskMessage


@dataclasses.dataclass(slots=True)
class TaskContext:
    """One attempt, as an executor sees it. Paths are absolute."""

    msg: TaskMessage
    home_root: str
    attempt_dir: str
    #: the worker's environment, one dict shared by all its attempts and never changed
    base_env: dict[str, str]
    #: what this attempt sets on top of it (the task's `env`, TUIFLOW_*, TRACEPARENT...)
    task_env: dict[str, str]
    cwd: str
    stdout_path: str
    stderr_path: str
    output_path: str
    gpus: list[int]
    #: monotonic time (seconds) after which the attempt has timed out (None: no timeout)
    deadline: float | None
    #: returns why the attempt must stop (cancelled, timeout, worker stopped) once it must
    should_stop: Callable[[], FailKind | None]
    #: seconds between SIGTERM and SIGKILL when an attempt is stopped
    kill_grace: float = 5.0
    #: the attempt's directory, open: its files are created, written and read through it
    files: AttemptDir | None = None
    #: an output the executor already holds and wrote with ``files.write`` (the worker
    #: does not read it back); None: the worker reads ``output.json`` if there is one
    output: bytes | None = None

    @property
    def env(self) -> dict[str, str]:
        """The attempt's whole environment."""
        return {**self.base_env, **self.task_env}


@dataclasses.dataclass(slots=True)
class Phase:
    """A timed part of an attempt, recorded as a child span (wall-clock epoch seconds)."""

    name: str
    start: float
    end: float
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: moments inside it, as span events: (name, epoch seconds, attributes)
    events: list[tuple[str, float, dict[str, Any]]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Outcome:
    """How an attempt ended: completed (`failure` None) or failed, and why (`FailKind`),
    with a message a person can act on (`error`), the exit code where there is one, the
    executor's timed phases, and attributes it adds to the attempt's root span."""

    failure: FailKind | None = None
    error: str | None = None
    exit_code: int | None = None
    phases: list[Phase] = dataclasses.field(default_factory=list)
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def completed(
        cls,
        *,
        exit_code: int | None = None,
        phases: list[Phase] | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Outcome:
        return cls(None, None, exit_code, phases or [], attributes or {})

    @classmethod
    def failed(
        cls,
        kind: FailKind,
        error: str,
        *,
        exit_code: int | None = None,
        phases: list[Phase] | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Outcome:
        return cls(kind, error, exit_code, phases or [], attributes or {})

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def label(self) -> str:
        """The span's outcome: completed, failed, timeout, cancelled or worker stopped."""
        if self.failure is None:
            return "completed"
        return "failed" if self.failure is FailKind.ERROR else str(self.failure)


class Executor(Protocol):
    """Runs attempts of one kind of task. A worker keeps one instance per slot and executor
    name for its whole life, and calls it from one thread at a time.

    Attributes:
        name: the name task definitions use (``executor: <name>``).
        inline: False here: `run` is called on a slot thread. True: see `InlineExecutor`.
    """

    name: ClassVar[str]
    inline: ClassVar[bool] = False

    def run(self, ctx: TaskContext) -> Outcome:
        """Run one attempt to its end and say how it ended. Must return within about
        ``ctx.kill_grace`` seconds of ``ctx.deadline`` passing or ``ctx.should_stop()``
        naming a reason, having stopped whatever the attempt started."""
        ...

    def warm(self) -> None:
        """Start what the first attempt would otherwise wait for (a long-lived process and
        its imports). Called once per slot at the worker's start for ``--warm`` names; may
        raise OSError (logged; the first attempt tries again)."""
        return None

    def run_batch(self, ctxs: list[TaskContext]) -> list[Outcome]:
        """Run several attempts as one call (a merged batch: the worker hands an executor
        only tasks of one merge key, `workers.models.merging`), their outcomes in order.
        Executors that cannot merge run them one after the other."""
        return [self.run(ctx) for ctx in ctxs]

    def holds(self, spec: dict[str, Any]) -> bool:
        """Whether this slot's executor has what a task of `spec` needs loaded already (its
        model): the worker then starts it in this slot rather than another free one."""
        return False

    def loaded(self) -> list[tuple[str, ...]]:
        """The models this slot's executor holds loaded now (their residency keys)."""
        return []

    def close(self) -> None:
        """Release everything (processes, descriptors); the worker is stopping."""
        ...


class InlineExecutor(Executor, Protocol):
    """An executor whose attempts the worker's loop follows without a thread: `start`, then
    `finish` once `fileno` is readable, or `stop`. `run` must still work (for callers with
    a thread to spare)."""

    inline: ClassVar[bool] = True

    def start(self, ctx: TaskContext) -> Outcome | None:
        """Send the attempt off without waiting for it. None: it runs, and `fileno` becomes
        readable when it ended; an Outcome: it could not start (this ends the attempt)."""
        ...

    def fileno(self) -> int:
        """A descriptor that becomes readable when the started attempt has ended."""
        ...

    def finish(self, ctx: TaskContext) -> Outcome:
        """The outcome of the started attempt, once `fileno` is readable (never blocks long)."""
        ...

    def stop(self, ctx: TaskContext, reason: FailKind) -> Outcome:
        """End the started attempt for `reason` (timeout, cancelled, worker stopped), waiting
        up to ``ctx.kill_grace`` seconds for it to go before killing it."""
        ...
