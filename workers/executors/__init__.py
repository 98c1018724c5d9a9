"""Executors: how a task's spec turns into work. `EXECUTORS` maps names to classes; the
interface they implement is `workers.executors.interface`."""

from workers.executors.interface import Executor, InlineExecutor, Outcome, Phase, TaskContext
from workers.executors.python import PythonExecutor
from workers.executors.shell import ShellExecutor, resolve_cwd
from workers.executors.textgen import TextGenExecutor

EXECUTORS: dict[str, type[Executor]] = {
    "shell": ShellExecutor,
    "python": PythonExecutor,
    "transformers": TextGenExecutor,
}

__all__ = [
    "EXECUTORS",
    "Executor",
    "InlineExecutor",
    "Outcome",
    "Phase",
    "PythonExecutor",
    "ShellExecutor",
    "TaskContext",
    "TextGenExecutor",
    "resolve_cwd",
]
