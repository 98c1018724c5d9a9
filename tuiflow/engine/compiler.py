"""Workflow files and the builder's mappings, validated and compiled to a `Definition`.

A workflow file (YAML or JSON) or the Python builder (`tuiflow.sdk.builder`) produces a raw
mapping; `compile_workflow` validates it (types with pydantic, then names, dependencies,
cycles, executors, conditions and templates) and expands ``foreach`` tasks. Every problem
found is reported at once, each naming the file, the task, the field and, for YAML, the
line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuiflow.engine.expr import Expression, ExpressionError, has_template, strings_in
from tuiflow.engine.model import (
    EXECUTORS,
    Definition,
    Issue,
    TaskDef,
    WorkflowValidationError,
    _expression,
    _template,
)

TASK_NAME_RE = re.compile(r"[A-Za-z0-9_.=\-\[\]]+(/[A-Za-z0-9_.=\-\[\]]+)*\Z")
MAX_TASK_NAME = 200
MAX_FOREACH = 1_000_000
_CALL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")
_QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=-]{0,99}\Z")


# ------------------------------------------------------------------- the file format
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=False)


NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Defaults(_Strict):
    queue: str | None = None
    num_retries: NonNegInt | None = None
    timeout: PosFloat | None = None
    retry_backoff: NonNegFloat | None = None
    gpus: NonNegInt | None = None
    env: dict[str, str | int | float | bool] | None = None
    cwd: str | None = None
    priority: int | None = None


class TaskModel(_Strict):
    name: str
    depends_on: list[str] = []
    dep_policy: Literal["all", "any"] = "all"
    condition: str | None = None
    run: str | list[str] | None = None
    call: str | None = None
    kwargs: dict[str, Any] = {}
    executor: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    foreach: list[Any] | dict[str, Any] | str | None = None
    queue: str | None = None
    gpus: NonNegInt | None = None
    env: dict[str, str | int | float | bool] | None = None
    cwd: str | None = None
    timeout: PosFloat | None = None
    num_retries: NonNegInt | None = None
    retry_backoff: NonNegFloat | None = None
    priority: int | None = None


class WorkflowModel(_Strict):
    name: str
    description: str | None = None
    params: dict[str, Any] = {}
    defaults: Defaults = Defaults()
    tasks: list[dict[str, Any]] = Field(min_length=1)


def json_schema() -> dict[str, Any]:
    """JSON Schema of workflow files (for editors: `tuiflow schema`)."""
    schema = WorkflowModel.model_json_schema(by_alias=True)
    schema["properties"]["tasks"]["items"] = {"$ref": "#/$defs/TaskModel"}
    schema.setdefault("$defs", {})["TaskModel"] = TaskModel.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tuiflow workflow"
    return schema


# ------------------------------------------------------------------- line numbers
class LineMap:
    """Where things are in a YAML file: the line of each task and of each of its fields."""

    def __init__(self) -> None:
        self.top: dict[str, int] = {}
        self.tasks: list[int] = []
        self.fields: list[dict[str, int]] = []

    def task(self, i: int | None) -> int | None:
        return self.tasks[i] if i is not None and i < len(self.tasks) else None

    def field(self, i: int | None, name: str | None) -> int | None:
        if i is None or i >= len(self.fields):
            return self.top.get(name) if name else None
        return self.fields[i].get(name or "", self.task(i)) if name else self.task(i)


def _yaml_lines(node: yaml.Node) -> LineMap:
    lines = LineMap()
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key, value in node.value:
        lines.top[str(key.value)] = key.start_mark.line + 1
        if key.value == "tasks" and isinstance(value, yaml.SequenceNode):
            for item in value.value:
                lines.tasks.append(item.start_mark.line + 1)
                fields = {}
                if isinstance(item, yaml.MappingNode):
                    fields = {str(k.value): k.start_mark.line + 1 for k, _ in item.value}
                lines.fields.append(fields)
    return lines


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_file(path: str | os.PathLike[str]) -> tuple[Any, LineMap]:
    """Parse a YAML or JSON workflow file into (raw data, line map)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise WorkflowValidationError(source, [Issue("file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise WorkflowValidationError(source, [Issue(f"cannot read: {e}")]) from None
    return parse_text(text, source)


def parse_text(text: str, source: str) -> tuple[Any, LineMap]:
    if source.endswith(".json"):
        try:
            return json.loads(text), LineMap()
        except json.JSONDecodeError as e:
            raise WorkflowValidationError(
                source, [Issue(f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno)]
            ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = e.problem or e.context or "invalid YAML"
        col = f" (column {mark.column + 1})" if mark else ""
        raise WorkflowValidationError(source, [Issue(f"invalid YAML: {problem}{col}", line=line)]) from None
    except yaml.YAMLError as e:
        raise WorkflowValidationError(source, [Issue(f"invalid YAML: {e}")]) from None
    finally:
        loader.dispose()
    return data, _yaml_lines(node) if node is not None else LineMap()


# ------------------------------------------------------------------------ compiling
def parse_set_values(pairs: Iterable[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (3 -> int, true -> bool)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise WorkflowValidationError(
                "--set", [Issue(f"expects key=value, got {pair!r}", field="params")]
            )
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def compile_workflow(
    raw: Any,
    *,
    source: str = "<workflow>",
    lines: LineMap | None = None,
    base_dir: str | None = None,
    set_values: Mapping[str, Any] | None = None,
) -> Definition:
    """Validate a raw workflow mapping and compile it; WorkflowValidationError lists every problem.

    Four passes, each adding what it finds to one list of issues: the top level (name,
    params, `--set` values), each task's fields, foreach expansion with the defaults
    applied, and the references between tasks (dependencies, conditions, templates). A
    dependency cycle is looked for only in a workflow without other problems.
    """
    lines = lines or LineMap()
    issues: list[Issue] = []
    wf = _validate_top(raw, source, lines)
    if not wf.name.strip() or len(wf.name) > 100:
        issues.append(Issue("name must be 1-100 characters", field="name", line=lines.top.get("name")))
    params = _params(wf, set_values, issues)
    models = _task_models(wf, lines, issues)
    tasks, groups = _expand(models, wf.defaults, params, lines, issues)
    final = _check_references(tasks, groups, wf, params, lines, issues)
    if not issues:
        cycle = _find_cycle(final)
        if cycle:
            shown = " -> ".join(cycle)
            issues.append(
                Issue(
                    f"dependency cycle: {shown} (each depends on the next)", task=cycle[0], field="depends_on"
                )
            )
    if issues:
        raise WorkflowValidationError(source, issues)
    return Definition(
        wf.name,
        final,
        params=params,
        description=wf.description,
        base_dir=base_dir or os.getcwd(),
        source=source,
        groups=groups,
    )


def _validate_top(raw: Any, source: str, lines: LineMap) -> WorkflowModel:
    """The workflow's top level, or WorkflowValidationError (nothing below can be checked)."""
    if not isinstance(raw, dict):
        raise WorkflowValidationError(source, [Issue("a workflow must be a mapping with 'name' and 'tasks'")])
    try:
        return WorkflowModel.model_validate(raw)
    except ValidationError as e:
        issues = []
        for err in e.errors():
            loc = err["loc"]
            field = str(loc[0]) if loc else None
            if len(loc) > 1 and field == "defaults":
                field = f"defaults.{loc[1]}"
            issues.append(Issue(err["msg"], field=field, line=lines.top.get(str(loc[0])) if loc else None))
        raise WorkflowValidationError(source, issues) from None


def _params(wf: WorkflowModel, set_values: Mapping[str, Any] | None, issues: list[Issue]) -> dict[str, Any]:
    """The declared params with the `--set` values applied (only declared ones may be set)."""
    params = dict(wf.params)
    for key, value in (set_values or {}).items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none declared"
            issues.append(Issue(f"--set {key}: no such param (params: {known})", field="params"))
        else:
            params[key] = value
    return params


def _task_models(wf: WorkflowModel, lines: LineMap, issues: list[Issue]) -> list[tuple[int, TaskModel]]:
    """(position, validated fields) of every task whose fields are valid."""
    models: list[tuple[int, TaskModel]] = []
    for i, task_raw in enumerate(wf.tasks):
        name = task_raw.get("name") if isinstance(task_raw, dict) else None
        label = name if isinstance(name, str) and name else f"#{i + 1}"
        if not isinstance(task_raw, dict):
            issues.append(Issue("a task must be a mapping", task=label, line=lines.task(i)))
            continue
        try:
            models.append((i, TaskModel.model_validate(task_raw)))
        except ValidationError as e:
            for err in e.errors():
                loc = [str(x) for x in err["loc"]]
                field = ".".join(loc) if loc else None
                msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
                issues.append(
                    Issue(msg, task=label, field=field, line=lines.field(i, loc[0] if loc else None))
                )
    return models


def _expand(
    models: list[tuple[int, TaskModel]],
    d: Any,
    params: dict[str, Any],
    lines: LineMap,
    issues: list[Issue],
) -> tuple[list[tuple[int, TaskDef, TaskModel]], dict[str, list[str]]]:
    """Tasks with the defaults (`d`) applied and each foreach expanded into its members:
    ((position, task, its fields) in order, foreach group -> member names)."""
    tasks: list[tuple[int, TaskDef, TaskModel]] = []
    groups: dict[str, list[str]] = {}
    declared: dict[str, int] = {}
    for i, m in models:
        issue_at = functools.partial(_issue_at, issues, m.name, i, lines)
        if (
            len(m.name) > MAX_TASK_NAME
            or not TASK_NAME_RE.match(m.name)
            or any(seg in (".", "..") for seg in m.name.split("/"))
        ):
            issue_at(
                "name",
                f"invalid task name {m.name!r}: use letters, digits and _ . = - [ ], with '/' between "
                f"prefix groups (at most {MAX_TASK_NAME} characters)",
            )
            continue
        if m.name in declared:
            issue_at("name", f"duplicate task name (first defined at task #{declared[m.name] + 1})")
            continue
        declared[m.name] = i
        common = _with_defaults(m, d, issue_at)
        if common is None:
            continue
        spec = common.pop("spec")
        if m.foreach is None:
            tasks.append((i, TaskDef(name=m.name, spec=spec, **common), m))
            continue
        items = _foreach_items(m.foreach, params, issue_at)
        if items is None:
            continue
        if len(items) > MAX_FOREACH:
            issue_at("foreach", f"foreach has {len(items)} items; the limit is {MAX_FOREACH}")
            continue
        members = [f"{m.name}[{k}]" for k in range(len(items))]
        groups[m.name] = members
        for k, item in enumerate(items):
            td = TaskDef(name=members[k], spec=spec, group=m.name, item=item, index=k, **common)
            tasks.append((i, td, m))
    return tasks, groups


def _with_defaults(m: TaskModel, d: Any, issue_at: Callable[[str, str], None]) -> dict[str, Any] | None:
    """A task's executor, spec and settings with the workflow's defaults applied (None:
    no valid executor)."""
    executor, spec = _executor_and_spec(m, issue_at)
    if executor is None:
        return None
    env = {**(d.env or {}), **(m.env or {})}
    if env:
        spec["env"] = {k: str(v) if not isinstance(v, str) else v for k, v in env.items()}
    if (cwd := m.cwd if m.cwd is not None else d.cwd) is not None:
        spec["cwd"] = cwd
    queue = m.queue or d.queue or "default"
    if not _QUEUE_RE.match(queue):
        issue_at("queue", f"invalid queue name {queue!r}")
    return dict(
        spec=spec,
        depends_on=tuple(m.depends_on),
        dep_policy=m.dep_policy,
        condition=m.condition,
        executor=executor,
        queue=queue,
        gpus=m.gpus if m.gpus is not None else (d.gpus or 0),
        timeout=m.timeout if m.timeout is not None else d.timeout,
        num_retries=m.num_retries if m.num_retries is not None else (d.num_retries or 0),
        retry_backoff=m.retry_backoff if m.retry_backoff is not None else (d.retry_backoff or 0.0),
        priority=m.priority if m.priority is not None else (d.priority or 0),
    )


def _check_references(
    tasks: list[tuple[int, TaskDef, TaskModel]],
    groups: dict[str, list[str]],
    wf: WorkflowModel,
    params: dict[str, Any],
    lines: LineMap,
    issues: list[Issue],
) -> list[TaskDef]:
    """The tasks with their dependencies expanded (a foreach group means all its members),
    after checking every dependency, condition and template (once per source task)."""
    names = {td.name for _, td, _ in tasks}
    # Tasks that failed their own checks still exist for their dependents' sake: a typo in a
    # task's fields must not also read as "unknown task" everywhere it is used.
    raw_names = {t["name"] for t in wf.tasks if isinstance(t, dict) and isinstance(t.get("name"), str)}
    for g in groups:
        if g in names:
            issues.append(Issue(f"name clashes with the foreach group {g!r}", task=g))
    checked: set[int] = set()
    final: list[TaskDef] = []
    for i, expanded, m in tasks:
        deps = [member for dep in expanded.depends_on for member in groups.get(dep, [dep])]
        td = dataclasses.replace(expanded, depends_on=tuple(dict.fromkeys(deps)))
        final.append(td)
        if i in checked:
            continue
        checked.add(i)
        issue_at = functools.partial(_issue_at, issues, m.name, i, lines)
        for dep in m.depends_on:
            if dep == m.name:
                issue_at("depends_on", "a task cannot depend on itself")
            elif dep not in names and dep not in groups and dep not in raw_names:
                issue_at("depends_on", f"unknown task {dep!r}{_suggest(dep, raw_names | set(groups))}")
        _check_expressions(m, td, groups, params, issue_at)
    return final


def _check_expressions(
    m: TaskModel,
    td: TaskDef,
    groups: dict[str, list[str]],
    params: dict[str, Any],
    issue_at: Callable[[str, str], None],
) -> None:
    """A task's condition and templates parse, and refer only to what they may: inputs of
    direct dependencies, declared params, item/index in foreach tasks."""
    allowed_inputs = set(m.depends_on)
    for dep in m.depends_on:
        allowed_inputs.update(groups.get(dep, []))
    exprs: list[tuple[str, Expression]] = []
    if m.condition is not None:
        try:
            exprs.append(("condition", _expression(m.condition)))
        except ExpressionError as e:
            issue_at("condition", str(e))
    for field, value in _template_fields(td):
        for text in strings_in(value):
            if has_template(text):
                try:
                    exprs.extend((field, e) for e in _template(text).exprs)
                except ExpressionError as e:
                    issue_at(field, str(e))
    for field, expr in exprs:
        for ref in sorted(expr.input_refs - allowed_inputs):
            issue_at(
                field,
                f"refers to inputs[{ref!r}], which is not a direct dependency "
                f"(depends_on: {', '.join(m.depends_on) or 'nothing'})",
            )
        if expr.dynamic_inputs and not m.depends_on:
            issue_at(field, "uses inputs[...] but the task has no dependencies")
        if ("item" in expr.names or "index" in expr.names) and m.foreach is None:
            issue_at(field, "uses item/index, which exist only in foreach tasks")
        for ref in sorted(expr.param_refs - set(params)):
            issue_at(field, f"refers to params.{ref}, which is not declared under params:")


def _issue_at(issues: list[Issue], task: str, i: int, lines: LineMap, field: str, message: str) -> None:
    issues.append(
        Issue(message, task=task, field=field, line=lines.field(i, field.split(".", maxsplit=1)[0]))
    )


def _foreach_items(spec: Any, params: dict[str, Any], issue_at: Any) -> list[Any] | None:
    """foreach: a list; {range: N | [start, stop] | [start, stop, step]}; or "{{ params.x }}"."""
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict):
        if set(spec) != {"range"}:
            issue_at("foreach", "a foreach mapping must be {range: N} or {range: [start, stop, step]}")
            return None
        bounds = spec["range"] if isinstance(spec["range"], list) else [spec["range"]]
        if not (1 <= len(bounds) <= 3) or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in bounds
        ):
            issue_at("foreach", "range takes 1 to 3 integers")
            return None
        if len(bounds) == 3 and bounds[2] == 0:
            issue_at("foreach", "range step must not be 0")
            return None
        r = range(*bounds)
        if len(r) > MAX_FOREACH:
            issue_at("foreach", f"foreach has {len(r)} items; the limit is {MAX_FOREACH}")
            return None
        return list(r)
    try:
        template = _template(spec)
        if not template.single:
            raise ExpressionError("must be a single {{ expression }} over params")
        if template.exprs[0].names - {"params"}:
            raise ExpressionError("may only use params (the list must be known at submit)")
        value = template.render({"params": params})
    except ExpressionError as e:
        issue_at("foreach", str(e))
        return None
    if not isinstance(value, list):
        issue_at("foreach", f"{spec!r} gives a {type(value).__name__}, not a list")
        return None
    return value


def _executor_and_spec(m: TaskModel, issue_at: Any) -> tuple[str | None, dict[str, Any]]:
    given = [k for k in ("run", "call") if getattr(m, k) is not None]
    if len(given) > 1:
        issue_at("run", "give either run (shell) or call (python), not both")
        return None, {}
    executor = m.executor or ("shell" if m.run is not None else "python" if m.call is not None else None)
    if executor is None:
        issue_at("run", "nothing to run: give run (a shell command), call (module:function) or executor")
        return None, {}
    if executor not in EXECUTORS:
        issue_at("executor", f"unknown executor {executor!r} (known: {', '.join(EXECUTORS)})")
        return None, {}
    spec: dict[str, Any] = {}
    if executor == "shell":
        if m.run is None:
            issue_at("run", "the shell executor needs run: a command string or an argv list")
            return None, {}
        if isinstance(m.run, str):
            if not m.run.strip():
                issue_at("run", "empty command")
            spec["run"] = m.run
        else:
            if not m.run:
                issue_at("run", "empty argv list")
            spec["argv"] = list(m.run)
    elif executor == "python":
        if m.call is None:
            issue_at("call", "the python executor needs call: 'module:function'")
            return None, {}
        if not _CALL_RE.match(m.call):
            issue_at("call", f"call must look like 'package.module:function', not {m.call!r}")
        spec["call"] = m.call
        spec["kwargs"] = dict(m.kwargs)
    if m.with_:
        spec["with"] = dict(m.with_)
    if m.kwargs and executor != "python":
        issue_at("kwargs", "kwargs are passed to python tasks only (use with: for executor parameters)")
    return executor, spec


def _template_fields(td: TaskDef) -> Iterable[tuple[str, Any]]:
    s = td.spec
    for field, key in (
        ("run", "run"),
        ("run", "argv"),
        ("kwargs", "kwargs"),
        ("with", "with"),
        ("env", "env"),
    ):
        if key in s:
            yield field, s[key]
    if "cwd" in s:
        yield "cwd", s["cwd"]


def _suggest(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _find_cycle(tasks: list[TaskDef]) -> list[str] | None:
    """A dependency cycle as a list of names (first == last), or None. Iterative DFS."""
    index = {t.name: i for i, t in enumerate(tasks)}
    deps = [[index[d] for d in t.depends_on if d in index] for t in tasks]
    color = [0] * len(tasks)  # 0 new, 1 on stack, 2 done
    parent = [-1] * len(tasks)
    for root in range(len(tasks)):
        if color[root]:
            continue
        stack = [(root, 0)]
        color[root] = 1
        while stack:
            node, k = stack[-1]
            if k < len(deps[node]):
                stack[-1] = (node, k + 1)
                nxt = deps[node][k]
                if color[nxt] == 0:
                    color[nxt], parent[nxt] = 1, node
                    stack.append((nxt, 0))
                elif color[nxt] == 1:
                    cycle = [nxt]
                    cur = node
                    while cur != nxt:
                        cycle.append(cur)
                        cur = parent[cur]
                    cycle.append(nxt)
                    # we walked dependency edges (task -> what it depends on); show them in order
                    return [tasks[c].name for c in reversed(cycle)]
            else:
                color[node] = 2
                stack.pop()
    return None


def load_workflow(path: str | os.PathLike[str], set_values: Mapping[str, Any] | None = None) -> Definition:
    """Load, validate and compile a workflow file."""
    source = os.fspath(path)
    raw, lines = load_file(source)
    return compile_workflow(
        raw,
        source=source,
        lines=lines,
        base_dir=os.path.dirname(os.path.abspath(source)),
        set_values=set_values,
    )
