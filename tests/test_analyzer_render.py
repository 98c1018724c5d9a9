"""Renderers: rich views, JSON, Mermaid, Perfetto, and the dashboard's timeline rows."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from analyzer import fmt
from analyzer.errors import UnknownViewError
from analyzer.perfetto import perfetto_trace
from analyzer.report import analyze, build_report
from analyzer.synthetic import DEFAULT_EPOCH, Child, SyntheticWorkflow
from analyzer.timeline import timeline_rows
from analyzer.trace import load_trace
from analyzer.views import VIEWS, render, to_text

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


@pytest.fixture
def analysis(tmp_path):
    return analyze(load_trace(scenarios.diamond(tmp_path / "wf").dir))


def _threads(doc: dict) -> dict[int, str]:
    return {
        e["tid"]: e["args"]["name"]
        for e in doc["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def _assert_nested(doc: dict) -> None:
    """Complete events on one thread must nest: the importer drops the ones that don't."""
    by_tid: dict[int, list[dict]] = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            by_tid.setdefault(e["tid"], []).append(e)
    for tid, events in by_tid.items():
        stack: list[float] = []
        for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
            start, end = e["ts"], e["ts"] + e["dur"]
            while stack and (stack[-1] < start or (stack[-1] == start and e["dur"] > 0)):
                stack.pop()
            assert not stack or end <= stack[-1], f"tid {tid}: {e['name']} overlaps its enclosing slice"
            stack.append(end)


# --- perfetto ----------------------------------------------------------------------------------


def test_perfetto_tracks_phases_and_nesting(analysis):
    text = render(analysis, "perfetto")
    doc = json.loads(text)  # valid JSON
    assert doc["displayTimeUnit"] == "ms"
    assert doc["otherData"]["t0_epoch_seconds"] == T0
    threads = _threads(doc)
    assert sorted(threads.values()) == ["coordinator", "w1", "w2", "w3"]
    (process,) = [e for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"]
    assert process["args"]["name"] == "diamond (wf-diamond)"
    tid = {name: t for t, name in threads.items()}
    x = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    prep = next(e for e in x if e["name"] == "prep #0")
    assert (prep["tid"], prep["ts"], prep["dur"]) == (tid["w1"], 0.0, 5_000_000.0)
    assert "critical" in prep["cat"] and prep["args"]["critical"] is True
    queued = [e for e in x if e["name"] == "queued" and e["tid"] == tid["w1"]]
    assert [(e["ts"], e["dur"]) for e in queued] == [(0.0, 1_000_000.0), (11_600_000.0, 900_000.0)]
    running = [e for e in x if e["name"] == "running" and e["tid"] == tid["w2"]]
    assert [(e["ts"], e["dur"]) for e in running] == [(5_000_000.0, 7_000_000.0)]
    write = next(e for e in x if e["name"] == "write outputs" and e["tid"] == tid["w2"])
    assert (write["ts"], write["dur"], write["cat"], write["args"]["bytes"]) == (
        11_000_000.0,
        500_000.0,
        "network",
        10,
    )
    train_b = next(e for e in x if e["name"] == "train/b #0")
    assert "critical" not in train_b["cat"]
    wf = next(e for e in x if e["name"] == "workflow")
    assert (wf["tid"], wf["dur"]) == (0, 30_000_000.0)
    _assert_nested(doc)


def test_perfetto_concurrent_attempts_get_lanes_and_misnested_spans_go_async(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-p", "p")
    wf.attempt(
        "a",
        start=1.0,
        end=5.0,
        ready_at=0.5,
        worker="gpu0",
        children=[Child("execute", 1.0, 3.0), Child("upload", 2.0, 4.0, kind="network")],
    )
    wf.attempt("b", start=2.0, end=6.0, ready_at=1.0, worker="gpu0", children=[Child("execute", 2.0, 5.0)])
    wf.attempt("c", start=6.5, end=7.0, ready_at=5.5, worker="gpu0")
    doc = perfetto_trace(load_trace(wf.dir))
    threads = _threads(doc)
    assert sorted(threads.values()) == ["coordinator", "gpu0", "gpu0 (2)"]
    x = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    lanes = {e["name"]: threads[e["tid"]] for e in x if "#" in e["name"]}
    assert lanes == {"a #0": "gpu0", "b #0": "gpu0 (2)", "c #0": "gpu0"}
    # "upload" overlaps its sibling "execute" without nesting: drawn as an async slice
    assert [e["name"] for e in doc["traceEvents"] if e["ph"] in ("b", "e")] == ["upload", "upload"]
    _assert_nested(doc)


# --- mermaid --------------------------------------------------------------------------------------


def test_mermaid_highlights_the_critical_path(analysis):
    text = render(analysis, "mermaid")
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert lines[1] == "  %% critical path: prep -> train/a -> eval (16.0 s)"
    # ids follow the trace's task order: eval t0, prep t1, train/a t2, train/b t3
    assert '  t2["train/a<br/>7.00 s"]' in lines
    assert "  t2 --> t0" in lines and "  t1 --> t3" in lines
    assert "  class t1,t2,t0 critical" in lines
    # edges in order: train/a->eval (0), train/b->eval (1), prep->train/a (2), prep->train/b (3)
    assert "  linkStyle 0,2 stroke:#d62728,stroke-width:3px" in lines


def test_mermaid_escapes_names_and_draws_missing_and_failed(tmp_path):
    trace = load_trace(scenarios.missing_parents(tmp_path / "wf").dir)
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-missing", "missing", first_id=500)
    wf.attempt('say "hi" <now>', start=1.0, end=2.0)
    text = render(analyze(load_trace(wf.dir)), "mermaid")
    assert '"say #quot;hi#quot; #lt;now#gt;<br/>1.00 s"' in text
    assert '["ghost<br/>no spans"]' in text
    assert "class" in text and " missing" in text
    assert any(line.startswith("  class ") and line.endswith(" failed") for line in text.splitlines())
    assert trace.tasks["broken"].latest.outcome == "failed"


# --- rich and json views ------------------------------------------------------------------------------


def test_every_view_renders(analysis):
    for view in VIEWS:
        out = to_text(render(analysis, view), width=140)
        assert out.strip(), view
    with pytest.raises(UnknownViewError) as err:
        render(analysis, "pie-chart")
    assert "critical-path" in str(err.value)


def test_rich_report_contents(analysis):
    text = to_text(render(analysis, "rich"), width=160)
    for expected in (
        "diamond",
        "wf-diamond",
        "Critical path",
        "train/a",
        "Queuing delay",
        "Compute time",
        "Network time",
        "Lineage",
        "d-eval",
        "(external)",
        "★",
    ):
        assert expected in text, expected
    assert "16.0 s" in text  # critical path total
    queuing = to_text(render(analysis, "queuing"), width=160)
    eval_line = next(line for line in queuing.splitlines() if " eval " in line)
    assert "★" in eval_line and "train/a" in eval_line
    b_line = next(line for line in queuing.splitlines() if " train/b " in line)
    assert "★" not in b_line


def test_json_view_is_the_report(analysis):
    assert json.loads(render(analysis, "json", now=5.0)) == build_report(analysis, now=5.0)


def test_user_text_is_not_markup(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-m", "m")
    wf.attempt("[bold red]x[/]", start=1.0, end=2.0, ready_at=0.5)
    text = to_text(render(analyze(load_trace(wf.dir)), "critical-path"))
    assert "[bold red]x[/]" in text


def test_queuing_view_limits_rows(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-l", "l")
    for i in range(12):
        wf.attempt(f"t{i}", start=i + 1.0, end=i + 1.5, ready_at=float(i))
    text = to_text(render(analyze(load_trace(wf.dir)), "queuing", limit=5), width=140)
    assert "… 7 more task(s)" in text


# --- timeline ---------------------------------------------------------------------------------------


def test_timeline_rows(analysis):
    rows = timeline_rows(analysis.trace, critical=analysis.critical_tasks)
    assert [(r.task, r.worker, r.queued_start, r.start, r.end, r.outcome, r.critical) for r in rows] == [
        ("prep", "w1", T0, T0 + 1.0, T0 + 5.0, "completed", True),
        ("train/a", "w2", T0 + 4.6, T0 + 5.0, T0 + 12.0, "completed", True),
        ("train/b", "w3", T0 + 4.6, T0 + 6.0, T0 + 10.0, "completed", False),
        ("eval", "w1", T0 + 11.6, T0 + 12.5, T0 + 15.0, "completed", True),
    ]


def test_timeline_rows_of_retries_and_skew(tmp_path):
    rows = timeline_rows(load_trace(scenarios.retried(tmp_path / "r").dir), critical={"r", "c"})
    assert [(r.task, r.attempt, r.outcome, r.latest, r.critical) for r in rows] == [
        ("r", 0, "failed", False, False),
        ("r", 1, "completed", True, True),
        ("c", 0, "completed", True, True),
    ]
    skew = timeline_rows(load_trace(scenarios.skewed(tmp_path / "s").dir))
    assert {r.task: r.queued_start for r in skew}["c"] is None  # ready_at after start: no queued segment


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0 s"),
        (4e-4, "400 µs"),
        (0.85, "850 ms"),
        (1.25, "1.25 s"),
        (12.34, "12.3 s"),
        (245, "4m 05s"),
        (7380, "2h 03m"),
        (-0.5, "-500 ms"),
    ],
)
def test_fmt_seconds(seconds, text):
    assert fmt.fmt_seconds(seconds) == text


def test_fmt_rates_sizes_and_instants():
    assert [fmt.fmt_rate(r) for r in (None, 0.25, 12.34, 2492.2)] == [
        "-",
        "0.25 tasks/s",
        "12.3 tasks/s",
        "2,492 tasks/s",
    ]
    assert fmt.fmt_rate(12.34, unit="") == "12.3/s"
    assert [fmt.fmt_bytes(n) for n in (None, 512, 1536, 3 * 1024**3)] == ["-", "512 B", "1.5 KiB", "3.0 GiB"]
    assert fmt.fmt_instant(1_795_400_000.25) == "2026-11-23 02:13:20.250Z"
    assert fmt.fmt_instant(1_795_400_000.25, date=False) == "02:13:20.250Z"
    assert fmt.fmt_instant(None) == fmt.MISSING


def test_rate_and_eta():
    assert fmt.rate_and_eta(0, 10, 100.0, 0, 110.0) == (None, None)  # nothing done yet
    assert fmt.rate_and_eta(5, 10, 0, 0, 110.0) == (None, None)  # not started
    assert fmt.rate_and_eta(5, 10, 100.0, 0, 110.0) == (0.5, 10.0)
    assert fmt.rate_and_eta(10, 10, 100.0, 120.0, 500.0) == (0.5, None)  # ended: the rate to its end


def test_mermaid_a_failed_or_skipped_task_keeps_its_style_on_the_critical_path(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-f", "f")
    wf.attempt("a", start=0.0, end=1.0)
    wf.attempt("b", start=1.0, end=5.0, depends_on=["a"], outcome="failed")
    wf.attempt("c", start=1.0, end=2.0, depends_on=["a"])
    text = render(analyze(load_trace(wf.dir)), "mermaid")
    ids = {
        label.split('["')[1].split("<br/>")[0]: label.split("[")[0].strip()
        for label in text.splitlines()
        if '["' in label
    }
    classes = {
        line.split()[2]: line.split()[1].split(",")
        for line in text.splitlines()
        if line.startswith("  class ")
    }
    assert ids["b"] in classes["failed_critical"]  # on the path, and still drawn as failed
    assert ids["a"] in classes["critical"] and ids["b"] not in classes["critical"]
    assert ids["c"] not in [i for ids_ in classes.values() for i in ids_]
