"""Replay: every task's state at instants before, during and after each of its changes,
on spans made by hand (analyzer/replay.py).

    a: queued 0.5, runs 1-3 on w1
    b (after a): queued 3.2, attempt 0 runs 4-5 on w2 and fails; queued again 6, runs 6.5-8
    c (after a): queued 3.1, runs 3.5-9 on w1
"""

from __future__ import annotations

import json

import pytest

from analyzer.replay import events, replay
from analyzer.synthetic import DEFAULT_EPOCH, SyntheticWorkflow
from analyzer.trace import load_trace


@pytest.fixture
def trace(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-r", "r")
    wf.workflow(0.0, 10.0)
    wf.attempt("a", start=1.0, end=3.0, ready_at=0.5)
    wf.attempt("b", 0, start=4.0, end=5.0, ready_at=3.2, depends_on=["a"], worker="w2", outcome="failed")
    wf.attempt("b", 1, start=6.5, end=8.0, ready_at=6.0, depends_on=["a"], worker="w2")
    wf.attempt("c", start=3.5, end=9.0, ready_at=3.1, depends_on=["a"])
    return load_trace(wf.dir)


def _states(trace, t: float) -> dict[str, tuple]:
    snap = replay(trace, DEFAULT_EPOCH + t)
    assert snap.offset == pytest.approx(t)
    return {r.task: (r.state, r.attempt, None if r.since is None else round(r.since - DEFAULT_EPOCH, 3),
                     r.worker, r.waiting_for) for r in snap.tasks}  # fmt: skip


@pytest.mark.parametrize(
    ("t", "want"),
    [
        (0.2, {"a": ("pending", None, None, None, []), "b": ("pending", None, None, None, ["a"]),
               "c": ("pending", None, None, None, ["a"])}),
        (0.7, {"a": ("queued", 0, 0.5, None, []), "b": ("pending", None, None, None, ["a"]),
               "c": ("pending", None, None, None, ["a"])}),
        (2.0, {"a": ("running", 0, 1.0, "w1", []), "b": ("pending", None, None, None, ["a"]),
               "c": ("pending", None, None, None, ["a"])}),
        (3.15, {"a": ("completed", 0, 3.0, "w1", []), "b": ("pending", None, None, None, []),
                "c": ("queued", 0, 3.1, None, [])}),
        (3.3, {"a": ("completed", 0, 3.0, "w1", []), "b": ("queued", 0, 3.2, None, []),
               "c": ("queued", 0, 3.1, None, [])}),
        (4.5, {"a": ("completed", 0, 3.0, "w1", []), "b": ("running", 0, 4.0, "w2", []),
               "c": ("running", 0, 3.5, "w1", [])}),
        (5.5, {"a": ("completed", 0, 3.0, "w1", []), "b": ("retrying", 0, 5.0, None, []),
               "c": ("running", 0, 3.5, "w1", [])}),
        (6.2, {"a": ("completed", 0, 3.0, "w1", []), "b": ("queued", 1, 6.0, None, []),
               "c": ("running", 0, 3.5, "w1", [])}),
        (7.0, {"a": ("completed", 0, 3.0, "w1", []), "b": ("running", 1, 6.5, "w2", []),
               "c": ("running", 0, 3.5, "w1", [])}),
        (9.5, {"a": ("completed", 0, 3.0, "w1", []), "b": ("completed", 1, 8.0, "w2", []),
               "c": ("completed", 0, 9.0, "w1", [])}),
    ],
)  # fmt: skip
def test_each_task_at_instants_around_each_change(trace, t, want):
    assert _states(trace, t) == want


def test_counts_running_first_and_the_event_stops(trace):
    snap = replay(trace, DEFAULT_EPOCH + 4.5)
    assert snap.counts == {"running": 2, "completed": 1}
    assert [r.task for r in snap.tasks] == ["c", "b", "a"]  # running, longest first; then the rest
    stops = [round(e - DEFAULT_EPOCH, 3) for e in events(trace)]
    assert stops == [0.5, 1.0, 3.0, 3.1, 3.2, 3.5, 4.0, 5.0, 6.0, 6.5, 8.0, 9.0]


@pytest.mark.parametrize(
    ("text", "offset"),
    [("+12.5", 12.5), ("+90s", 90.0), ("+1m30s", 90.0), ("+1h", 3600.0), ("01:46:40", 0.0), ("01:47Z", 20.0),
     ("2001-09-09T01:46:50Z", 10.0), ("2001-09-09T03:46:50+02:00", 10.0)],
)  # fmt: skip
def test_an_instant_is_an_offset_a_utc_clock_time_or_iso(text, offset):
    from analyzer.replay import parse_instant

    start = 1_000_000_000.0  # 2001-09-09 01:46:40Z
    assert parse_instant(text, start) - start == pytest.approx(offset)


@pytest.mark.parametrize("text", ["+", "+x", "+1q", "14:99", "yesterday"])
def test_a_bad_instant_says_what_to_write(text):
    from analyzer.replay import parse_instant

    with pytest.raises(ValueError, match=r"write \+12\.5"):
        parse_instant(text, 1_000_000_000.0)


def test_trace_at_prints_what_ran_where_and_what_waited_on_whom(tmp_path):
    from typer.testing import CliRunner

    from tuiflow.cli.main import app
    from tuiflow.fixtures import demo

    home = demo.build(str(tmp_path / "home"), fanout_tasks=10)
    wf = demo.IDS["ml-pipeline"]

    def run(*args):
        return CliRunner().invoke(
            app, ["trace", "at", wf, *args, "--home", home.root], catch_exceptions=False
        )

    snap = json.loads(run("+20", "--json").output)
    assert snap["counts"] == {"running": 3, "pending": 3, "completed": 5}
    by_task = {r["task"]: r for r in snap["tasks"]}
    assert by_task["eval/compare"]["waiting_for"] == ["train/rf", "train/gnn"]
    assert by_task["train/gnn"]["worker"] == "gpu-node-2-5151-c3d4"
    text = run("+20").output
    assert "3 running · 3 pending · 5 completed" in text and "waiting for train/rf, train/gnn" in text
    bad = run("14:99")
    assert bad.exit_code == 2 and "TIME: '14:99' is not a time" in bad.output
