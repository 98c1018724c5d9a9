from __future__ import annotations

import json
import textwrap
import time

import pytest

from tuiflow import Workflow
from tuiflow.engine.compiler import compile_workflow, load_workflow
from tuiflow.engine.fileformat import json_schema
from tuiflow.engine.model import Definition, WorkflowValidationError
from tuiflow.engine.reading import parse_set_values


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
        ("gpus", "two", "expected a whole number from 0 to 64, got the string 'two'"),
        ("gpus", -1, "expected a whole number from 0 to 64, got the number -1"),
        ("timeout", 0, "expected a number of seconds above 0"),
        ("num_retries", 1.5, "expected a whole number from 0 to 1000, got the number 1.5"),
        ("depends_on", "a", "expected a list of strings, got the string 'a'"),
        ("dep_policy", "some", "expected one of 'all', 'any'"),
        ("bogus", 1, "unknown field (known: name, depends_on"),
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


# ------------------------------------------------------- a shared home survives its users
def task_with(tmp_path, fields: str, top: str = ""):
    return problems(tmp_path, f"name: x\n{top}tasks:\n  - {{name: t, run: 'true', {fields}}}\n")


@pytest.mark.parametrize(
    ("fields", "field", "expect"),
    [
        ("priority: 40000", "priority", "from -32768 to 32767"),
        ("priority: -40000", "priority", "got the number -40000"),
        ("priority: 99999999999999999999999", "priority", "got the number 99999999999999999999999"),
        ("gpus: 65", "gpus", "from 0 to 64"),
        ("gpus: 99999999999999999999999", "gpus", "from 0 to 64"),
        ("gpus: true", "gpus", "got true"),
        ("num_retries: 1001", "num_retries", "from 0 to 1000"),
        ("timeout: .inf", "timeout", "got the number inf"),
        ("timeout: .nan", "timeout", "got the number nan"),
        ("timeout: 1.0e+9", "timeout", "at most 2592000 (30 days)"),
        ("retry_backoff: 1.0e+400", "retry_backoff", "from 0 to 86400 (1 day), got the number inf"),
        ("retry_backoff: -1", "retry_backoff", "from 0 to 86400"),
    ],
)
def test_every_number_is_range_checked_at_validation(tmp_path, fields, field, expect):
    (i,) = task_with(tmp_path, fields)
    assert (i.task, i.field, i.line) == ("t", field, 3) and expect in i.message, i.message
    assert i.message.startswith("expected ")


@pytest.mark.parametrize(
    "defaults", ["priority: 40000", "gpus: 100", "num_retries: -1", "timeout: .inf", "retry_backoff: .nan"]
)
def test_defaults_are_range_checked_too(tmp_path, defaults):
    (i,) = task_with(tmp_path, "queue: q", top=f"defaults: {{{defaults}}}\n")
    assert i.field == f"defaults.{defaults.split(':')[0]}" and i.line == 2 and "expected" in i.message


def test_the_priority_range_is_the_queues():
    from spool import queue
    from tuiflow.engine import model

    assert (model.MIN_PRIORITY, model.MAX_PRIORITY) == (queue.MIN_PRIORITY, queue.MAX_PRIORITY)


@pytest.mark.parametrize(
    ("text", "field", "expect"),
    [
        ("params: {n: 99999999999999999999999}\n", "params.n", "does not fit in 64 bits"),
        ("params: {n: [1, {a: -99999999999999999999999}]}\n", "params.n[1].a", "does not fit in 64 bits"),
        ("params: {n: .nan}\n", "params.n", "not a finite number"),
        ("params: {n: 2024-01-01}\n", "params.n", "a date (2024-01-01) cannot be stored"),
        ("params: {n: {1: a}}\n", "params.n", "key 1 is not a string"),
    ],
)
def test_stored_params_must_fit_the_store(tmp_path, text, field, expect):
    issues = problems(tmp_path, f"name: x\n{text}tasks:\n  - {{name: t, run: 'true'}}\n")
    assert [(i.field, i.line) for i in issues] == [(field, 2)] and expect in issues[0].message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ("call: 'm:f', kwargs: {n: 99999999999999999999999}", "kwargs.n"),
        ("run: x, with: {deep: [[1, 99999999999999999999999]]}", "with.deep[0][1]"),
        ("run: x, foreach: [1, 99999999999999999999999]", "foreach[1]"),
        ("run: x, foreach: {range: [0, 99999999999999999999999]}", "foreach"),
        ("run: x, foreach: {range: [0, 9223372036854775807]}", "foreach"),
    ],
)
def test_task_values_beyond_64_bits_are_refused_naming_the_field(tmp_path, fields, field):
    issues = problems(tmp_path, f"name: x\ntasks:\n  - {{name: t, {fields}}}\n")
    assert [i.field for i in issues] == [field], [i.message for i in issues]


def test_a_set_value_beyond_64_bits_is_refused(tmp_path):
    path = write(tmp_path, "name: x\nparams: {n: 1}\ntasks:\n  - {name: t, run: 'echo {{ params.n }}'}\n")
    with pytest.raises(WorkflowValidationError) as err:
        load_workflow(path, parse_set_values(["n=99999999999999999999999"]))
    (i,) = err.value.issues
    assert i.field == "params.n" and "(from --set)" in i.message and "64 bits" in i.message


def test_constant_expressions_are_evaluated_at_validation(tmp_path):
    issues = problems(
        tmp_path,
        """
        name: x
        params: {s: "abc"}
        tasks:
          - {name: a, run: 'true'}
          - name: b
            depends_on: [a]
            condition: 'inputs.a.ok and sum([[1]*3000]*3000, []) == []'
            run: "echo {{ '%999999999d' % 1 }}"
          - {name: c, run: "echo {{ params.s * 10**6 }}"}
          - {name: d, depends_on: [a], condition: 'inputs.a.n > 9**9**9', run: 'true'}
        """,
    )
    assert [(i.task, i.field) for i in issues] == [
        ("b", "condition"),
        ("b", "run"),
        ("c", "run"),
        ("d", "condition"),
    ]
    assert all(i.message.startswith("cannot be evaluated: ") for i in issues)


def test_static_parts_that_only_miss_a_value_are_left_to_the_run(tmp_path):
    d = load_workflow(
        write(
            tmp_path,
            """
            name: x
            params: {cfg: {}}
            tasks:
              - {name: a, run: 'true'}
              - {name: b, depends_on: [a], condition: 'params.cfg.flag or inputs.a.ok', run: "echo {{ 2 ** 10 }}"}
            """,
        )
    )
    assert d.tasks[1].condition == "params.cfg.flag or inputs.a.ok"


@pytest.mark.parametrize(
    ("run", "where"),
    [
        ("echo `cat {{ inputs.a.p }}`", "inside backticks"),
        ("echo ${x:-{{ inputs.a.p }}}", "inside ${...}"),
        ("echo $(( {{ inputs.a.p }} ))", "inside arithmetic"),
        ("[[ {{ inputs.a.p }} == x ]]", "inside [[ ]]"),
        ("echo hi # {{ inputs.a.p }}", "inside a comment"),
        ("echo ${{ inputs.a.p }}", "right after $"),
    ],
)
def test_shell_templates_in_unsafe_places_are_refused_at_validation(tmp_path, run, where):
    (i,) = problems(
        tmp_path,
        f"name: x\ntasks:\n  - {{name: a, run: 'true'}}\n  - name: b\n    depends_on: [a]\n    run: {json.dumps(run)}\n",
    )
    assert (i.task, i.field, i.line) == ("b", "run", 6)
    assert where in i.message and "assign it to a variable first" in i.message


def test_safe_shell_templates_pass_validation(tmp_path):
    run = """echo {{ inputs.a.p }} 'in {{ inputs.a.p }}' "in {{ inputs.a.p }}" "$(cat {{ inputs.a.p }})" """
    d = load_workflow(
        write(
            tmp_path,
            f"name: x\ntasks:\n  - {{name: a, run: 'true'}}\n  - {{name: b, depends_on: [a], run: {json.dumps(run)}}}\n",
        )
    )
    assert d.tasks[1].spec["run"] == run


def alias_bomb(levels: int = 9) -> str:
    lines = ["name: bomb", "params:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for k in range(1, levels):
        lines.append(f"  l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]")
    return "\n".join([*lines, "tasks:", "  - {name: a, run: 'true'}", ""])


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    t0 = time.monotonic()
    (i,) = problems(tmp_path, alias_bomb())
    assert "too many alias expansions" in i.message and i.line is not None
    assert time.monotonic() - t0 < 1.0


def test_a_recursive_alias_is_refused(tmp_path):
    (i,) = problems(tmp_path, "name: x\nparams: {a: &a [*a]}\ntasks:\n  - {name: a, run: 'true'}\n")
    assert "recursive alias" in i.message and i.line == 2


def test_ordinary_anchors_and_merges_still_work(tmp_path):
    d = load_workflow(
        write(
            tmp_path,
            """
            name: x
            params: {base: &base {queue: q, retries: 2}, again: *base}
            tasks:
              - &t {name: a, run: 'true', env: {A: "1"}}
              - {<<: *t, name: b}
            """,
        )
    )
    assert [t.name for t in d.tasks] == ["a", "b"] and d.params["again"] == {"queue": "q", "retries": 2}


def test_a_duplicate_key_in_yaml_names_the_key_and_both_lines(tmp_path):
    (i,) = problems(
        tmp_path, "name: x\ntasks:\n  - name: a\n    run: echo hello\n    queue: q\n    run: rm -rf ~\n"
    )
    assert i.message == "duplicate key 'run' (lines 4 and 6)" and i.line == 6


def test_a_duplicate_key_in_json_names_the_key_and_both_lines(tmp_path):
    text = '{\n  "name": "x",\n  "tasks": [\n    {"name": "a", "run": "echo"},\n    {"name": "b",\n     "run": "echo",\n     "run": "rm -rf ~"}\n  ]\n}\n'
    with pytest.raises(WorkflowValidationError) as err:
        load_workflow(write(tmp_path, text, "wf.json"))
    (i,) = err.value.issues
    assert i.message == "duplicate key 'run' (lines 6 and 7)" and i.line == 7


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('{"name": "x", "params": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}", "nested too deeply"),
        ('{"name": "x", "params": {"a": ' + "9" * 5000 + "}}", "more than 4,300 digits"),
    ],
)
def test_json_that_python_cannot_read_is_one_clear_error(tmp_path, text, expect):
    with pytest.raises(WorkflowValidationError, match=expect):
        load_workflow(write(tmp_path, text, "wf.json"))


@pytest.mark.parametrize("name", ["ml-pipeline", "nightly eval", "team/nightly-3", "[bold]x[/]", "a.b=c_d"])
def test_ordinary_workflow_names_are_accepted(tmp_path, name):
    assert (
        load_workflow(
            write(tmp_path, f"name: {json.dumps(name)}\ntasks:\n  - {{name: a, run: 'true'}}\n")
        ).name
        == name
    )


@pytest.mark.parametrize(
    "name",
    [
        "evil\x1b]0;pwned\x07",
        "a\x00b",
        "/etc/passwd",
        "..",
        "a/../b",
        "a//b",
        "",
        " x",
        "tab\there",
        "x" * 101,
    ],
)
def test_workflow_names_are_restricted_like_task_names(tmp_path, name):
    (i,) = problems(tmp_path, f"name: {json.dumps(name)}\ntasks:\n  - {{name: a, run: 'true'}}\n")
    assert i.field == "name" and i.line == 1 and "invalid workflow name" in i.message


@pytest.mark.parametrize(
    ("text", "field", "expect"),
    [
        (
            "name: x\ntasks:\n  - {name: a, run: 'true', depens_on: [b]}\n",
            "depens_on",
            "did you mean 'depends_on'?",
        ),
        ("name: x\ntask:\n  - {name: a, run: 'true'}\n", "task", "did you mean 'tasks'?"),
        ("name: x\ndefault: {}\ntasks:\n  - {name: a, run: 'true'}\n", "default", "did you mean 'defaults'?"),
        (
            "name: x\ndefaults: {queu: q}\ntasks:\n  - {name: a, run: 'true'}\n",
            "defaults.queu",
            "did you mean 'queue'?",
        ),
        (
            "name: x\ndefaults: {depends_on: [a]}\ntasks:\n  - {name: a, run: 'true'}\n",
            "defaults.depends_on",
            "cannot be given under defaults",
        ),
    ],
)
def test_unknown_fields_suggest_the_nearest(tmp_path, text, field, expect):
    issues = problems(tmp_path, text)
    found = [i for i in issues if i.field == field]
    assert len(found) == 1 and expect in found[0].message, [(i.field, i.message) for i in issues]


def test_top_level_problems_do_not_hide_the_tasks_problems(tmp_path):
    issues = problems(tmp_path, "name: x\nnme: y\ntasks:\n  - {name: a, run: 5}\n")
    assert [(i.field, i.line) for i in issues] == [("nme", 2), ("run", 4)]


@pytest.mark.parametrize(
    ("fields", "field", "expect"),
    [
        ("run: 5", "run", "expected a command string or a list of strings (argv), got the number 5"),
        ("run: [echo, 3]", "run[1]", "expected a string, got the number 3"),
        ("run: {a: b}", "run", "got a mapping"),
        ("env: {A: [1]}", "env.A", "expected a string, a number or true/false, got a list"),
        ("depends_on: 3", "depends_on", "expected a list of strings, got the number 3"),
        ("foreach: 3", "foreach", "expected a list, {range: ...}"),
        ("condition: [x]", "condition", "expected a string, got a list"),
    ],
)
def test_type_errors_say_what_was_expected_in_words_once(tmp_path, fields, field, expect):
    issues = problems(tmp_path, f"name: x\ntasks:\n  - {{name: t, {fields}}}\n")
    assert len(issues) == 1 and issues[0].field == field, [(i.field, i.message) for i in issues]
    assert expect in issues[0].message


def test_an_empty_list_of_tasks_is_called_empty(tmp_path):
    issues = problems(tmp_path, "name: x\ntasks: []\n")
    assert [i.field for i in issues] == ["tasks"] and "got an empty list" in issues[0].message, issues


def test_a_cycle_through_ten_thousand_tasks_is_shown_shortened(tmp_path):
    n = 10_000
    tasks = [
        {"name": f"task-{k:05d}", "run": "true", "depends_on": [f"task-{(k + 1) % n:05d}"]} for k in range(n)
    ]
    with pytest.raises(WorkflowValidationError) as err:
        compile_workflow({"name": "big", "tasks": tasks})
    message = str(err.value)
    assert len(message) < 1024, len(message)
    assert "dependency cycle: task-00000 -> task-00001 -> " in message
    assert f"... ({n + 1 - 10:,} more) ..." in message and message.count(" -> ") == 10


@pytest.mark.parametrize(
    ("fields", "field", "expect"),
    [
        ('run: "echo \\0"', "run", "NUL"),
        ("env: {'A=B': x}", "env", "invalid environment variable name"),
        ('cwd: "a\\0b"', "cwd", "NUL"),
    ],
)
def test_text_the_operating_system_takes_is_checked(tmp_path, fields, field, expect):
    issues = problems(
        tmp_path, f"name: x\ntasks:\n  - {{name: t, {fields if 'run' in fields else 'run: x, ' + fields}}}\n"
    )
    assert [i.field for i in issues] == [field] and expect in issues[0].message


def test_messages_clip_the_users_text():
    with pytest.raises(WorkflowValidationError) as err:
        compile_workflow({"name": "x", "tasks": [{"name": "t", "run": "true", "k" * 5000: 1}]})
    rendered = str(err.value)
    assert len(rendered) < 1024 and "more characters" in rendered
