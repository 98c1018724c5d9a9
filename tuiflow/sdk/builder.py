"""Build workflows in Python instead of YAML; the same validation applies.

from tuiflow import Workflow
wf = Workflow("ml-pipeline", defaults={"num_retries": 1})
prep = wf.task("prep/featurize", run="python featurize.py")
rf = wf.task("train/rf", call="mypkg.train:random_forest", kwargs={"trees": 100}, depends_on=[prep])
wf.task("eval/compare", run="python compare.py", depends_on=[rf], condition="inputs['train/rf'].mae < 0.1")
definition = wf.compile()          # WorkflowValidationError lists every problem
"""

from __future__ import annotations

import json
import os
from typing import Any

from tuiflow.engine.compiler import compile_workflow
from tuiflow.engine.model import Definition


class TaskRef(str):
    """A task's name; pass it in depends_on."""

    __slots__ = ()


class Workflow:
    def __init__(
        self,
        name: str,
        *,
        defaults: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        description: str | None = None,
        base_dir: str | None = None,
    ):
        self.name = name
        self.defaults = dict(defaults or {})
        self.params = dict(params or {})
        self.description = description
        self.base_dir = base_dir or os.getcwd()
        self.tasks: list[dict[str, Any]] = []

    def task(self, name: str, *, depends_on: list[str] | tuple[str, ...] = (), **fields: Any) -> TaskRef:
        """Add a task; `fields` are those of a workflow file (use ``with_`` for ``with``)."""
        entry: dict[str, Any] = {"name": name, **fields}
        if "with_" in entry:
            entry["with"] = entry.pop("with_")
        if depends_on:
            entry["depends_on"] = [str(d) for d in depends_on]
        self.tasks.append(entry)
        return TaskRef(name)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "tasks": self.tasks}
        if self.defaults:
            data["defaults"] = self.defaults
        if self.params:
            data["params"] = self.params
        if self.description:
            data["description"] = self.description
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def compile(self, set_values: dict[str, Any] | None = None) -> Definition:
        return compile_workflow(
            self.to_dict(), source=f"<workflow {self.name}>", base_dir=self.base_dir, set_values=set_values
        )
