"""Executors: how a task's spec turns into work. `EXECUTORS` maps names to classes."""

from .base import Executor, Outcome, Phase, TaskContext
from .python import PythonExecutor
from .shell import ShellExecutor, resolve_cwd

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
