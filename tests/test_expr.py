from __future__ import annotations

import shlex
import time

import pytest

from tuiflow.engine.expr import (
    Expression,
    ExpressionError,
    MissingValue,
    Template,
    evaluate_condition,
    render_value,
)

ENV = {
    "inputs": {
        "A": {"score": 0.3, "ok": True, "tags": ["x", "y"], "metrics": {"f1-score": 0.9}},
        "prep/featurize": {"ok": True, "rows": 1000},
        "train/rf": {"mae": 0.08, "model_path": "models/rf; rm -rf /"},
    },
    "item": 3,
    "index": 0,
    "params": {"threshold": 0.28, "name": "run"},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("inputs.A.score > 0.28", True),
        ('inputs.A.score > 0.28 and inputs["prep/featurize"].ok', True),
        ('inputs["A"].metrics["f1-score"] >= 0.9', True),
        ("inputs.A.score > params.threshold", True),
        ("not inputs.A.ok", False),
        ("inputs.A.ok == true and null == None", True),
        ("'x' in inputs.A.tags", True),
        ("'z' not in inputs.A.tags", True),
        ("0 < inputs.A.score < 1", True),
        ("len(inputs.A.tags) == 2", True),
        ("max(1, 2, item) == 3 and min([4, 5]) == 4", True),
        ("abs(-2) + sum([1, 2]) == 5", True),
        ("all([true, inputs.A.ok]) and any([false, true])", True),
        ("round(inputs.A.score * 10) == 3", True),
        ("item ** 2 + index", 9),
        ("'a' if item > 2 else 'b'", "a"),
        ("inputs['train/rf'].mae < 0.1 or inputs['A'].score < 0.1", True),
        ("inputs.A.tags[1]", "y"),
        ("7 // 2 + 7 % 2 - 1.5 / 3", 3.5),
    ],
)
def test_grammar(source, expected):
    assert Expression(source).evaluate(ENV) == expected


HOSTILE = [
    "__import__('os')",
    "().__class__.__bases__",
    "().__class__.__bases__[0].__subclasses__()",
    "inputs.__dict__",
    "inputs.__class__",
    "inputs._private",
    'inputs["__class__"]',
    "getattr(inputs, 'x')",
    "open('/etc/passwd').read()",
    "exec('print(1)')",
    "eval('1')",
    "lambda: 1",
    "[x for x in inputs]",
    "{k: 1 for k in inputs}",
    "(x for x in [1])",
    "f'{inputs}'",
    "x := 1",
    "inputs.A.tags[0:1]",
    "len(*inputs.A.tags)",
    "max(inputs.A.tags, key=len)",
    "inputs.A.score.__add__(1)",
    "os.system('true')",
    "print('hi')",
    "import os",
    "yield 1",
    "await x",
    "{'a': 1}",
    "{1, 2}",
    "b'bytes'",
    "1j",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_input_is_rejected_at_parse_time(source):
    with pytest.raises(ExpressionError):
        Expression(source)


@pytest.mark.parametrize(
    "source",
    [
        "10**10**10",
        "2**100000",
        "2.0**100000",
        "'a' * 10**9",
        "[1] * 10**6",
        "'ab' * 100000",
        "10**1000 * 10**1000 * 10**1000 * 10**1000 * 10**1000",
        "1 / 0",
        "'a' < 1",
    ],
)
def test_runaway_or_failing_evaluation_is_bounded(source):
    t0 = time.monotonic()
    with pytest.raises(ExpressionError):
        Expression(source).evaluate(ENV)
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    "source",
    [
        "(" * 10_000 + "1" + ")" * 10_000,
        "not " * 10_000 + "true",
        "-" * 10_000 + "1",
        "inputs" + ".a" * 3000,
        "[" * 500 + "]" * 500,
        "1 + " * 2000 + "1",
        "x" * 20_000,
    ],
)
def test_deep_or_huge_expressions_are_rejected(source):
    with pytest.raises(ExpressionError):
        Expression(source)


def test_missing_keys_make_a_condition_false_with_the_reason():
    ok, why = evaluate_condition(Expression("inputs.A.mae < 0.1"), ENV)
    assert ok is False and "inputs.A.mae does not exist" in why
    ok, why = evaluate_condition(Expression("inputs.A.tags[5] == 'x'"), ENV)
    assert ok is False and "does not exist" in why
    with pytest.raises(MissingValue):
        Expression("inputs.nope").evaluate(ENV)


def test_references_are_collected_for_validation():
    e = Expression('inputs.A.score > 1 and inputs["prep/featurize"].ok and params.threshold and item')
    assert e.input_refs == {"A", "prep/featurize"}
    assert e.param_refs == {"threshold"}
    assert e.names == {"inputs", "params", "item"}
    assert Expression("inputs[params.name]").dynamic_inputs


def test_templates_keep_types_or_make_text():
    assert Template("{{ item }}").render(ENV) == 3
    assert Template("seed-{{ item }}").render(ENV) == "seed-3"
    assert Template("{{ inputs.A.tags }}").render(ENV) == ["x", "y"]
    assert Template("tags={{ inputs.A.tags }} ok={{ inputs.A.ok }} none={{ null }}").render(ENV) == (
        'tags=["x","y"] ok=true none='
    )
    assert render_value({"a": "{{ item }}", "b": ["x{{ index }}", 5]}, ENV) == {"a": 3, "b": ["x0", 5]}


def test_shell_templates_quote_every_value():
    cmd = Template(
        "python eval.py --model {{ inputs['train/rf'].model_path }} --n {{ item }}"
    ).render_command(ENV)
    assert shlex.split(cmd) == ["python", "eval.py", "--model", "models/rf; rm -rf /", "--n", "3"]
    hostile = {"inputs": {"A": {"v": "$(touch /tmp/pwned) `id` && echo 'x'"}}}
    cmd = Template("echo {{ inputs.A.v }}").render_command(hostile)
    assert shlex.split(cmd) == ["echo", "$(touch /tmp/pwned) `id` && echo 'x'"]


@pytest.mark.parametrize("text", ["{{ }}", "a {{ item", "{{ __import__('os') }}", "{{ item }} {{"])
def test_bad_templates(text):
    with pytest.raises(ExpressionError):
        Template(text)


def test_static_parts_are_checked_without_the_run():
    # the bomb is refused although the rest of the condition needs the run's outputs
    with pytest.raises(ExpressionError, match="larger than"):
        Expression("inputs.A.ok and sum([[1]*3000]*3000, []) == []").check_static({"params": {}})
    with pytest.raises(ExpressionError, match="longer than"):
        Expression("'%999999999d' % 1").check_static({})
    with pytest.raises(ExpressionError, match="longer than"):
        Expression("inputs.A.n > len(params.s * 10**6)").check_static({"params": {"s": "ab"}})
    # a missing key is the run's business (a condition reads it as false)
    Expression("params.cfg.flag or inputs.A.ok").check_static({"params": {"cfg": {}}})
    Expression("inputs.A.tags[item] == 'x'").check_static({})


def test_a_value_that_cannot_be_made_text_is_an_expression_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ExpressionError, match="cannot be made text"):
        Template("v={{ inputs.A.v }}").render({"inputs": {"A": {"v": deep}}})


@pytest.mark.parametrize(
    "text",
    [
        "echo $[{{ item }} + 1]",
        "echo `echo {{ item }}`",
        'echo "${x:-{{ item }}}"',
        "cat <<EOF\n{{ item }}\nEOF",
        "echo hi # {{ item }}",
    ],
)
def test_shell_places_where_no_value_can_be_quoted_are_refused(text):
    with pytest.raises(ExpressionError, match="assign it to a variable first"):
        Template(text).shell_places()


def test_shell_places_of_quotable_holes():
    t = Template("""echo {{ item }} '{{ item }}' "{{ item }}" "$(cat {{ item }})" """)
    assert t.shell_places() == ("word", "single", "double", "word")
