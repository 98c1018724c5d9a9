"""Slack and what-if on a DAG whose answers are worked out by hand (analyzer/slack.py).

    a (0-2) -> b (waits 1, runs 3-8) -> d (8-10)
            -> c (2-4)              -> d
                        c -> e (waits 1, runs 5-5.5)

Earliest finishes: a 2, b 8, c 4, d 10, e 5.5; makespan 10. Latest finishes: d and e 10
(nobody depends on them), b 10-2 = 8, c min(8, 10-0.5-1) = 8, a min(8-5-1, 8-2) = 2.
Slack: a, b, d 0 (the critical path); c 4; e 4.5.
"""

from __future__ import annotations

import json

import pytest

from analyzer.slack import select, slack, what_if
from analyzer.synthetic import SyntheticWorkflow
from analyzer.trace import load_trace


@pytest.fixture
def trace(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-s", "s")
    wf.workflow(0.0, 10.0)
    wf.attempt("a", start=0.0, end=2.0)
    wf.attempt("b", start=3.0, end=8.0, depends_on=["a"], executor="vllm")
    wf.attempt("c", start=2.0, end=4.0, depends_on=["a"])
    wf.attempt("d", start=8.0, end=10.0, depends_on=["b", "c"])
    wf.attempt("e", start=5.0, end=5.5, depends_on=["c"])
    return load_trace(wf.dir)


def test_slack_of_every_task_from_a_forward_and_a_backward_pass(trace):
    report = slack(trace)
    assert report.makespan == pytest.approx(10.0)
    got = {r.task: r for r in report.tasks}
    assert {t: round(r.slack, 6) for t, r in got.items()} == {"a": 0, "b": 0, "d": 0, "c": 4, "e": 4.5}
    assert [t for t, r in got.items() if r.critical] == ["a", "b", "d"]
    assert got["b"].wait == pytest.approx(1.0) and got["e"].wait == pytest.approx(1.0)
    assert got["c"].earliest_finish == pytest.approx(4.0) and got["c"].latest_finish == pytest.approx(8.0)
    assert [r.task for r in report.tasks][:3] == ["a", "b", "d"]  # least slack first
    assert not any(r.near_critical for r in report.tasks)
    assert {r.task for r in slack(trace, near=0.5).tasks if r.near_critical} == {"c", "e"}


def test_what_if_a_critical_task_runs_faster(trace):
    twice = what_if(trace, ["b"], lambda d: d / 2)
    assert twice.changed == {"b": (5.0, 2.5)}
    assert (twice.makespan_before, twice.makespan_after) == pytest.approx((10.0, 7.5))
    assert twice.saved == pytest.approx(2.5)
    assert twice.critical_before == twice.critical_after == ["a", "b", "d"]


def test_what_if_the_path_moves_when_its_step_takes_no_time(trace):
    gone = what_if(trace, ["b"], lambda d: 0.0)
    assert gone.makespan_after == pytest.approx(6.0)  # a 2, b waits 1: 3; c ends 4; d 6
    assert gone.critical_after == ["a", "c", "d"]


def test_what_if_off_the_critical_path_gains_nothing(trace):
    r = what_if(trace, ["c", "e"], lambda d: d / 10)
    assert r.makespan_after == pytest.approx(10.0) and r.saved == pytest.approx(0.0)


def test_tasks_are_chosen_by_name_prefix_or_executor(trace):
    assert select(trace, tasks=["a", "zz"]) == ["a"]
    assert select(trace, executor="vllm") == ["b"]
    assert select(trace, prefix="d") == ["d"]


def test_a_dependency_cycle_or_a_parent_without_spans_never_hangs_the_passes(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-c", "c")
    wf.attempt("x", start=0.0, end=1.0, depends_on=["y"])
    wf.attempt("y", start=1.0, end=3.0, depends_on=["x", "never-ran"])
    report = slack(load_trace(wf.dir))
    assert {r.task for r in report.tasks} == {"x", "y"}  # the cycle's closing edge is dropped
    assert report.makespan >= 3.0 and all(r.slack >= 0 for r in report.tasks)


# --- the commands, on the demo home's ml-pipeline run ------------------------------------------


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    from tuiflow.fixtures import demo

    return demo.build(str(tmp_path_factory.mktemp("demo") / "home"), fanout_tasks=10), demo.IDS["ml-pipeline"]


def _tuiflow(*args: object):
    from typer.testing import CliRunner

    from tuiflow.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_trace_slack_lists_the_critical_path_first_and_what_could_slip(demo_home):
    home, wf = demo_home
    out = _tuiflow("trace", "slack", wf, "--home", home.root).output
    rows = [line.split() for line in out.splitlines() if "critical" in line and "/" in line]
    assert [r[0] for r in rows] == ["prep/load", "prep/featurize", "train/gnn", "eval/compare", "eval/report"]
    report = json.loads(_tuiflow("trace", "slack", wf, "--home", home.root, "--json").output)
    by_task = {r["task"]: r for r in report["tasks"]}
    assert by_task["train/rf"]["slack"] > 20 and not by_task["train/rf"]["critical"]


def test_trace_what_if_prints_the_makespan_before_and_after(demo_home):
    home, wf = demo_home
    r = json.loads(_tuiflow("trace", "what-if", wf, "--prefix", "train/", "--speedup", "2", "--json",
                            "--home", home.root).output)  # fmt: skip
    assert r["saved"] == pytest.approx(21.0)  # half of train/gnn's 42 s, on the critical path
    assert set(r["changed"]) == {"train/gnn", "train/rf"} | {f"train/sweep[{k}]" for k in range(4)}
    text = _tuiflow(
        "trace", "what-if", wf, "--task", "train/rf", "--duration", "1", "--home", home.root
    ).output
    assert "makespan 1m 15s → 1m 15s" in text  # off the critical path: nothing gained
    bad = _tuiflow("trace", "what-if", wf, "--speedup", "2", "--home", home.root)
    assert bad.exit_code == 2 and "--task NAME, --prefix P or --executor E" in bad.output
    both = _tuiflow(
        "trace", "what-if", wf, "--task", "x", "--speedup", "2", "--duration", "1", "--home", home.root
    )
    assert both.exit_code == 2 and "one of them" in both.output
