"""What the dashboard computes off the UI thread, tested without Textual: task order
(filters and sorts), the DAG's folded layout, prefix-group counts, column fitting, ages."""

from __future__ import annotations

import pytest

from analyzer.fmt import STATE_STYLE, fmt_age
from spool import Home
from tuiflow.app.data import dag_rows, load_workflow, task_order, task_row
from tuiflow.app.overview import QUEUE_COLUMNS, WORKFLOW_COLUMNS, fit_columns
from tuiflow.engine.runstate import RunState
from tuiflow.engine.store import WorkflowStore
from tuiflow.fixtures import demo
from tuiflow.sdk.builder import Workflow

IDS = demo.IDS


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> WorkflowStore:
    return WorkflowStore(demo.build(str(tmp_path_factory.mktemp("demo") / "home"), spans=False))


def snapshot(store: WorkflowStore, name: str):
    return load_workflow(store, IDS[name], demo.NOW)


# ------------------------------------------------------------------ task order
def test_unfiltered_order_is_the_definition_order_without_building_a_list(store):
    snap = snapshot(store, "fanout")
    order = task_order(snap, "", "all", "name")
    assert order == range(1002)  # nothing built for the common case


def test_state_and_name_filters_combine(store):
    snap = snapshot(store, "fanout")
    failed = task_order(snap, "", "failed", "name")
    assert [snap.index.names[i] for i in failed] == ["work[101]", "work[502]"]
    assert [snap.index.names[i] for i in task_order(snap, "WORK[50", "failed", "name")] == ["work[502]"]
    assert list(task_order(snap, "no such task", "all", "name")) == []
    running = task_order(snap, "", "running", "name")
    assert len(running) == snap.counts["running"] == 30


def test_sorts(store):
    snap = snapshot(store, "fanout")
    by_attempt = [snap.index.names[i] for i in task_order(snap, "", "all", "attempt")[:4]]
    # retried tasks first (two ValueError retries, two CUDA retries), then definition order
    assert sorted(by_attempt) == ["work[101]", "work[17]", "work[340]", "work[502]"]
    ran = task_order(snap, "", "completed", "ran")
    durations = [task_row(snap, i)[5] for i in ran]
    assert durations == sorted(durations, reverse=True)
    by_state = [task_row(snap, i)[1] for i in task_order(snap, "", "all", "state")]
    assert by_state == sorted(by_state)


def test_task_row_reports_times_and_the_first_line_of_the_error(store):
    snap = snapshot(store, "diamond")
    row = task_row(snap, snap.index.index["broken"])
    name, state, attempt, worker, queued, ran, detail = row
    assert (name, state, attempt, worker) == ("broken", "failed", 0, "gpu-node-1-4242-a1b2")
    assert queued == pytest.approx(0.1) and ran == pytest.approx(0.3)
    assert detail == "exit 1 · RuntimeError: this task always fails"
    skipped = task_row(snap, snap.index.index["low"])
    assert skipped[5] is None and skipped[6].startswith("condition ")


# ------------------------------------------------------------------------- DAG
def test_dag_folds_foreach_items_and_expands_on_request(store):
    snap = snapshot(store, "fanout")
    rows = dag_rows(snap, frozenset())
    kinds = [key[0] for key, _ in rows]
    assert kinds == ["layer", "task", "layer", "group", "layer", "task"]
    (_, group) = rows[3]
    _, name, counts, total, open_, deps = group
    assert (name, total, open_, deps) == ("work", 1000, False, "start")
    whole = {k: v for k, v in snap.counts.items() if v}
    whole["completed"] -= 1  # start
    whole.pop("upstream_failed")  # join
    assert dict(counts) == whole and sum(whole.values()) == 1000
    expanded = dag_rows(snap, frozenset({"work"}))
    assert len(expanded) == len(rows) + 1000
    assert expanded[4][1][:3] == ("task", "work[0]", "completed")
    assert rows[-1][1][3] == "work[×1000]"  # join's upstreams, folded


def _prefix_workflow(n: int) -> RunState:
    wf = Workflow("prefixes")
    wf.task("prep", run="true")
    for k in range(n):
        wf.task(f"eval/case{k}", run="true", depends_on=["prep"])
    return RunState(wf.compile(), "prefixes", 0.0)


@pytest.mark.parametrize(("n", "folded"), [(12, False), (13, True)])
def test_dag_folds_a_large_prefix_group_in_a_layer(tmp_path, n, folded):
    store = WorkflowStore(Home.open(tmp_path / "home"))
    run = _prefix_workflow(n)
    wf_id = store.create(run.definition)
    snap = load_workflow(store, wf_id, 0.0)
    rows = dag_rows(snap, frozenset())
    groups = [data for key, data in rows if key[0] == "group"]
    if folded:
        assert [(g[1], g[3]) for g in groups] == [("eval/*", n)]
    else:
        assert groups == [] and sum(1 for key, _ in rows if key[0] == "task") == n + 1


def test_prefix_group_counts(store):
    snap = snapshot(store, "ml-pipeline")
    assert [(g.prefix, g.total, g.counts["completed"]) for g in snap.groups] == [
        ("prep", 2, 2),
        ("train", 6, 6),
        ("eval", 3, 3),
    ]


# ---------------------------------------------------------------- presentation
def test_fit_columns_drops_the_least_important_first_and_grows_the_bar():
    wide = fit_columns(WORKFLOW_COLUMNS, 200)
    assert [c.key for c, _ in wide] == [c.key for c in WORKFLOW_COLUMNS]
    assert dict((c.key, w) for c, w in wide)["progress"] == 40  # grown, to its cap
    narrow = fit_columns(WORKFLOW_COLUMNS, 80)
    keys = [c.key for c, _ in narrow]
    assert (
        "age" not in keys and "rate" not in keys and {"id", "name", "state", "progress", "done"} <= set(keys)
    )
    assert sum(w + 2 for _, w in narrow) + 2 <= 80
    tiny = fit_columns(QUEUE_COLUMNS, 10)
    assert [c.key for c, _ in tiny][:1] == ["queue"]  # the name is never dropped


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (-3, "0 s"),  # another host's clock ahead of ours
        (59.9, "59 s"),
        (119, "119 s"),
        (125, "2 min"),
        (3599, "59 min"),
        (4 * 3600 + 65, "4 h"),
        (47 * 3600, "47 h"),
        (3 * 86400, "3 d"),
        (None, "-"),
    ],
)
def test_fmt_age(seconds, text):
    assert fmt_age(seconds) == text
    assert len(fmt_age(seconds)) <= 6  # the overview's AGE and BEAT columns


def test_every_state_has_one_colour():
    from tuiflow.engine.runstate import STATE_NAMES, WF_STATES

    assert set(STATE_NAMES) | set(WF_STATES) | {"retrying"} <= set(STATE_STYLE)
    assert STATE_STYLE["upstream_failed"] != STATE_STYLE["failed"]  # the dashboard's palette won
