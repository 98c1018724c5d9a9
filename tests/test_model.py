from __future__ import annotations

import json
import textwrap

import pytest

from tuiflow import Workflow
from tuiflow.engine.compiler import compile_workflow, json_schema, load_workflow
from tuiflow.engine.model import Definition, WorkflowValidationError


def write(tmp_path, text: str, name: str = "wf.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path, text: str) -> list:
    with pytest.raises(WorkflowValidationError) as err:
        load_workflow(write(tmp_path, text))
    return err.value.issues


def one(tmp_path, text: str):
    issues = problems(tmp_path, text)
    assert len(issues) == 1, [i.message for i in issues]
    return issues[0]


def test_full_example_compiles(tmp_path):
    d = load_workflow(
        write(
            tmp_path,
            """
            name: ml-pipeline
            params: {target: 0.1}
            defaults: {queue: gpu, num_retries: 1, timeout: 3600, env: {A: 1}}
            tasks:
              - name: prep/featurize
                run: "python featurize.py"
              - name: train/rf
                depends_on: [prep/featurize]
                call: "mypkg.train:random_forest"
                kwargs: {trees: 100}
                num_retries: 2
              - name: eval/compare
                depends_on: [train/rf]
                condition: 'inputs["train/rf"].mae < params.target'
                run: ["python", "compare.py", "{{ inputs['train/rf'].model_path }}"]
              - name: sweep/seed
                foreach: [1, 2, 3]
                run: "python train.py --seed {{ item }}"
                queue: cpu
              - name: report
                depends_on: [sweep/seed]
                run: "echo {{ inputs['sweep/seed'] }}"
            """,
        )
    )
    names = [t.name for t in d.tasks]
    assert names == [
        "prep/featurize",
        "train/rf",
        "eval/compare",
        "sweep/seed[0]",
        "sweep/seed[1]",
        "sweep/seed[2]",
        "report",
    ]
    rf = d.tasks[1]
    assert (rf.executor, rf.num_retries, rf.queue, rf.timeout) == ("python", 2, "gpu", 3600)
    assert rf.spec == {"call": "mypkg.train:random_forest", "kwargs": {"trees": 100}, "env": {"A": "1"}}
    assert d.tasks[0].spec["run"] == "python featurize.py" and d.tasks[0].num_retries == 1
    assert d.tasks[2].spec["argv"][0] == "python"
    assert [t.item for t in d.tasks[3:6]] == [1, 2, 3] and d.tasks[3].queue == "cpu"
    assert d.tasks[6].depends_on == ("sweep/seed[0]", "sweep/seed[1]", "sweep/seed[2]")
    assert d.prefixes == ["prep", "train", "eval", "sweep"]
    # storage round trip
    again = Definition.from_wire(json.loads(json.dumps(d.to_wire())))
    assert [t.to_wire() for t in again.tasks] == [t.to_wire() for t in d.tasks]
    assert again.deps == d.deps and again.children == d.children


def test_duplicate_names(tmp_path):
    i = one(tmp_path, "name: x\ntasks:\n  - {name: a, run: x}\n  - {name: a, run: y}\n")
    assert (i.task, i.field, i.line) == ("a", "name", 4) and "duplicate" in i.message


def test_unknown_dependency_suggests_a_name(tmp_path):
    i = one(
        tmp_path,
        "name: x\ntasks:\n  - {name: prepare, run: x}\n  - {name: b, depends_on: [prepair], run: y}\n",
    )
    assert (i.task, i.field) == ("b", "depends_on")
    assert "unknown task 'prepair'" in i.message and "did you mean 'prepare'" in i.message


def test_cycle_is_printed(tmp_path):
    i = one(
        tmp_path,
        """
        name: x
        tasks:
          - {name: a, depends_on: [c], run: x}
          - {name: b, depends_on: [a], run: x}
          - {name: c, depends_on: [b], run: x}
          - {name: d, run: x}
        """,
    )
    assert "dependency cycle" in i.message
    cycle = i.message.split(": ", 1)[1].split(" (")[0].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}


def test_self_dependency(tmp_path):
    assert "itself" in one(tmp_path, "name: x\ntasks:\n  - {name: a, depends_on: [a], run: x}\n").message


@pytest.mark.parametrize(
    "bad", ["../evil", "a//b", "/abs", "a b", "x;rm", "a/../b", "", "a" * 201, "trailing/"]
)
def test_bad_task_names(tmp_path, bad):
    i = one(tmp_path, f"name: x\ntasks:\n  - name: {json.dumps(bad)}\n    run: echo\n")
    assert i.field == "name"


def test_bad_condition_syntax_names_line(tmp_path):
    i = one(tmp_path, "name: x\ntasks:\n  - name: a\n    run: x\n    condition: 'inputs.a >'\n")
    assert (i.task, i.field, i.line) == ("a", "condition", 5) and "syntax" in i.message


def test_condition_or_template_must_refer_to_direct_dependencies(tmp_path):
    issues = problems(
        tmp_path,
        """
        name: x
        tasks:
          - {name: a, run: x}
          - {name: b, depends_on: [a], run: x}
          - name: c
            depends_on: [b]
            condition: inputs.a.ok
            run: "echo {{ inputs.a.path }}"
        """,
    )
    assert {(i.task, i.field) for i in issues} == {("c", "condition"), ("c", "run")}
    assert all("not a direct dependency" in i.message for i in issues)


def test_unknown_executor_and_missing_run(tmp_path):
    issues = problems(tmp_path, "name: x\ntasks:\n  - {name: a, executor: tensorflow}\n  - {name: b}\n")
    assert [(i.task, i.field) for i in issues] == [("a", "executor"), ("b", "run")]
    assert "unknown executor 'tensorflow'" in issues[0].message


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("gpus", "two", "integer"),
        ("gpus", -1, "greater than or equal"),
        ("timeout", 0, "greater than"),
        ("num_retries", 1.5, "integer"),
        ("depends_on", "a", "list"),
        ("dep_policy", "some", "'all' or 'any'"),
        ("bogus", 1, "unknown field"),
    ],
)
def test_bad_types_name_task_field_and_line(tmp_path, field, value, expect):
    i = one(tmp_path, f"name: x\ntasks:\n  - name: t\n    run: echo\n    {field}: {json.dumps(value)}\n")
    assert i.task == "t" and i.field.startswith(field) and i.line == 5
    assert expect in i.message


def test_many_problems_are_reported_at_once(tmp_path):
    issues = problems(
        tmp_path,
        "name: x\ntasks:\n  - {name: a, run: x, gpus: many}\n  - {name: b, depends_on: [zz], run: y}\n"
        "  - {name: c, call: 'not a call'}\n",
    )
    assert len(issues) == 3
    rendered = str(WorkflowValidationError(str(tmp_path / "wf.yaml"), issues))
    assert "3 problems" in rendered and "wf.yaml:3" in rendered


def test_yaml_syntax_error_has_a_line(tmp_path):
    i = one(tmp_path, "name: x\ntasks:\n  - name: a\n   run: [oops\n")
    assert i.line is not None and "invalid YAML" in i.message


def test_item_outside_foreach_and_unknown_param(tmp_path):
    issues = problems(tmp_path, "name: x\ntasks:\n  - {name: a, run: 'echo {{ item }} {{ params.nope }}'}\n")
    messages = sorted(i.message for i in issues)
    assert len(messages) == 2
    assert messages[0].startswith("refers to params.nope") and messages[1].startswith("uses item/index")


def test_foreach_forms_and_params_override(tmp_path):
    path = write(
        tmp_path,
        """
        name: x
        params: {seeds: [1, 2]}
        tasks:
          - {name: a, foreach: {range: 3}, run: 'echo {{ item }}'}
          - {name: b, foreach: {range: [10, 16, 2]}, run: 'echo {{ item }}'}
          - {name: c, foreach: '{{ params.seeds }}', run: 'echo {{ item }}'}
        """,
    )
    d = load_workflow(path)
    assert [t.item for t in d.tasks] == [0, 1, 2, 10, 12, 14, 1, 2]
    d = load_workflow(path, {"seeds": [7]})
    assert [t.name for t in d.tasks if t.group == "c"] == ["c[0]"] and d.tasks[-1].item == 7
    with pytest.raises(WorkflowValidationError, match="no such param"):
        load_workflow(path, {"sedes": [1]})


def test_json_files_and_missing_file(tmp_path):
    path = write(tmp_path, json.dumps({"name": "j", "tasks": [{"name": "a", "run": "true"}]}), "wf.json")
    assert len(load_workflow(path)) == 1
    with pytest.raises(WorkflowValidationError, match="file not found"):
        load_workflow(tmp_path / "missing.yaml")
    bad = write(tmp_path, "{not json", "bad.json")
    with pytest.raises(WorkflowValidationError, match="invalid JSON"):
        load_workflow(bad)


def test_builder_api_uses_the_same_validation(tmp_path):
    wf = Workflow("built", defaults={"num_retries": 1}, base_dir=str(tmp_path))
    prep = wf.task("prep/featurize", run="echo prep")
    rf = wf.task("train/rf", call="mod:fn", kwargs={"n": 1}, depends_on=[prep])
    wf.task("eval", run="echo {{ inputs['train/rf'].mae }}", depends_on=[rf], with_={"x": 1})
    d = wf.compile()
    assert [t.name for t in d.tasks] == ["prep/featurize", "train/rf", "eval"]
    assert d.tasks[2].spec["with"] == {"x": 1} and d.tasks[1].num_retries == 1
    bad = Workflow("bad")
    bad.task("a", run="x", depends_on=["nope"])
    with pytest.raises(WorkflowValidationError, match="unknown task 'nope'"):
        bad.compile()


def test_json_schema_describes_tasks():
    schema = json_schema()
    task = schema["$defs"]["TaskModel"]["properties"]
    assert {"name", "depends_on", "dep_policy", "condition", "run", "call", "with", "foreach", "gpus"} <= set(
        task
    )
    assert schema["required"] == ["name", "tasks"]


def test_compile_accepts_plain_dicts():
    d = compile_workflow(
        {
            "name": "d",
            "tasks": [{"name": "a", "run": "true"}, {"name": "b", "run": "true", "depends_on": ["a"]}],
        }
    )
    assert d.deps == [(), (0,)] and d.children == [(1,), ()]
