"""What a careless or hostile workflow (or an upstream task's output) can throw at the
expression language and the shell: bounded before it allocates, never executed.

- a table of hostile expressions: each is rejected or evaluated within 100 ms and 50 MB
  (measured with tracemalloc, after a warm-up), with realistic upstream outputs around;
- upstream outputs substituted into shell commands, run by a real /bin/sh (and bash):
  in every quoting context the value arrives verbatim and nothing it holds runs;
- templates where no value can be quoted safely are refused, with the advice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tracemalloc

import pytest

from tuiflow.engine.expr import Expression, ExpressionError, Template

#: upstream outputs of a realistic size: a long log line, a big list, a nested record
ENV = {
    "inputs": {
        "up": {
            "text": "x" * 50_000,
            "rows": list(range(50_000)),
            "nested": {"a": [{"b": list(range(100))} for _ in range(200)]},
            "n": 3,
        }
    },
    "params": {"name": "run", "big": ["y" * 1000] * 100},
    "item": 7,
    "index": 0,
}

HOSTILE_EXPRESSIONS = [
    "sum([[1]*3000]*3000, [])",
    "sum([inputs.up.rows] * 1000, [])",
    "'%999999999d' % 1",
    "'%.999999999f' % 1.5",
    "'%s' % inputs.up.text * 100",
    "('%s' % inputs.up.rows) * 3",
    "'%s%s%s%s' % (inputs.up.nested, inputs.up.nested, inputs.up.nested, inputs.up.nested)",
    "9**9**9",
    "2**4097",
    "10**1000 * 10**1000 * 10**1000 * 10**1000 * 10**1000",
    "'a' * 10**9",
    "[1] * 10**6 * 10",
    "[[1] * 1000] * 1000 * 1000",
    "[[[1] * 100] * 100] * 100",
    "inputs.up.text + inputs.up.text + inputs.up.text",
    " + ".join(["inputs.up.text"] * 40),
    "round(1, 10**9)",
    "round(1.5, -10**9)",
    "'%0*d' % (10**9, 1)",
    "len(str(1))",
    "[inputs.up.rows, inputs.up.rows, inputs.up.rows, inputs.up.rows, inputs.up.rows]",
    "max(inputs.up.rows) + sum(inputs.up.rows) + len(inputs.up.text)",
    "inputs.up.rows * inputs.up.n",
    "params.big * 1000",
    "[" * 49 + "1" + "]" * 49,
    "((((((((((((((((((((1))))))))))))))))))))" + " + 1" * 200,
]

TIME_LIMIT = 0.100  # seconds
MEMORY_LIMIT = 50 * 1024 * 1024  # bytes, tracemalloc's peak


def _evaluate(source: str) -> None:
    try:
        Expression(source).evaluate(ENV)
    except ExpressionError:
        pass  # rejected: what most of these must be


@pytest.mark.parametrize("source", HOSTILE_EXPRESSIONS, ids=range(len(HOSTILE_EXPRESSIONS)))
def test_a_hostile_expression_is_rejected_or_evaluated_within_100ms_and_50mb(source):
    _evaluate(source)  # warm-up: parsing caches, imports
    t0 = time.perf_counter()
    _evaluate(source)
    elapsed = time.perf_counter() - t0
    # measured apart: tracing every allocation makes the evaluation itself many times slower
    tracemalloc.start()
    try:
        _evaluate(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < TIME_LIMIT, f"{source[:80]!r} took {elapsed * 1000:.0f} ms"
    assert peak < MEMORY_LIMIT, f"{source[:80]!r} allocated {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    "source",
    ["sum([[1]*3000]*3000, [])", "'%999999999d' % 1", "9**9**9", "'a' * 10**9", "[[1] * 1000] * 1000 * 1000"],
)
def test_the_bombs_are_refused_with_a_clear_error(source):
    with pytest.raises(ExpressionError, match=r"larger than|longer than|exponent|too much work"):
        Expression(source).evaluate(ENV)


def test_a_template_shares_one_budget_across_its_holes():
    hole = "{{ len(inputs.up.text + inputs.up.text) }}"  # builds 100,000 characters
    assert Template(hole).render(ENV) == 100_000
    with pytest.raises(ExpressionError, match="too much work"):
        Template(" ".join([hole] * 25)).render(ENV)


# ---------------------------------------------------------------- shell injection
HOSTILE_VALUES = [
    "$(touch pwned)",
    "`touch pwned`",
    "'$(touch pwned)'",
    '"$(touch pwned)"',
    "it's",
    'say "hi"',
    "back\\slash\\",
    "\\'$(touch pwned)\\'",
    "line1\nline2\n$(touch pwned)\n",
    "$HOME ${HOME} $((1+1))",
    ";rm -rf ./nothing; touch pwned",
    "a && touch pwned || touch pwned",
    "| touch pwned",
    "> pwned",
    "* ? [a] ~ ~root",
    "# not a comment",
    "'\"'\"'\"$(touch pwned)`touch pwned`",
    "$'\\x41' $\"x\"",
    "!! !$ ^a^b",
    "{a,b} \t tab",
    "",
    "🙂 ünï",
]

#: (template, what it prints for the value v); v stands for the value's text
CONTEXTS = [
    ("printf '%s' {{ inputs.up.v }}", "{v}"),
    ("printf '%s' 'pre {{ inputs.up.v }} post'", "pre {v} post"),
    ("printf '%s' \"pre {{ inputs.up.v }} post\"", "pre {v} post"),
    ("printf '%s' \"$(printf '%sX' {{ inputs.up.v }})\"", "{v}X"),
    ("printf '%s' \"$(printf '%sX' \"{{ inputs.up.v }}\")\"", "{v}X"),
    ("printf '%s' \"$(printf '%sX' 'in {{ inputs.up.v }}')\"", "in {v}X"),
    ("x=$(printf '%sX' {{ inputs.up.v }}); printf '%s' \"$x\"", "{v}X"),
    (
        "printf '%s|' {{ inputs.up.v }} \"{{ inputs.up.v }}\" '{{ inputs.up.v }}' a{{ inputs.up.v }}b",
        "{v}|{v}|{v}|a{v}b|",
    ),
    ("printf '%s' \"x\"{{ inputs.up.v }}'y'\"$(printf z)\"", "x{v}yz"),
    ("V={{ inputs.up.v }}; printf '%s' \"$V\"", "{v}"),
    ("for x in {{ inputs.up.v }}; do printf '%s' \"$x\"; done", "{v}"),
    ("case {{ inputs.up.v }} in *) printf '%s' {{ inputs.up.v }};; esac", "{v}"),
    ("printf '%s' {{ inputs.up.v }} | cat", "{v}"),
    ("printf '%s' \"$( (printf '%sX' {{ inputs.up.v }}) )\"", "{v}X"),
]

SHELLS = [s for s in ("/bin/sh", shutil.which("bash"), shutil.which("dash")) if s]


def _run(shell: str, command: str, cwd: str) -> str:
    r = subprocess.run(
        [shell, "-c", command],
        cwd=cwd,
        capture_output=True,
        timeout=10,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd},
    )
    return r.stdout.decode()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("template", "shows"), CONTEXTS, ids=range(len(CONTEXTS)))
def test_an_upstream_output_is_never_run_by_the_shell(tmp_path, shell, template, shows):
    failures = []
    for value in HOSTILE_VALUES:
        command = Template(template).render_command({"inputs": {"up": {"v": value}}})
        out = _run(shell, command, str(tmp_path))
        # $( ) drops trailing newlines: the X after the value keeps them
        expected = shows.replace("{v}", value)
        if out != expected:
            failures.append(f"{value!r}: {command!r} printed {out!r}")
        if os.listdir(tmp_path):
            failures.append(f"{value!r}: {command!r} created {os.listdir(tmp_path)}")
            for name in os.listdir(tmp_path):
                os.remove(tmp_path / name)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("shell", SHELLS)
def test_structured_outputs_are_quoted_as_their_json_text(tmp_path, shell):
    value = {"cmd": "$(touch pwned)", "list": ["`touch pwned`", "'", '"']}
    command = Template("printf '%s' {{ inputs.up.v }} \"{{ inputs.up.v }}\"").render_command(
        {"inputs": {"up": {"v": value}}}
    )
    text = '{"cmd":"$(touch pwned)","list":["`touch pwned`","\'","\\""]}'
    assert _run(shell, command, str(tmp_path)) == text * 2
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("template", "where"),
    [
        ("echo `cat {{ inputs.up.v }}`", "inside backticks"),
        ('echo "`cat {{ inputs.up.v }}`"', "inside backticks"),
        ("echo ${x:-{{ inputs.up.v }}}", "inside ${...}"),
        ('echo "${x:-{{ inputs.up.v }}}"', "inside ${...}"),
        ("echo $(( {{ inputs.up.v }} + 1 ))", "inside arithmetic"),
        ("(( {{ inputs.up.v }} > 1 )) && echo", "inside arithmetic"),
        ("[[ {{ inputs.up.v }} -gt 1 ]] && echo", "inside [[ ]]"),
        ("echo ok # {{ inputs.up.v }}", "inside a comment"),
        ("echo ${{ inputs.up.v }}", "right after $"),
        ("echo \\{{ inputs.up.v }}", "right after a backslash"),
        ("cat <<EOF\n{{ inputs.up.v }}\nEOF", "here-document"),
        ("echo $'{{ inputs.up.v }}'", "after $"),
        ("echo $[{{ inputs.up.v }}]", "$[ ]"),
        ("echo 'unclosed {{ inputs.up.v }}", "unclosed"),
    ],
)
def test_templates_where_no_value_can_be_quoted_are_refused_with_advice(template, where):
    with pytest.raises(ExpressionError) as err:
        Template(template).shell_places()
    message = str(err.value)
    assert where in message
    assert "assign it to a variable first" in message
