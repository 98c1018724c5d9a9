"""What every executor receives and returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol


@dataclasses.dataclass
class TaskContext:
    """One attempt, as an executor sees it. Paths are absolute."""

    msg: dict[str, Any]
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
    #: monotonic time after which the attempt has timed out (None: no timeout)
    deadline: float | None
    #: returns a reason ("cancelled", "worker stopped", ...) once the attempt must stop
    should_stop: Callable[[], str | None]
    kill_grace: float = 5.0

    @property
    def env(self) -> dict[str, str]:
        """The attempt's whole environment."""
        return {**self.base_env, **self.task_env}


@dataclasses.dataclass
class Phase:
    """A timed part of an attempt, recorded as a child span (wall-clock epoch seconds)."""

    name: str
    start: float
    end: float
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Outcome:
    """How an attempt ended. `reason`: completed, error, timeout, cancelled, worker stopped."""

    reason: str
    error: str | None = None
    exit_code: int | None = None
    phases: list[Phase] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason == "completed"


class Executor(Protocol):
    """One per worker slot and executor name, kept for the worker's life. An executor with
    a long-lived process may also define ``warm()``: start it before the first task."""

    name: str

    def run(self, ctx: TaskContext) -> Outcome: ...

    def close(self) -> None: ...
