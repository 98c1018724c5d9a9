"""The state machine, table-driven: no files, no clocks, no processes."""

from __future__ import annotations

import pytest

from tuiflow.engine.compiler import compile_workflow
from tuiflow.engine.runstate import Changed, Dispatch, Finished, Kill, NotRetryable, RunState


def make(tasks: list[dict], params: dict | None = None) -> RunState:
    d = compile_workflow({"name": "t", "params": params or {}, "tasks": tasks})
    return RunState(d, "wf1", 0.0)


def idx(run: RunState, name: str) -> int:
    return run.definition.index[name]


def state(run: RunState, name: str) -> str:
    return run.state_of(idx(run, name))


def dispatched(actions) -> list[int]:
    return [a.idx for a in actions if isinstance(a, Dispatch)]


def finish(run: RunState, name: str, outcome: str, now: float = 1.0, output=None):
    i = idx(run, name)
    if outcome == "completed":
        return run.on_completed(i, run.attempt[i], "w", now, output=output)
    if outcome == "failed":
        return run.on_failed(i, run.attempt[i], "w", now, error="boom")
    raise AssertionError(outcome)


SKIP = "false"  # a condition that skips its task


def diamond(policy: str, p1: str, p2: str) -> RunState:
    """P1, P2 -> C (policy). p1/p2: 'skip' makes the parent skip itself via its condition."""
    tasks = [
        {"name": "P1", "run": "x", **({"condition": SKIP} if p1 == "skip" else {})},
        {"name": "P2", "run": "x", **({"condition": SKIP} if p2 == "skip" else {})},
        {"name": "C", "run": "x", "depends_on": ["P1", "P2"], "dep_policy": policy},
    ]
    return make(tasks)


@pytest.mark.parametrize(
    ("policy", "p1", "p2", "after_first", "final"),
    [
        # all: ready when every dependency completed
        ("all", "completed", "completed", "pending", "ready"),
        # all: upstream_failed as soon as one failed (the other still running)
        ("all", "failed", "completed", "upstream_failed", "upstream_failed"),
        ("all", "completed", "failed", "pending", "upstream_failed"),
        # all: skipped when a dependency was skipped and none failed ... once all are terminal
        ("all", "skip", "completed", "pending", "skipped"),
        ("all", "skip", "failed", "pending", "upstream_failed"),
        ("all", "skip", "skip", "skipped", "skipped"),
        # any: ready as soon as one completed; later arrivals change nothing
        ("any", "completed", "completed", "ready", "ready"),
        ("any", "completed", "failed", "ready", "ready"),
        ("any", "failed", "completed", "pending", "ready"),
        ("any", "skip", "completed", "pending", "ready"),
        # any: upstream_failed / skipped only when no dependency can complete any more
        ("any", "failed", "failed", "pending", "upstream_failed"),
        ("any", "failed", "skip", "pending", "upstream_failed"),
        ("any", "skip", "skip", "skipped", "skipped"),
    ],
)
def test_dependency_policies(policy, p1, p2, after_first, final):
    run = diamond(policy, p1, p2)
    run.start(0.0)
    # "skip" parents are skipped by start() already; drive the others in order P1, P2
    order = [n for n, o in (("P1", p1), ("P2", p2)) if o != "skip"]
    outcomes = {"P1": p1, "P2": p2}
    if order:
        finish(run, order[0], outcomes[order[0]])
        if len(order) == 2:
            assert state(run, "C") == after_first
            finish(run, order[1], outcomes[order[1]])
    assert state(run, "C") == final


def test_condition_false_skips_and_missing_key_says_why():
    run = make(
        [
            {"name": "A", "call": "m:f"},
            {"name": "B", "run": "x", "depends_on": ["A"], "condition": "inputs.A.score > 0.5"},
            {"name": "C", "run": "x", "depends_on": ["A"], "condition": "inputs.A.missing > 0.5"},
            {"name": "D", "run": "x", "depends_on": ["A"], "condition": "inputs.A.score > 0.1"},
            {"name": "E", "run": "x", "depends_on": ["A"], "condition": "inputs.A.score > 'text'"},
        ]
    )
    run.start(0.0)
    actions = finish(run, "A", "completed", output={"score": 0.3})
    assert state(run, "B") == "skipped" and "is false" in run.reason[idx(run, "B")]
    assert state(run, "C") == "skipped" and "inputs.A.missing does not exist" in run.reason[idx(run, "C")]
    assert state(run, "D") == "ready" and dispatched(actions) == [idx(run, "D")]
    assert state(run, "E") == "failed" and "condition error" in run.reason[idx(run, "E")]


def test_retries_with_backoff_and_attempt_fencing():
    run = make([{"name": "A", "run": "x", "num_retries": 2, "retry_backoff": 1.5}])
    [d0] = run.start(0.0)
    assert (d0.attempt, d0.delay) == (0, 0.0)
    run.on_started(0, 0, "w1", 1.0)
    actions = run.on_failed(0, 0, "w1", 2.0, error="oops")
    d1 = next(a for a in actions if isinstance(a, Dispatch))
    assert (d1.attempt, d1.delay) == (1, 1.5) and state(run, "A") == "ready"
    assert any(isinstance(a, Changed) and a.state == "retrying" for a in actions)
    # the old attempt's late result is fenced off
    assert run.on_completed(0, 0, "w1", 3.0, output="late") == []
    assert run.stats["duplicates_ignored"] == 1 and state(run, "A") == "ready"
    run.on_failed(0, 1, "w2", 4.0, error="again", kind="timeout")
    run.on_failed(0, 2, "w2", 5.0, error="third", kind="lost")
    assert state(run, "A") == "failed" and run.state == "failed" and run.attempt[0] == 2
    assert run.fail_kind[0] == "lost"


def test_completion_applies_exactly_once():
    run = make([{"name": "A", "run": "x"}, {"name": "B", "run": "x", "depends_on": ["A"]}])
    run.start(0.0)
    first = run.on_completed(0, 0, "w", 1.0, output={"n": 1})
    assert dispatched(first) == [1]
    for _ in range(3):  # redelivered after a crash, or the task ran twice
        assert run.on_completed(0, 0, "w", 2.0, output={"n": 2}) == []
    assert run.outputs[0] == {"n": 1} and run.stats["completions_applied"] == 1
    assert run.stats["duplicates_ignored"] == 3


def test_setup_failures_do_not_retry_and_worker_stops_cost_no_retry():
    run = make([{"name": "A", "run": "x", "num_retries": 3}, {"name": "B", "run": "x", "num_retries": 0}])
    run.start(0.0)
    run.on_failed(0, 0, None, 1.0, error="bad template", kind="setup")
    assert state(run, "A") == "failed"
    actions = run.on_failed(1, 0, "w", 1.0, error="stopped", kind="worker stopped")
    assert dispatched(actions) == [1] and state(run, "B") == "ready" and run.attempt[1] == 1
    run.on_failed(1, 1, "w", 2.0, error="real failure")
    assert state(run, "B") == "failed"  # the stop did not use up B's (zero) retries, but a failure does


def test_cancel_kills_running_and_cancels_the_rest():
    run = make(
        [
            {"name": "A", "run": "x"},
            {"name": "B", "run": "x"},
            {"name": "C", "run": "x", "depends_on": ["A"]},
        ]
    )
    run.start(0.0)
    run.on_started(0, 0, "w1", 1.0)
    actions = run.cancel(2.0)
    kills = [a for a in actions if isinstance(a, Kill)]
    assert [(k.idx, k.worker) for k in kills] == [(0, "w1")]
    assert state(run, "B") == "cancelled" and state(run, "C") == "cancelled"
    assert run.state == "cancelled"
    assert not any(isinstance(a, Finished) for a in actions)  # A still running
    actions = run.on_failed(0, 0, "w1", 3.0, error="killed", kind="cancelled")
    assert state(run, "A") == "cancelled"
    assert [a.state for a in actions if isinstance(a, Finished)] == ["cancelled"]
    assert run.cancel(4.0) == []  # cancelling a finished workflow changes nothing


def test_a_running_task_that_completes_after_cancel_is_still_cancelled_workflow():
    run = make([{"name": "A", "run": "x"}, {"name": "B", "run": "x", "depends_on": ["A"]}])
    run.start(0.0)
    run.on_started(0, 0, "w", 1.0)
    run.cancel(2.0)
    actions = run.on_completed(0, 0, "w", 3.0)
    assert state(run, "A") == "completed" and state(run, "B") == "cancelled"
    assert [a.state for a in actions if isinstance(a, Finished)] == ["cancelled"]


def test_retry_command_resets_failed_and_their_upstream_failed_descendants():
    run = make(
        [
            {"name": "A", "run": "x"},
            {"name": "B", "run": "x", "depends_on": ["A"]},
            {"name": "C", "run": "x", "depends_on": ["B"]},
            {"name": "D", "run": "x"},
        ]
    )
    run.start(0.0)
    finish(run, "A", "failed")
    finish(run, "D", "completed")
    assert (state(run, "B"), state(run, "C"), run.state) == ("upstream_failed", "upstream_failed", "failed")
    with pytest.raises(NotRetryable, match="'D' is completed"):
        run.retry(["D"], 5.0)
    actions = run.retry(["A"], 5.0)
    assert dispatched(actions) == [0] and run.attempt[0] == 1
    assert (state(run, "B"), state(run, "C"), run.state) == ("pending", "pending", "running")
    run.on_completed(0, 1, "w", 6.0)
    actions = run.on_completed(1, run.attempt[1], "w", 7.0)
    assert dispatched(actions) == [2]
    actions = run.on_completed(2, run.attempt[2], "w", 8.0)
    assert [a.state for a in actions if isinstance(a, Finished)] == ["completed"]


def test_retry_requests_apply_once():
    run = make([{"name": "A", "run": "x"}])
    run.start(0.0)
    finish(run, "A", "failed")
    assert run.seen_request("r1") is False
    run.retry(None, 1.0)
    assert run.seen_request("r1") is True  # a redelivered request is recognised


def test_worker_lost_and_timeouts():
    run = make([{"name": "A", "run": "x", "num_retries": 1}, {"name": "B", "run": "x", "timeout": 10}])
    run.start(0.0)
    run.on_started(0, 0, "w-dead", 1.0)
    run.on_started(1, 0, "w-ok", 1.0)
    actions = run.on_worker_lost("w-dead", 2.0)
    assert dispatched(actions) == [0] and run.attempt[0] == 1 and "lost" in run.reason[0]
    assert run.check_timeouts(5.0, grace=2.0) == []
    actions = run.check_timeouts(13.5, grace=2.0)
    assert [(type(a).__name__) for a in actions][:1] == ["Kill"] and state(run, "B") == "failed"
    assert run.fail_kind[1] == "timeout"


def test_workflow_outcomes():
    run = make([{"name": "A", "run": "x"}, {"name": "B", "run": "x", "condition": "false"}])
    run.start(0.0)
    actions = finish(run, "A", "completed")
    assert [a.state for a in actions if isinstance(a, Finished)] == ["completed"]  # skipped is fine
    run = make([{"name": "A", "run": "x", "condition": "false"}])
    assert [a.state for a in run.start(0.0) if isinstance(a, Finished)] == ["completed"]


def test_any_policy_with_foreach_group_inputs():
    run = make(
        [
            {"name": "S", "foreach": [1, 2, 3], "call": "m:f"},
            {
                "name": "J",
                "run": "x",
                "depends_on": ["S"],
                "condition": "len(inputs.S) == 3 and inputs['S[1]'] == 2",
            },
        ]
    )
    run.start(0.0)
    for k in range(3):
        run.on_completed(k, 0, "w", 1.0, output=k + 1)
    assert state(run, "J") == "ready"


def test_serialisation_round_trip_mid_run():
    run = make(
        [
            {"name": "A", "run": "x"},
            {"name": "B", "run": "x", "depends_on": ["A"]},
            {"name": "C", "run": "x", "depends_on": ["A", "B"]},
        ]
    )
    run.start(0.0)
    run.on_completed(0, 0, "w", 1.0, output={"big": False}, output_ref=None)
    run.on_started(1, 0, "w", 2.0)
    wire = run.to_wire()
    again = RunState.from_wire(run.definition, wire)
    assert again.to_wire() == wire
    assert again.count_dict() == run.count_dict()
    actions = again.on_completed(1, 0, "w", 3.0)
    assert dispatched(actions) == [2]
