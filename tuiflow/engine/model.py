"""The compiled form of a workflow, the one the engine runs: `Definition` and `TaskDef`.

`tuiflow.engine.compiler` turns a workflow file or the builder's mapping into a `Definition`
(validating it and expanding ``foreach``); the definition is immutable and is what gets
stored at submit. This module stays free of the compiler's dependencies (pydantic,
YAML) so that the processes that only run workflows (coordinator, workers, dashboard)
start fast.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from tuiflow.engine.expr import Expression, Template, clip, has_template, strings_in
from tuiflow.errors import TuiflowError

DEFINITION_FORMAT = 1
#: executors the workers know; `executor:` names one explicitly (`run` means shell, `call` python)
EXECUTORS = ("shell", "python", "transformers", "diffusers", "vllm")

# ------------------------------------------------------------------------------ limits
# What the engine can run, checked by the compiler so that no value a workflow gives can
# fail later on the shared coordinator or in a worker.
#: the queue names each message by 32767 - priority in five digits (spool.queue's range)
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767
MAX_GPUS = 64
MAX_RETRIES = 1000
#: seconds: 30 days (a longer task should not rely on one attempt)
MAX_TIMEOUT = 30 * 86400.0
#: seconds: 1 day
MAX_BACKOFF = 86400.0
#: the integers the store (msgpack) can hold
MIN_STORED_INT, MAX_STORED_INT = -(2**63), 2**64 - 1


# ------------------------------------------------------------------------------ errors
@dataclasses.dataclass(frozen=True)
class Issue:
    message: str
    task: str | None = None
    field: str | None = None
    line: int | None = None

    def render(self, source: str) -> str:
        # the task and field are the user's text (an unknown key may be long): clipped
        where = [source + (f":{self.line}" if self.line else "")]
        if self.task:
            where.append(f"task {clip(self.task, 80)!r}")
        if self.field:
            where.append(f"field {clip(self.field, 80)!r}")
        return f"{', '.join(where)}: {self.message}"


class WorkflowValidationError(TuiflowError, ValueError):
    """The workflow is invalid; `.issues` lists every problem found."""

    def __init__(self, source: str, issues: list[Issue]):
        self.source = source
        self.issues = issues
        lines = [i.render(source) for i in issues]
        head = (
            f"{source}: {len(issues)} problem{'s' if len(issues) != 1 else ''}" if len(issues) > 1 else None
        )
        super().__init__("\n".join([head, *("  " + ln for ln in lines)] if head else lines))

    def to_json(self) -> list[dict[str, Any]]:
        return [{"file": self.source, **dataclasses.asdict(i)} for i in self.issues]


# ------------------------------------------------------------------ compiled form
@dataclasses.dataclass(frozen=True, slots=True)
class TaskDef:
    """One task after defaults are applied and ``foreach`` is expanded."""

    name: str
    depends_on: tuple[str, ...]
    dep_policy: str
    condition: str | None
    executor: str
    #: what the executor runs: {"run": str} | {"argv": [...]} | {"call", "kwargs"} | {"with": {...}};
    #: plus "env", "cwd". Strings may hold {{ templates }}.
    spec: dict[str, Any]
    queue: str
    gpus: int
    timeout: float | None
    num_retries: int
    retry_backoff: float
    priority: int
    group: str | None = None  # the foreach task this one was expanded from
    item: Any = None
    index: int | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.name, "x": self.executor, "s": self.spec, "q": self.queue}
        if self.depends_on:
            out["d"] = list(self.depends_on)
        if self.dep_policy != "all":
            out["p"] = self.dep_policy
        if self.condition is not None:
            out["c"] = self.condition
        if self.gpus:
            out["g"] = self.gpus
        if self.timeout is not None:
            out["t"] = self.timeout
        if self.num_retries:
            out["r"] = self.num_retries
        if self.retry_backoff:
            out["b"] = self.retry_backoff
        if self.priority:
            out["pr"] = self.priority
        if self.group is not None:
            out["fg"], out["fi"], out["fx"] = self.group, self.item, self.index
        return out

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> TaskDef:
        return cls(
            name=d["n"],
            depends_on=tuple(d.get("d", ())),
            dep_policy=d.get("p", "all"),
            condition=d.get("c"),
            executor=d["x"],
            spec=d["s"],
            queue=d["q"],
            gpus=d.get("g", 0),
            timeout=d.get("t"),
            num_retries=d.get("r", 0),
            retry_backoff=d.get("b", 0.0),
            priority=d.get("pr", 0),
            group=d.get("fg"),
            item=d.get("fi"),
            index=d.get("fx"),
        )


class Definition:
    """A validated workflow, compiled for the engine: tasks by index, edges as index lists."""

    def __init__(
        self,
        name: str,
        tasks: list[TaskDef],
        *,
        params: dict[str, Any] | None = None,
        description: str | None = None,
        base_dir: str = ".",
        source: str | None = None,
        groups: dict[str, list[str]] | None = None,
        owner: str | None = None,
    ):
        self.name = name
        self.owner = owner
        self.tasks = tasks
        self.params = params or {}
        self.description = description
        self.base_dir = base_dir
        self.source = source
        self.groups = groups or {}
        self.index = {t.name: i for i, t in enumerate(tasks)}
        self.deps: list[tuple[int, ...]] = [tuple(self.index[d] for d in t.depends_on) for t in tasks]
        children: list[list[int]] = [[] for _ in tasks]
        for i, deps in enumerate(self.deps):
            for d in deps:
                children[d].append(i)
        self.children = [tuple(c) for c in children]
        self._templated: list[bool | None] = [None] * len(tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def templated(self, idx: int) -> bool:
        """Whether task `idx`'s spec holds a {{ template }}, to render for every attempt;
        the others are sent as they are (most tasks of a large fan-out). Found out once per
        task, when it is first dispatched."""
        found = self._templated[idx]
        if found is None:
            found = self._templated[idx] = any(has_template(s) for s in strings_in(self.tasks[idx].spec))
        return found

    @functools.cached_property
    def prefixes(self) -> list[str]:
        """Prefix groups ("prep", "train"...) in order of first appearance."""
        seen: dict[str, None] = {}
        for t in self.tasks:
            if "/" in t.name:
                seen.setdefault(t.name.split("/", 1)[0], None)
        return list(seen)

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": DEFINITION_FORMAT,
            "name": self.name,
            "description": self.description,
            "params": self.params,
            "base_dir": self.base_dir,
            "source": self.source,
            "groups": self.groups,
            "owner": self.owner,
            "tasks": [t.to_wire() for t in self.tasks],
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Definition:
        if d.get("format") != DEFINITION_FORMAT:
            raise ValueError(f"unknown definition format {d.get('format')!r}")
        return cls(
            d["name"],
            [TaskDef.from_wire(t) for t in d["tasks"]],
            params=d.get("params"),
            description=d.get("description"),
            base_dir=d.get("base_dir", "."),
            source=d.get("source"),
            groups=d.get("groups"),
            owner=d.get("owner"),
        )


# ------------------------------------------------------------- compiled expressions
@functools.lru_cache(maxsize=4096)
def _expression(source: str) -> Expression:
    return Expression(source)


@functools.lru_cache(maxsize=4096)
def _template(text: str) -> Template:
    return Template(text)
