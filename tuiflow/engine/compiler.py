"""Workflow files and the builder's mappings, validated and compiled to a `Definition`.

A workflow file (YAML or JSON) or the Python builder (`tuiflow.sdk.builder`) produces a raw
mapping; `compile_workflow` validates it (types with pydantic, then names, ranges, stored
values, dependencies, cycles, executors, conditions and templates) and expands
``foreach`` tasks. Every problem found is reported at once, each naming the file, the
task, the field and, for YAML, the line.

Everything a workflow gives is checked here, so that nothing it holds can fail later on
the shared coordinator or in a worker: numbers are range-checked, stored values must fit
the store (64-bit integers, finite numbers, string keys), expressions that need nothing
from the run are evaluated (bounded, see `tuiflow.engine.expr`), shell templates must
stand where their values can be quoted, and parsing itself is bounded (YAML aliases may
not expand a file beyond `tuiflow.engine.reading.MAX_ALIAS_NODES`; a key given twice is an
error).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from tuiflow.engine.expr import Expression, ExpressionError, clip, has_template, strings_in
from tuiflow.engine.fileformat import TaskModel, WorkflowModel, described, int_text, model_problems
from tuiflow.engine.model import (
    EXECUTORS,
    MAX_STORED_INT,
    MIN_STORED_INT,
    Definition,
    Issue,
    TaskDef,
    WorkflowValidationError,
    _expression,
    _template,
)
from tuiflow.engine.modelspec import check_model_spec
from tuiflow.engine.reading import LineMap, load_file

_NAME_CHARS = r"[A-Za-z0-9_.=\-\[\]]"
TASK_NAME_RE = re.compile(rf"{_NAME_CHARS}+(/{_NAME_CHARS}+)*\Z")
#: workflow names: as task names, and spaces inside ("nightly eval/run 3")
WORKFLOW_NAME_RE = re.compile(r"[A-Za-z0-9_.=\-\[\]]([A-Za-z0-9_.=\-\[\] /]*[A-Za-z0-9_.=\-\[\]])?\Z")
MAX_TASK_NAME = 200
MAX_WORKFLOW_NAME = 100
MAX_FOREACH = 1_000_000
#: how deep a stored value (params, kwargs, with, foreach items) may nest
MAX_DATA_DEPTH = 100
#: how many parts a stored value may have (a shared part counts every time it appears)
MAX_DATA_NODES = 1_000_000
#: the cycle of a dependency error shows this many names at each end
CYCLE_ENDS = 5
_CALL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*\Z")
_QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=-]{0,99}\Z")
_ENV_NAME_RE = re.compile(r"[^=\x00]+\Z")


# ------------------------------------------------------------------------ compiling
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
    wf = _validate_top(raw, source, lines, issues)
    if not any(i.field == "name" for i in issues):
        _check_workflow_name(wf.name, lines, issues)
    params = _params(wf, set_values, lines, issues)
    models = _task_models(wf, lines, issues)
    tasks, groups = _expand(models, wf.defaults, params, lines, issues)
    final = _check_references(tasks, groups, wf, params, lines, issues)
    if not issues:
        cycle = _find_cycle(final)
        if cycle:
            issues.append(
                Issue(
                    f"dependency cycle: {_show_cycle(cycle)} (each depends on the next)",
                    task=cycle[0],
                    field="depends_on",
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


def _validate_top(raw: Any, source: str, lines: LineMap, issues: list[Issue]) -> WorkflowModel:
    """The workflow's top level. A problem in a field other than `tasks` is added to
    `issues` and the field left out, so the tasks are still checked; without valid tasks
    nothing below can be: WorkflowValidationError at once."""
    if not isinstance(raw, dict):
        raise WorkflowValidationError(source, [Issue("a workflow must be a mapping with 'name' and 'tasks'")])
    try:
        return WorkflowModel.model_validate(raw)
    except ValidationError as e:
        problems = model_problems(e, WorkflowModel, raw)
    for field, message in problems:
        issues.append(Issue(message, field=field, line=lines.top_field(field)))
    bad = {field.split(".", 1)[0].split("[", 1)[0] for field, _ in problems}
    if "tasks" in bad:
        raise WorkflowValidationError(source, issues)
    kept = {k: v for k, v in raw.items() if k not in bad and k in WorkflowModel.model_fields}
    kept.setdefault("name", "?")
    try:
        return WorkflowModel.model_validate(kept)
    except ValidationError:  # pragma: no cover - every refused field was left out
        raise WorkflowValidationError(source, issues) from None


def _check_workflow_name(name: str, lines: LineMap, issues: list[Issue]) -> None:
    """Names are printed by every listing and the dashboard: no control characters, no
    path-like parts."""
    if (
        len(name) > MAX_WORKFLOW_NAME
        or not WORKFLOW_NAME_RE.match(name)
        or any(seg.strip() in (".", "..", "") for seg in name.split("/"))
    ):
        issues.append(
            Issue(
                f"invalid workflow name {clip(name, 60)!r}: use 1-{MAX_WORKFLOW_NAME} letters, digits, "
                "spaces and _ . = - [ ], with '/' between parts (no '.' or '..' part)",
                field="name",
                line=lines.top.get("name"),
            )
        )


def _params(
    wf: WorkflowModel, set_values: Mapping[str, Any] | None, lines: LineMap, issues: list[Issue]
) -> dict[str, Any]:
    """The declared params with the `--set` values applied (only declared ones may be set)."""
    params = dict(wf.params)
    given = set()
    for key, value in (set_values or {}).items():
        if key not in params:
            known = ", ".join(sorted(params)) or "none declared"
            issues.append(Issue(f"--set {clip(key, 60)}: no such param (params: {known})", field="params"))
        else:
            params[key] = value
            given.add(key)
    for key, value in params.items():
        if (problem := _data_problem(value)) is not None:
            where, what = problem
            origin = " (from --set)" if key in given else ""
            issues.append(
                Issue(f"{what}{origin}", field=f"params.{key}{where}", line=lines.top.get("params"))
            )
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
            for field, message in model_problems(e, TaskModel, task_raw):
                line = lines.field(i, field.split(".", 1)[0].split("[", 1)[0])
                issues.append(Issue(message, task=label, field=field, line=line))
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
                f"invalid task name {clip(m.name, 60)!r}: use letters, digits and _ . = - [ ], with '/' "
                f"between prefix groups (at most {MAX_TASK_NAME} characters)",
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
    _check_text(spec, issue_at)
    queue = m.queue or d.queue or "default"
    if not _QUEUE_RE.match(queue):
        issue_at("queue", f"invalid queue name {clip(queue, 60)!r}")
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


def _check_text(spec: dict[str, Any], issue_at: Callable[[str, str], None]) -> None:
    """What becomes a process's command, environment and directory: text the operating
    system takes (no NUL; an environment name without '='). Stored values must fit the
    store (`_data_problem`)."""
    for field in ("run", "cwd"):
        if isinstance(spec.get(field), str) and "\x00" in spec[field]:
            issue_at(field, "contains a NUL character")
    if any("\x00" in a for a in spec.get("argv", ())):
        issue_at("run", "an argument contains a NUL character")
    for name, value in spec.get("env", {}).items():
        if not _ENV_NAME_RE.match(name):
            issue_at("env", f"invalid environment variable name {clip(name, 60)!r} (no '=' or NUL)")
        elif "\x00" in value:
            issue_at("env", f"{clip(name, 60)}: the value contains a NUL character")
    for field in ("kwargs", "with"):
        if field in spec and (problem := _data_problem(spec[field])) is not None:
            issue_at(field + problem[0], problem[1])


def _data_problem(value: Any) -> tuple[str, str] | None:
    """(where, what) of the first part of a JSON-like value that the store (msgpack) and
    the tasks (JSON) cannot hold as it is; None if it all fits. Iterative and bounded:
    a value of shared parts (YAML aliases, the builder) is not walked without end."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    walked = 0
    while stack:
        v, where, depth = stack.pop()
        walked += len(v) if isinstance(v, list | tuple | dict) else 1
        if walked > MAX_DATA_NODES:
            return "", f"holds more than {MAX_DATA_NODES:,} values"
        if depth > MAX_DATA_DEPTH:
            return where, f"nested deeper than {MAX_DATA_DEPTH} levels"
        if _plain(v):
            continue
        if isinstance(v, int):
            if not MIN_STORED_INT <= v <= MAX_STORED_INT:
                return where, (
                    f"the integer {int_text(v)} does not fit in 64 bits, the largest the store "
                    "holds (quote it to pass it as a string)"
                )
        elif isinstance(v, float):
            if not math.isfinite(v):
                return where, f"{v!r} is not a finite number (JSON cannot hold it)"
        elif isinstance(v, list | tuple):
            # a path is made only for what needs a closer look (a foreach of 1,000,000 ints)
            stack.extend(
                (x, f"{where}[{i}]", depth + 1) for i, x in reversed(list(enumerate(v))) if not _plain(x)
            )
        elif isinstance(v, dict):
            for k in v:
                if not isinstance(k, str):
                    return where, f"key {clip(repr(k), 40)} is not a string (quote it)"
            stack.extend((x, f"{where}.{k}", depth + 1) for k, x in reversed(v.items()) if not _plain(x))
        else:
            return where, (
                f"{described(v)} cannot be stored: use strings, numbers, true/false, lists or mappings "
                "(quote it to make it a string)"
            )
    return None


def _plain(v: Any) -> bool:
    """A scalar every store holds as it is."""
    t = type(v)
    return (
        t is str
        or v is None
        or t is bool
        or (t is int and MIN_STORED_INT <= v <= MAX_STORED_INT)
        or (t is float and math.isfinite(v))
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
    evaluated: set[str] = set()  # expressions already evaluated with these params
    final: list[TaskDef] = []
    for i, expanded, m in tasks:
        td = expanded
        if any(dep in groups for dep in expanded.depends_on):  # a group means all its members
            deps = [member for dep in expanded.depends_on for member in groups.get(dep, [dep])]
            td = dataclasses.replace(expanded, depends_on=tuple(dict.fromkeys(deps)))
        elif len(set(expanded.depends_on)) != len(expanded.depends_on):
            td = dataclasses.replace(expanded, depends_on=tuple(dict.fromkeys(expanded.depends_on)))
        final.append(td)
        if i in checked:
            continue
        checked.add(i)
        issue_at = functools.partial(_issue_at, issues, m.name, i, lines)
        for dep in m.depends_on:
            if dep == m.name:
                issue_at("depends_on", "a task cannot depend on itself")
            elif dep not in names and dep not in groups and dep not in raw_names:
                issue_at(
                    "depends_on", f"unknown task {clip(dep, 60)!r}{_suggest(dep, raw_names | set(groups))}"
                )
        _check_expressions(m, td, groups, params, issue_at, evaluated)
    return final


def _check_expressions(
    m: TaskModel,
    td: TaskDef,
    groups: dict[str, list[str]],
    params: dict[str, Any],
    issue_at: Callable[[str, str], None],
    evaluated: set[str],
) -> None:
    """A task's condition and templates parse, and refer only to what they may: inputs of
    direct dependencies, declared params, item/index in foreach tasks. A shell command's
    holes stand where their values can be quoted; what needs nothing from the run is
    evaluated now (`_evaluate_static`)."""
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
                    template = _template(text)
                    if td.executor == "shell" and field == "run" and isinstance(value, str):
                        template.shell_places()
                    exprs.extend((field, e) for e in template.exprs)
                except ExpressionError as e:
                    issue_at(field, str(e))
    for field, expr in exprs:
        for ref in sorted(expr.input_refs - allowed_inputs):
            issue_at(
                field,
                f"refers to inputs[{clip(ref, 60)!r}], which is not a direct dependency "
                f"(depends_on: {', '.join(m.depends_on) or 'nothing'})",
            )
        if expr.dynamic_inputs and not m.depends_on:
            issue_at(field, "uses inputs[...] but the task has no dependencies")
        if ("item" in expr.names or "index" in expr.names) and m.foreach is None:
            issue_at(field, "uses item/index, which exist only in foreach tasks")
        undeclared = expr.param_refs - set(params)
        for ref in sorted(undeclared):
            issue_at(field, f"refers to params.{clip(ref, 60)}, which is not declared under params:")
        if not undeclared and expr.source not in evaluated:
            evaluated.add(expr.source)
            _evaluate_static(expr, params, field, issue_at)


def _evaluate_static(
    expr: Expression, params: dict[str, Any], field: str, issue_at: Callable[[str, str], None]
) -> None:
    """Evaluate the parts of an expression that read nothing of the run (constants and
    params), so that one that fails or exceeds the bounds (``sum([[1]*3000]*3000, [])``)
    is refused here, not on the shared coordinator."""
    try:
        expr.check_static({"params": params})
    except ExpressionError as e:
        issue_at(field, f"cannot be evaluated: {e}")


def _issue_at(issues: list[Issue], task: str, i: int, lines: LineMap, field: str, message: str) -> None:
    name = field.split(".", maxsplit=1)[0].split("[", maxsplit=1)[0]
    issues.append(Issue(message, task=task, field=field, line=lines.field(i, name)))


def _foreach_items(spec: Any, params: dict[str, Any], issue_at: Any) -> list[Any] | None:
    """foreach: a list; {range: N | [start, stop] | [start, stop, step]}; or "{{ params.x }}"."""
    if isinstance(spec, dict):
        items = _range_items(spec, issue_at)
    elif isinstance(spec, list):
        items = spec
    else:
        items = _template_items(spec, params, issue_at)
    if items is None:
        return None
    if len(items) > MAX_FOREACH:
        issue_at("foreach", f"foreach has {len(items):,} items; the limit is {MAX_FOREACH:,}")
        return None
    if (problem := _data_problem(items)) is not None:
        issue_at("foreach" + problem[0], problem[1])
        return None
    return items


def _range_items(spec: dict[str, Any], issue_at: Any) -> list[int] | None:
    if set(spec) != {"range"}:
        issue_at("foreach", "a foreach mapping must be {range: N} or {range: [start, stop, step]}")
        return None
    bounds = spec["range"] if isinstance(spec["range"], list) else [spec["range"]]
    if not (1 <= len(bounds) <= 3) or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        issue_at("foreach", "range takes 1 to 3 whole numbers")
        return None
    if not all(-(2**63) <= b < 2**63 for b in bounds):
        issue_at("foreach", "range bounds must fit in 64 bits")
        return None
    if len(bounds) == 3 and bounds[2] == 0:
        issue_at("foreach", "range step must not be 0")
        return None
    r = range(*bounds)
    # the item after the last one allowed exists: too many (len() of a range longer than
    # the machine's sizes would raise OverflowError)
    if r.start + MAX_FOREACH * r.step in r:
        issue_at("foreach", f"range {spec['range']} has more than {MAX_FOREACH:,} items, the limit")
        return None
    return list(r)


def _template_items(spec: str, params: dict[str, Any], issue_at: Any) -> list[Any] | None:
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
        issue_at("foreach", f"{clip(spec, 60)!r} gives {described(value)}, not a list")
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
        issue_at("executor", f"unknown executor {clip(executor, 60)!r} (known: {', '.join(EXECUTORS)})")
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
            issue_at("call", f"call must look like 'package.module:function', not {clip(m.call, 60)!r}")
        spec["call"] = m.call
        spec["kwargs"] = dict(m.kwargs)
    else:  # a model executor: everything it needs is in `with`
        check_model_spec(executor, m.with_, issue_at)
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
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show_cycle(cycle: list[str]) -> str:
    """A cycle as "a -> b -> ... -> a", its middle left out when long: a cycle through
    10,000 tasks stays one readable line."""
    names = [clip(n, 60) for n in cycle]
    if len(names) > 2 * CYCLE_ENDS + 1:
        hidden = len(names) - 2 * CYCLE_ENDS
        names = [*names[:CYCLE_ENDS], f"... ({hidden:,} more) ...", *names[-CYCLE_ENDS:]]
    return " -> ".join(names)


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
