"""The analyses on hand-made workflows with known answers (see fixtures/analyzer/scenarios.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from analyzer.critical import critical_path
from analyzer.e2e import e2e_breakdown
from analyzer.errors import MixedWorkflowsError
from analyzer.lineage import CYCLE, EXTERNAL, SEEN, lineage_graph, lineage_tree
from analyzer.queuing import queuing_delays
from analyzer.records import LineageRow
from analyzer.report import analyze, analyze_workflow, build_report
from analyzer.runs import history
from analyzer.stats import merged_length, percentile, summarize
from analyzer.synthetic import DEFAULT_EPOCH, Child, SyntheticWorkflow
from analyzer.trace import load_trace

FIXTURES = Path(__file__).parent / "fixtures" / "analyzer"
T0 = DEFAULT_EPOCH


def _load(name: str):
    mod_name = f"_analyzer_fixture_{name}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, FIXTURES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    return sys.modules[mod_name]


scenarios = _load("scenarios")
approx = pytest.approx


@pytest.fixture
def diamond(tmp_path):
    return load_trace(scenarios.diamond(tmp_path / "wf").dir)


def _queuing(trace) -> dict:
    return {q.task: q for q in queuing_delays(trace)}


# --- numbers ---------------------------------------------------------------------------------------


def test_percentile_and_merged_length():
    assert percentile([1.5, 2.0, 2.0, 5.0], 0.5) == 2.0
    assert percentile([1.5, 2.0, 2.0, 5.0], 0.95) == approx(4.55)
    assert percentile([], 0.5) == 0.0
    assert percentile([7.0], 0.95) == 7.0
    assert merged_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7), (10, 10), (9, 8)]) == 4.0
    s = summarize([3.0, -1.0, 1.0])  # a negative duration counts as 0
    assert (s.count, s.total_seconds, s.max_seconds, s.p50_seconds) == (3, 4.0, 3.0, 1.0)


# --- e2e -------------------------------------------------------------------------------------------


def test_e2e_wall_compute_and_merged_network(diamond):
    e2e = e2e_breakdown(diamond)
    assert (e2e.wall_seconds, e2e.wall_source, e2e.start) == (30.0, "workflow span", T0)
    execute = e2e.compute["execute"]
    assert (execute.count, execute.total_seconds, execute.mean_seconds) == (4, approx(10.5), approx(2.625))
    assert (execute.p50_seconds, execute.p95_seconds, execute.max_seconds) == (approx(2.0), approx(4.55), 5.0)
    assert e2e.compute["post-process"].total_seconds == approx(1.7)
    assert e2e.compute["executor setup"].count == 1
    assert next(iter(e2e.compute)) == "execute"  # largest total first
    net = e2e.network
    assert net.count == 8
    assert net.total_seconds == approx(5.3)
    assert net.total_active_seconds == approx(4.8)  # the reads of train/a and train/b overlap
    assert net.bytes == 2110
    read = net.by_name["read upstream outputs"]
    assert (read.count, read.total_seconds, read.active_seconds, read.bytes) == (
        4,
        approx(3.5),
        approx(3.0),
        1100,
    )
    write = net.by_name["write outputs"]
    assert (write.total_seconds, write.active_seconds, write.bytes) == (approx(1.8), approx(1.8), 1010)
    assert e2e.compute_total_seconds == approx(10.5 + 0.5 + 1.7)


def test_e2e_without_workflow_span_uses_attempts(tmp_path):
    e2e = e2e_breakdown(load_trace(scenarios.diamond(tmp_path / "wf", workflow_span=False).dir))
    assert (e2e.wall_seconds, e2e.wall_source, e2e.start, e2e.end) == (
        approx(14.0),
        "task spans",
        T0 + 1.0,
        T0 + 15.0,
    )


def test_e2e_per_worker_and_executor(diamond):
    e2e = e2e_breakdown(diamond)
    w1 = e2e.workers["w1"]
    assert (w1.attempts, w1.failed, w1.busy_seconds, w1.active_seconds) == (2, 0, approx(6.5), approx(6.5))
    assert w1.compute_seconds == approx(2.0 + 0.5 + 0.5 + 1.5 + 0.2)
    assert w1.network_seconds == approx(0.5 + 0.5 + 0.5 + 0.3)
    assert w1.hosts == ["host1"]
    assert e2e.executors["python"].attempts == 1
    assert e2e.executors["shell"].duration.max_seconds == approx(4.0)
    assert e2e.queues["default"].queue_wait.total_seconds == approx(1.0 + 0.4 + 1.4 + 0.9)
    assert e2e.outcomes == {"completed": 4}


# --- queuing ---------------------------------------------------------------------------------------


def test_queuing_with_several_parents(diamond):
    q = _queuing(diamond)
    assert q["prep"].queuing_delay_seconds == approx(1.0)
    assert (q["prep"].measured_from, q["prep"].blocked_by) == ("ready_at", None)
    assert (q["train/a"].queuing_delay_seconds, q["train/a"].blocked_by) == (approx(0.5), "prep")
    assert (q["train/b"].queuing_delay_seconds, q["train/b"].blocked_by) == (approx(1.5), "prep")
    assert (q["eval"].queuing_delay_seconds, q["eval"].blocked_by) == (approx(1.0), "train/a")
    assert q["eval"].ready_time == T0 + 11.5
    assert q["eval"].queue_wait_seconds == approx(0.9)
    assert not any(e.clock_skew for e in q.values())
    assert [e.task for e in queuing_delays(diamond)] == ["prep", "train/a", "train/b", "eval"]


def test_queuing_clock_skew_is_clamped_and_flagged(tmp_path):
    trace = load_trace(scenarios.skewed(tmp_path / "wf").dir)
    c = _queuing(trace)["c"]
    assert (c.queuing_delay_seconds, c.raw_delay_seconds, c.clock_skew) == (0.0, approx(-0.5), True)
    assert c.blocked_by == "p"
    assert "clock skew" in c.reason
    assert c.queue_wait_seconds == 0.0  # ready_at 10.3 on the coordinator, start 9.5 on host B
    report = build_report(analyze(trace))
    assert any("clock skew" in w for w in report["warnings"])
    (node,) = [n for n in critical_path(trace).nodes if n.task == "c"]
    assert (node.wait_seconds, node.clock_skew) == (0.0, True)


def test_queuing_with_failed_and_missing_parents(tmp_path):
    trace = load_trace(scenarios.missing_parents(tmp_path / "wf").dir)
    c = _queuing(trace)["c"]
    assert c.queuing_delay_seconds is None
    assert c.blocked_by is None
    assert "broken (no READY span)" in c.reason and "ghost (no spans)" in c.reason
    broken = _queuing(trace)["broken"]
    assert broken.queuing_delay_seconds == approx(2.0)  # a root, from ready_at
    assert trace.tasks["broken"].latest.duration == 0.0
    # the critical path still walks through the parent that delivered
    path = critical_path(trace)
    assert path.tasks == ["ok", "c"]
    assert path.nodes[1].wait_seconds == approx(2.0)


def test_root_without_ready_at(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-r", "r")
    wf.attempt("solo", start=1.0, end=2.0, children=scenarios.std_children(1.0, 1.8, 2.0))
    q = _queuing(load_trace(wf.dir))["solo"]
    assert (q.queuing_delay_seconds, q.reason) == (None, "root task without ready_at")


# --- critical path -------------------------------------------------------------------------------------


def test_critical_path_of_the_diamond(diamond):
    path = critical_path(diamond)
    assert path.tasks == ["prep", "train/a", "eval"]
    assert path.end_task == "eval"
    assert [(n.active_seconds, n.wait_seconds) for n in path.nodes] == [
        (approx(4.0), approx(1.0)),
        (approx(7.0), approx(0.5)),
        (approx(2.5), approx(1.0)),
    ]
    assert [n.gated_by for n in path.nodes] == [None, "prep", "train/a"]
    assert [n.gate_via for n in path.nodes] == ["ready_at", "ready", "ready"]
    assert (path.active_seconds, path.wait_seconds, path.total_seconds) == (
        approx(13.5),
        approx(2.5),
        approx(16.0),
    )
    assert (path.start, path.end, path.cycle) == (T0, T0 + 15.0, False)
    # the breakdown restricted to the path leaves train/b out
    assert path.compute["execute"].total_seconds == approx(8.5)
    assert path.network.total_seconds == approx(3.3)
    assert path.network.total_active_seconds == approx(3.3)
    assert path.batch_spans == 0


def test_fan_in_follows_the_last_ready_not_the_last_end(tmp_path):
    path = critical_path(load_trace(scenarios.gate_by_ready(tmp_path / "wf").dir))
    assert path.tasks == ["y", "z"]
    assert path.nodes[1].wait_seconds == approx(2.0)
    assert path.nodes[0].wait_seconds == approx(2.0)  # y queued at 0.0, started at 2.0


def test_retries_use_the_latest_attempt(tmp_path):
    trace = load_trace(scenarios.retried(tmp_path / "wf").dir)
    q = _queuing(trace)
    assert (q["r"].attempt, q["r"].attempts, q["r"].queuing_delay_seconds) == (1, 2, approx(1.0))
    assert (q["c"].queuing_delay_seconds, q["c"].blocked_by) == (approx(1.5), "r")
    path = critical_path(trace)
    assert path.tasks == ["r", "c"]
    r = path.nodes[0]
    assert (r.attempt, r.attempts, r.active_seconds) == (1, 2, approx(3.0))
    assert (r.wait_seconds, r.retry_seconds) == (approx(4.5), approx(3.0))
    assert path.nodes[1].wait_seconds == approx(1.5)
    assert path.retry_seconds == approx(3.0)
    e2e = e2e_breakdown(trace)
    assert (e2e.attempts, e2e.retried_tasks) == (3, 1)
    assert e2e.attempt_outcomes == {"completed": 2, "failed": 1}
    assert e2e.outcomes == {"completed": 2}
    # both attempts' spans count in the compute totals
    assert e2e.compute["execute"].count == 3
    assert e2e.compute["execute"].total_seconds == approx(2.0 + 2.0 + 0.3)
    # only the latest attempt's spans count on the critical path
    assert path.compute["execute"].total_seconds == approx(2.0 + 0.3)


def test_merged_batch_work_counts_on_the_critical_path(tmp_path):
    trace = load_trace(scenarios.batched(tmp_path / "wf").dir)
    path = critical_path(trace)
    assert path.tasks == ["s", "g2", "f"]
    assert path.nodes[1].batch_id == "b1"
    assert path.compute["load model"].total_seconds == approx(2.0)
    assert path.compute["generate"].total_seconds == approx(4.0)
    assert path.batch_spans == 4  # g1's three spans and g3's one
    e2e = e2e_breakdown(trace)
    assert e2e.compute["generate"].count == 1  # recorded once, counted once
    assert _queuing(trace)["f"].blocked_by == "g2"


def test_batch_member_without_its_own_ready_uses_the_batch(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-b", "b")
    wf.attempt(
        "m1", start=1.0, end=5.0, ready_at=0.0, batch_id="B", children=scenarios.std_children(1.0, 4.0, 5.0)
    )
    wf.attempt("m2", start=1.0, end=5.0, ready_at=0.0, batch_id="B")  # its outputs went out with m1's
    wf.attempt(
        "c",
        start=6.0,
        end=7.0,
        ready_at=5.5,
        depends_on=["m2"],
        children=scenarios.std_children(6.0, 6.8, 7.0),
    )
    trace = load_trace(wf.dir)
    ready = trace.data_ready("m2")
    assert (ready.time, ready.via) == (T0 + 4.0, "batch")
    assert _queuing(trace)["c"].queuing_delay_seconds == approx(2.0)


def test_depends_on_cycle_does_not_hang(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-c", "c")
    wf.attempt("a", start=1.0, end=3.0, depends_on=["c"], children=scenarios.std_children(1.0, 2.5, 3.0))
    wf.attempt("b", start=3.5, end=5.0, depends_on=["a"], children=scenarios.std_children(3.5, 4.5, 5.0))
    wf.attempt("c", start=5.5, end=8.0, depends_on=["b"], children=scenarios.std_children(5.5, 7.5, 8.0))
    trace = load_trace(wf.dir)
    path = critical_path(trace)
    assert path.cycle is True
    assert path.tasks == ["a", "b", "c"]
    report = build_report(analyze(trace))
    assert any("cycle" in w for w in report["warnings"])


# --- lineage -----------------------------------------------------------------------------------------


def _rows(*pairs):
    return [LineageRow(data_id=d, sources=list(s), task=f"t-{d}", attempt=0) for d, s in pairs]


def test_lineage_tree_with_a_cycle_and_a_sourceless_loop():
    graph = lineage_graph(
        _rows(
            ("d1", []),
            ("d2", ["d1", "d4"]),
            ("d3", ["d2"]),
            ("d4", ["d3"]),  # d2 -> d4 -> d3 -> d2
            ("d5", ["d3", "ext"]),
            ("x", ["y"]),  # x <-> y: no sink above them
            ("y", ["x"]),
        )
    )
    assert graph.sinks == ["d5"]
    assert graph.roots == ["d1"]
    assert graph.external == ["ext"]
    assert graph.edges == 8
    assert len(graph.cycle_edges) == 2
    forest = lineage_tree(graph)
    assert [t.data_id for t in forest] == ["d5", "x"]
    d5 = forest[0]
    assert [(c.data_id, c.mark) for c in d5.children] == [("d3", None), ("ext", EXTERNAL)]
    d3 = d5.children[0]
    (d2,) = d3.children
    assert [(c.data_id, c.mark) for c in d2.children] == [("d1", None), ("d4", None)]
    (back,) = d2.children[1].children
    assert (back.data_id, back.mark) == ("d3", CYCLE)
    x = forest[1]
    assert [(c.data_id, c.mark) for c in x.children] == [("y", None)]
    assert [(c.data_id, c.mark) for c in x.children[0].children] == [("x", CYCLE)]


def test_lineage_shared_sources_are_expanded_once():
    graph = lineage_graph(_rows(("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])))
    (d,) = lineage_tree(graph)
    b, c = d.children
    assert [(x.data_id, x.mark) for x in b.children] == [("a", None)]
    assert [(x.data_id, x.mark) for x in c.children] == [("a", SEEN)]


def test_lineage_latest_attempt_row_wins_and_assets_join(diamond):
    graph = lineage_graph(
        [
            LineageRow(data_id="d", sources=["old"], attempt=0),
            LineageRow(data_id="d", sources=["new"], attempt=1),
        ]
    )
    assert graph.items["d"].sources == ["new"]
    g = analyze(diamond).lineage
    assert g.sinks == ["d-eval"]
    assert g.external == ["s3://raw"]
    assert (g.items["d-eval"].assets, g.items["d-eval"].bytes, g.items["d-eval"].task) == (1, 2048, "eval")


def test_lineage_chain_thousands_deep():
    rows = _rows(*[(f"d{i}", [f"d{i - 1}"] if i else []) for i in range(5000)])
    (top,) = lineage_tree(lineage_graph(rows))
    depth = 0
    node = top
    while node.children:
        node = node.children[0]
        depth += 1
    assert depth == 4999


# --- history ---------------------------------------------------------------------------------------------


def _run(
    root: Path,
    wf_id: str,
    start: float,
    wall: float,
    t_outcome: str,
    t_duration: float,
    name: str = "nightly",
):
    wf = SyntheticWorkflow(root / wf_id, wf_id, name, epoch=T0 + start)
    wf.workflow(0.0, wall, status="ERROR" if t_outcome != "completed" else "UNSET")
    wf.attempt("prep", start=0.5, end=1.5, ready_at=0.0, children=scenarios.std_children(0.5, 1.2, 1.5))
    wf.attempt(
        "t",
        start=2.0,
        end=2.0 + t_duration,
        ready_at=1.6,
        depends_on=["prep"],
        outcome=t_outcome,
        children=[Child("execute", 2.0, 2.0 + t_duration)],
    )
    return wf.dir


def test_history_across_three_runs(tmp_path):
    dirs = [
        _run(tmp_path, "wf-1", 0.0, 10.0, "completed", 4.0),
        _run(tmp_path, "wf-2", 100.0, 12.0, "failed", 1.0),
        _run(tmp_path, "wf-3", 200.0, 8.0, "completed", 6.0),
    ]
    h = history(dirs, last=2)
    assert (h.workflow_name, h.runs) == ("nightly", 3)
    assert [(r.workflow_id, r.wall_seconds, r.outcome) for r in h.recent] == [
        ("wf-3", 8.0, "completed"),
        ("wf-2", 12.0, "failed"),
    ]
    assert h.recent[0].start == T0 + 200.0
    t = {x.task: x for x in h.tasks}["t"]
    assert (t.runs, t.completed, t.success_rate) == (3, 2, approx(2 / 3))
    assert (t.duration_p50_seconds, t.duration_p95_seconds) == (approx(5.0), approx(5.9))
    assert t.last_outcome == "completed"
    prep = {x.task: x for x in h.tasks}["prep"]
    assert (prep.success_rate, prep.duration_p50_seconds) == (1.0, approx(1.0))


def test_history_refuses_mixed_workflows_unless_told_which(tmp_path):
    dirs = [
        _run(tmp_path, "wf-1", 0.0, 10.0, "completed", 4.0),
        _run(tmp_path, "other", 5.0, 3.0, "completed", 1.0, name="adhoc"),
    ]
    with pytest.raises(MixedWorkflowsError) as err:
        history(dirs)
    assert "adhoc" in str(err.value) and "nightly" in str(err.value)
    h = history(dirs, workflow_name="nightly")
    assert h.runs == 1
    assert h.skipped == [str(dirs[1])]


# --- the report --------------------------------------------------------------------------------------------


def test_report_shape_and_values(tmp_path):
    wf = scenarios.diamond(tmp_path / "wf")
    report = build_report(analyze_workflow(wf.dir), now=T0 + 99.0)
    json.dumps(report)  # plain JSON types only
    for key in (
        "workflow_id",
        "wall_seconds",
        "critical_path",
        "queuing",
        "compute",
        "network",
        "spans_read",
        "lines_skipped",
    ):
        assert key in report
    assert report["workflow_id"] == "wf-diamond"
    assert report["generated_at"] == T0 + 99.0
    assert report["wall_seconds"] == 30.0
    assert [(n["task"], n["active_seconds"], n["wait_seconds"]) for n in report["critical_path"]] == [
        ("prep", approx(4.0), approx(1.0)),
        ("train/a", approx(7.0), approx(0.5)),
        ("eval", approx(2.5), approx(1.0)),
    ]
    rows = {r["task"]: r for r in report["queuing"]}
    assert (rows["eval"]["queuing_delay_seconds"], rows["eval"]["blocked_by"]) == (approx(1.0), "train/a")
    assert rows["eval"]["on_critical_path"] and not rows["train/b"]["on_critical_path"]
    assert report["compute"]["execute"]["count"] == 4
    assert report["compute"]["execute"]["total_seconds"] == approx(10.5)
    assert report["network"]["total_active_seconds"] == approx(4.8)
    assert report["spans_read"] == 22 and report["lines_skipped"] == 0
    assert report["critical_path_summary"]["total_seconds"] == approx(16.0)
    assert report["lineage"]["sinks"] == ["d-eval"]
    assert report["workers"]["w2"]["attempts"] == 1
    assert report["report_version"] == 1
    # the same files give the same report
    assert build_report(analyze_workflow(wf.dir), now=T0 + 99.0) == report


def test_history_renders(tmp_path):
    from analyzer.views import render_history, to_text

    dirs = [
        _run(tmp_path, f"wf-{i}", i * 100.0, 10.0 + i, "completed" if i != 1 else "failed", 2.0)
        for i in range(3)
    ]
    text = to_text(render_history(history(dirs)), width=140)
    assert "Recent runs of nightly" in text
    first = text.index("wf-2")
    assert first < text.index("wf-1") < text.index("wf-0")  # newest first
    assert "67%" in text  # t: 2 of 3 runs completed


def test_ready_at_zero_means_unknown_and_cancelled_while_queued_has_no_delay(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-z", "z")
    wf.attempt(
        "a",
        start=1.0,
        end=3.0,
        children=scenarios.std_children(1.0, 2.5, 3.0),
        extra={"tuiflow.task.ready_at": 0.0},
    )
    wf.attempt("b", start=9.0, end=9.0, ready_at=4.0, depends_on=["a"], outcome="cancelled", coordinator=True)
    trace = load_trace(wf.dir)
    assert trace.tasks["a"].latest.ready_at is None
    q = _queuing(trace)
    assert (q["a"].queuing_delay_seconds, q["a"].reason) == (None, "root task without ready_at")
    assert (q["b"].queuing_delay_seconds, q["b"].queue_wait_seconds) == (None, None)
    assert q["b"].reason == "latest attempt cancelled before it started"


def test_compute_time_is_merged_not_summed_so_a_span_inside_execute_counts_once(tmp_path):
    """A user's compute span inside `execute` (1.5-2.5 inside 1-3) adds nothing to the
    attempt's compute time: 2 s, not 3; the worker's and the workflow's compute agree."""
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-m", "m")
    wf.attempt(
        "t",
        start=0.5,
        end=3.5,
        children=[Child("execute", 1.0, 3.0, children=[Child("tokenize", 1.5, 2.5, kind="compute")])],
    )
    trace = load_trace(wf.dir)
    assert trace.tasks["t"].latest.compute_seconds == pytest.approx(2.0)
    e2e = e2e_breakdown(trace)
    assert e2e.workers["w1"].compute_seconds == pytest.approx(2.0)
    assert e2e.compute_total_seconds == pytest.approx(2.0)
    assert e2e.compute["tokenize"].total_seconds == pytest.approx(1.0)  # each name keeps its own time
