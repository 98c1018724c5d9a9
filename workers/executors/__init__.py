"""Executors: how a task's spec turns into work. `EXECUTORS` maps names to classes; the
interface they implement is `workers.executors.interface`."""

from workers.executors.interface import Executor, InlineExecutor, Outcome, Phase, TaskContext
from workers.executors.models import DiffusersExecutor, TransformersExecutor, VllmExecutor
from workers.executors.python import PythonExecutor
from workers.executors.shell import ShellExecutor, resolve_cwd

EXECUTORS: dict[str, type[Executor]] = {
    "shell": ShellExecutor,
    "python": PythonExecutor,
    "transformers": TransformersExecutor,
    "diffusers": DiffusersExecutor,
    "vllm": VllmExecutor,
}

__all__ = [
    "EXECUTORS",
    "DiffusersExecutor",
    "Executor",
    "InlineExecutor",
    "Outcome",
    "Phase",
    "PythonExecutor",
    "ShellExecutor",
    "TaskContext",
    "TransformersExecutor",
    "VllmExecutor",
    "resolve_cwd",
]
