"""Executors: how a task's spec turns into work. `EXECUTORS` maps names to classes."""

from workers.executors.interface import Executor, Outcome, Phase, TaskContext
from workers.executors.python import PythonExecutor
from workers.executors.shell import ShellExecutor, resolve_cwd

EXECUTORS: dict[str, type] = {"shell": ShellExecutor, "python": PythonExecutor}

__all__ = [
    "EXECUTORS",
    "Executor",
    "Outcome",
    "Phase",
    "PythonExecutor",
    "ShellExecutor",
    "TaskContext",
    "resolve_cwd",
]
