"""Reading span files: the OTel format, tolerance to bad lines, indexing into attempts,
and the parallel reader giving exactly the sequential answer."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from analyzer import parallel
from analyzer.contract import ATTR_TASK, trace_id_for
from analyzer.otel import OtelSpan
from analyzer.reader import ReadStats, SpanReader, attempt_dirs, parse_span_line, span_files
from analyzer.records import SpanRecord
from analyzer.report import analyze, build_report
from analyzer.synthetic import DEFAULT_EPOCH, Child, SyntheticWorkflow, otel_line
from analyzer.trace import build_trace, load_trace, trace_from_files, trace_from_lines

FIXTURES = Path(__file__).parent / "fixtures" / "analyzer"
SDK_SAMPLE = FIXTURES / "otel_sdk_attempt.jsonl"


def _load(name: str):
    mod_name = f"_analyzer_fixture_{name}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, FIXTURES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    return sys.modules[mod_name]


scenarios = _load("scenarios")


def _signature(trace) -> dict:
    """Everything an analysis depends on, comparable across reads."""
    report = build_report(analyze(trace))
    for counter in ("read", "spans_read", "lines_skipped"):
        report.pop(counter)
    return report


# --- the wire format ---------------------------------------------------------------------------


def test_sdk_written_file_parses_with_known_values():
    trace = trace_from_files([SDK_SAMPLE])
    assert trace.stats.spans_read == 4
    assert trace.stats.lines_skipped == 0
    assert trace.trace_id == f"0x{trace_id_for('wf-sdk'):032x}"
    (info,) = trace.tasks.values()
    att = info.latest
    assert att.task == 'gen/"quoted" ünï'
    assert att.attempt == 2
    assert att.depends_on == ("prep/featurize", "a")
    assert att.ready_at == 1_800_000_000.25
    assert att.start == DEFAULT_EPOCH + 1.0
    assert att.duration == pytest.approx(2.5)
    assert (att.worker, att.host, att.queue, att.executor, att.model) == (
        "w-1",
        "gpu-node-1",
        "gpu",
        "diffusers",
        "sd-turbo",
    )
    assert (att.outcome, att.error, att.exit_code, att.gpus) == ("failed", "boom", 3, (0, 1))
    assert (att.batch_id, att.data_id) == ("batch-7", "d-42")
    # the nested "denoise step" (grandchild of the root) belongs to the attempt too
    names = sorted(c.name for c in att.children)
    assert names == ["denoise step", "execute", "read upstream outputs"]
    step = next(c for c in att.children if c.name == "denoise step")
    assert step.attrs == {"tuiflow.kind": "compute", "step": 3, "ratio": 0.5, "ok": True}
    execute = next(c for c in att.children if c.name == "execute")
    assert (execute.status, execute.description, execute.attrs) == (
        "ERROR",
        "CUDA error: out of memory",
        None,
    )
    read = next(c for c in att.children if c.name == "read upstream outputs")
    assert (read.kind, read.nbytes, read.duration) == ("network", 4096, 0.25)
    assert att.compute_seconds == pytest.approx(1.75)  # the denoise step lies inside execute: once
    assert att.network_seconds == pytest.approx(0.25)


def test_fast_reader_agrees_with_the_full_pydantic_model():
    for line in SDK_SAMPLE.read_text().splitlines():
        full = OtelSpan.model_validate_json(line)
        rec = parse_span_line(line)
        assert rec.name == full.name
        assert rec.span_id == int(full.context.span_id, 16)
        assert rec.parent_id == (int(full.parent_id, 16) if full.parent_id else None)
        assert rec.start == full.start_seconds
        assert rec.end == full.end_seconds
        assert rec.status == full.status.status_code
        assert rec.description == full.status.description
        assert rec.kind == full.attributes.get("tuiflow.kind")
        assert rec.nbytes == full.attributes.get("tuiflow.bytes")


def test_synthetic_lines_have_the_sdk_layout():
    sdk = json.loads(SDK_SAMPLE.read_text().splitlines()[0])
    ours = json.loads(
        otel_line(
            "read upstream outputs",
            trace_id=trace_id_for("wf-sdk"),
            span_id=0x102,
            parent_id=0x101,
            start=DEFAULT_EPOCH + 1.0,
            end=DEFAULT_EPOCH + 1.25,
            attributes={"tuiflow.kind": "network", "tuiflow.bytes": 4096},
        )
    )
    assert list(ours) == list(sdk)
    assert list(ours["context"]) == list(sdk["context"])
    for key in ("name", "context", "kind", "parent_id", "start_time", "end_time", "status", "attributes"):
        assert ours[key] == sdk[key], key


def test_live_sdk_output_matches_synthetic_format():
    trace_api = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    lines: list[str] = []

    class Keep(SpanExporter):
        def export(self, spans):
            lines.extend(s.to_json(indent=None) for s in spans)
            return SpanExportResult.SUCCESS

    provider = trace_api.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    span = provider.get_tracer("t").start_span("execute", start_time=1_800_000_000_000_000_000)
    span.set_attribute("tuiflow.kind", "compute")
    span.end(end_time=1_800_000_001_500_000_000)
    rec = parse_span_line(lines[0])
    assert (rec.name, rec.kind, rec.duration, rec.parent_id) == ("execute", "compute", 1.5, None)
    assert "\n" not in lines[0]


# --- tolerance ----------------------------------------------------------------------------------


def test_garbage_and_truncated_lines_are_counted_and_skipped(tmp_path):
    wf = scenarios.diamond(tmp_path / "wf")
    spans = wf.spans_path("eval", 0)
    good = spans.read_text()
    truncated = good.splitlines()[0][: len(good.splitlines()[0]) // 2]
    spans.write_text(
        "not json at all\n"
        + good
        + "\n   \n"  # blank lines are not counted
        + '{"name": 12, "context": {}}\n'  # JSON, not a span
        + json.dumps(
            {
                "name": "x",
                "context": {"trace_id": "0x1", "span_id": "zz"},
                "parent_id": None,
                "start_time": "2027-01-15T08:00:00Z",
                "end_time": "2027-01-15T08:00:01Z",
            }
        )
        + "\n"
        + '{"name": "x", "context": {"trace_id": "0x1", "span_id": "0x5"}, '
        + '"start_time": "yesterday", "end_time": "x"}\n'
        + truncated  # the last line, still being written
    )
    trace = load_trace(wf.dir)
    assert trace.stats.lines_skipped == 5
    assert trace.stats.spans_read == 22  # every good span of the diamond
    examples = "\n".join(trace.stats.examples)
    assert "spans.jsonl:1:" in examples
    # nothing of the good data was lost
    assert _signature(trace) == _signature(load_trace(scenarios.diamond(tmp_path / "ref").dir))


def test_counts_of_the_diamond_are_exact(tmp_path):
    trace = load_trace(scenarios.diamond(tmp_path / "wf").dir)
    # 1 workflow span + 4 roots + 5 + 4 + 4 + 4 children
    assert trace.stats.spans_read == 22
    assert trace.stats.files_read == 5  # 4 attempt files + the coordinator's
    assert trace.stats.lines_skipped == 0
    assert len(trace.spans) == 22
    assert trace.workflow_id == "wf-diamond"
    assert trace.workflow_name == "diamond"
    assert list(trace.tasks) == ["eval", "prep", "train/a", "train/b"]


def test_children_before_parents_and_shuffled_lines_give_the_same_analysis(tmp_path):
    ordered = load_trace(scenarios.diamond(tmp_path / "a").dir)
    reversed_files = load_trace(scenarios.diamond(tmp_path / "b", children_first=True).dir)
    assert _signature(reversed_files) == _signature(ordered)
    lines = [
        line
        for f in span_files(tmp_path / "a")
        if Path(f).exists()
        for line in Path(f).read_text().splitlines()
    ]
    random.Random(3).shuffle(lines)
    shuffled = trace_from_lines(lines)
    assert _signature(shuffled) == _signature(ordered) | {"lineage": _signature(shuffled)["lineage"]}


def test_duplicate_lines_count_once(tmp_path):
    wf = scenarios.diamond(tmp_path / "wf")
    path = wf.spans_path("train/a", 0)
    path.write_text(path.read_text() * 2)  # an exporter that re-sent everything
    trace = load_trace(wf.dir)
    assert trace.duplicate_spans == 5
    assert trace.stats.spans_read == 27
    assert len(trace.spans) == 22
    assert _signature(trace) == _signature(load_trace(scenarios.diamond(tmp_path / "ref").dir))


def test_missing_and_unreadable_files(tmp_path):
    wf = scenarios.diamond(tmp_path / "wf")
    (wf.dir / "tasks" / "new-task" / "0").mkdir(parents=True)  # attempt dir, no logs yet
    (wf.dir / "tasks" / ".tmp-1234").mkdir()  # a producer's temporary: ignored
    trace = load_trace(wf.dir)
    assert trace.stats.files_unreadable == 0
    assert len(attempt_dirs(wf.dir)) == 5
    reader = SpanReader()
    assert list(reader.iter_files([tmp_path / "nope.jsonl", tmp_path])) == []
    assert reader.stats.files_unreadable == 1  # a directory cannot be read as a file


def test_unknown_directory_raises(tmp_path):
    from analyzer.errors import AnalyzerError, TraceNotFoundError

    with pytest.raises(TraceNotFoundError) as err:
        load_trace(tmp_path / "missing")
    assert isinstance(err.value, AnalyzerError)
    assert "missing" in str(err.value)


def test_empty_workflow_directory_is_an_empty_analysis(tmp_path):
    (tmp_path / "wf").mkdir()
    report = build_report(analyze(load_trace(tmp_path / "wf")))
    assert report["wall_seconds"] == 0.0
    assert report["critical_path"] == []
    assert report["queuing"] == []
    assert report["spans_read"] == 0


def test_roots_only_reader_skips_children_unparsed(tmp_path):
    wf = scenarios.diamond(tmp_path / "wf")
    reader = SpanReader(roots_only=True)
    records = list(reader.iter_workflow(wf.dir))
    assert sorted(r.name for r in records) == ["task"] * 4 + ["workflow"]
    assert reader.stats.lines_filtered == 17
    assert reader.stats.spans_read == 5


def test_attributes_dropped_only_where_nothing_is_lost():
    line = otel_line(
        "execute",
        trace_id=1,
        span_id=2,
        parent_id=1,
        start=0.0,
        end=1.0,
        attributes={"tuiflow.kind": "compute"},
    )
    assert parse_span_line(line).attrs is None
    line = otel_line(
        "execute",
        trace_id=1,
        span_id=2,
        parent_id=1,
        start=0.0,
        end=1.0,
        attributes={"tuiflow.kind": "compute", "gpu.mem": 3},
    )
    assert parse_span_line(line).attrs == {"tuiflow.kind": "compute", "gpu.mem": 3}
    root = otel_line(
        "task", trace_id=1, span_id=2, parent_id=None, start=0.0, end=1.0, attributes={ATTR_TASK: "t"}
    )
    assert parse_span_line(root).attrs == {ATTR_TASK: "t"}


def test_time_without_zone_is_utc():
    line = otel_line("x", trace_id=1, span_id=2, parent_id=None, start=0.0, end=1.0).replace('Z"', '"')
    assert parse_span_line(line).start == 0.0


# --- indexing -------------------------------------------------------------------------------------


def test_orphans_and_parent_id_cycles_do_not_hang_or_attach(tmp_path):
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-o", "o")
    wf.attempt("t", start=0.0, end=2.0, children=[Child("execute", 0.0, 1.0)])
    lines = [
        # a child whose parent was never written (the worker died before its root span)
        wf.line("execute", 5.0, 6.0, span_id=900, parent_id=901, attributes={"tuiflow.kind": "compute"}),
        wf.line("nested", 5.0, 5.5, span_id=902, parent_id=900, attributes={"tuiflow.kind": "compute"}),
        # three spans whose parent ids go round in a circle
        wf.line("a", 1.0, 2.0, span_id=910, parent_id=912, attributes={"tuiflow.kind": "compute"}),
        wf.line("b", 1.0, 2.0, span_id=911, parent_id=910, attributes={"tuiflow.kind": "compute"}),
        wf.line("c", 1.0, 2.0, span_id=912, parent_id=911, attributes={"tuiflow.kind": "compute"}),
    ]
    wf.write(wf.spans_path("t", 0), lines)
    trace = load_trace(wf.dir)
    assert sorted(r.span_id for r in trace.orphans) == [900, 902]
    assert [c.name for c in trace.tasks["t"].latest.children] == ["execute"]
    # every span still counts in the e2e totals
    report = build_report(analyze(trace))
    assert report["compute"]["execute"]["count"] == 2
    assert report["read"]["orphan_spans"] == 2
    assert any("parent is missing" in w for w in report["warnings"])


def test_lost_attempt_deduped_in_favour_of_the_completed_one(tmp_path):
    trace = load_trace(scenarios.lost_and_found(tmp_path / "wf").dir)
    assert trace.duplicate_roots == 1
    L = trace.tasks["L"]
    assert len(L.attempts) == 1
    assert (L.latest.outcome, L.latest.start, L.latest.duplicates) == ("completed", DEFAULT_EPOCH + 10.0, 1)
    assert len(L.latest.children) == 3
    M = trace.tasks["M"]
    assert [(a.attempt, a.outcome) for a in M.attempts] == [(0, "lost"), (1, "completed")]
    assert any("duplicate task root" in w for w in trace.warnings)


def test_build_trace_accepts_records_in_any_order():
    recs = [
        SpanRecord("execute", 3, 2, 1.0, 2.0, kind="compute"),
        SpanRecord("write outputs", 4, 2, 2.0, 2.5, kind="network"),
        SpanRecord("task", 2, 1, 0.5, 3.0, attrs={ATTR_TASK: "t"}),
        SpanRecord("workflow", 1, None, 0.0, 4.0, attrs={}),
    ]
    trace = build_trace(recs)
    att = trace.tasks["t"].latest
    assert att.ready_end == 2.5
    assert trace.workflow is not None and trace.workflow.span_id == 1


# --- parallel reading ---------------------------------------------------------------------------


def _many_attempts(root: Path, n: int = 40) -> SyntheticWorkflow:
    wf = SyntheticWorkflow(root, "wf-many", "many")
    wf.workflow(0.0, n + 10.0)
    for i in range(n):
        deps = [f"t{i - 1}"] if i else []
        wf.attempt(
            f"t{i}",
            start=i + 1.0,
            end=i + 1.9,
            ready_at=i + 0.95,
            depends_on=deps,
            worker=f"w{i % 3}",
            children=[
                Child("execute", i + 1.0, i + 1.5, attributes={"step": i % 2}),
                Child("write outputs", i + 1.5, i + 1.6, nbytes=i),
            ],
        )
    wf.write(wf.spans_path("t7", 0), ["garbage"])
    return wf


def test_parallel_read_equals_sequential(tmp_path):
    wf = _many_attempts(tmp_path / "wf")
    seq = load_trace(wf.dir, jobs=1)
    par = load_trace(wf.dir, jobs=3)
    assert [
        (r.name, r.span_id, r.parent_id, r.start, r.end, r.status, r.kind, r.nbytes, r.attrs, r.description)
        for r in par.spans
    ] == [
        (r.name, r.span_id, r.parent_id, r.start, r.end, r.status, r.kind, r.nbytes, r.attrs, r.description)
        for r in seq.spans
    ]
    assert _signature(par) == _signature(seq)
    assert par.stats.lines_skipped == 1
    assert par.stats.files_read == seq.stats.files_read
    assert (par.stats.helper_chunks, par.stats.helper_failures) == (2, 0)


def test_parallel_read_survives_a_helper_that_fails(tmp_path, monkeypatch):
    wf = _many_attempts(tmp_path / "wf")
    monkeypatch.setattr(parallel.sys, "executable", "/bin/false")  # the helper exits 1 at once
    par = load_trace(wf.dir, jobs=2)
    assert (par.stats.helper_chunks, par.stats.helper_failures) == (0, 1)
    assert _signature(par) == _signature(load_trace(wf.dir, jobs=1))


def test_parallel_read_finishes_what_a_helper_left_half_done(tmp_path, monkeypatch):
    """A helper whose answer stops mid-stream (killed, disk full...): the frames it did
    send are used, the files it did not answer are parsed here, nothing twice."""
    wf = _many_attempts(tmp_path / "wf", n=60)
    cut = tmp_path / "python-cut"
    # the real helper, its answer cut after 3,000 bytes: a few whole frames, then half of one
    cut.write_text(f'#!/bin/sh\n"{sys.executable}" "$@" | head -c 3000\n')
    cut.chmod(0o755)
    monkeypatch.setattr(parallel.sys, "executable", str(cut))
    par = load_trace(wf.dir, jobs=2)
    seq = load_trace(wf.dir, jobs=1)
    assert (par.stats.helper_chunks, par.stats.helper_failures) == (0, 1)
    assert [(r.name, r.span_id) for r in par.spans] == [(r.name, r.span_id) for r in seq.spans]
    assert _signature(par) == _signature(seq)
    assert (par.stats.spans_read, par.stats.files_read) == (seq.stats.spans_read, seq.stats.files_read)


def test_blob_round_trip_and_rejection():
    recs = [
        SpanRecord("a", 1, None, 1.5, 2.5, "OK", None, None, {"k": [1, 2]}, None),
        SpanRecord("b", 2, 1, 1.75, 2.0, "ERROR", "network", 7, None, "boom"),
        SpanRecord("b", 3, 1, 1.0, 1.0, "UNSET", "compute", None, {"s": 1}, None),
        SpanRecord("b", 4, 1, 1.0, 1.0, "UNSET", "compute", 0, {"s": 1}, None),
    ]
    stats = ReadStats(spans_read=4, lines_skipped=2, trace_ids={"0x1": 4}, examples=["f:1: bad"])
    out = ReadStats()
    assert parallel.decode(parallel.encode(iter(recs), stats), out) == recs
    assert (out.spans_read, out.lines_skipped, out.trace_ids, out.examples) == (
        4,
        2,
        {"0x1": 4},
        ["f:1: bad"],
    )
    with pytest.raises(ValueError):
        parallel.decode(b"garbage", ReadStats())


def test_default_jobs_is_one_for_small_workflows(tmp_path):
    wf = scenarios.diamond(tmp_path / "wf")
    assert parallel.default_jobs(span_files(wf.dir)) == 1


# --- the block reader agrees with the line-by-line reader -------------------------------------------


def _fields(records) -> list[tuple]:
    return [
        (r.name, r.span_id, r.parent_id, r.start, r.end, r.status, r.kind, r.nbytes, r.attrs, r.description)
        for r in records
    ]


@pytest.mark.parametrize("block_bytes", [64, 1000, 1 << 20])
def test_block_reader_equals_line_reader_on_messy_files(tmp_path, monkeypatch, block_bytes):
    import analyzer.reader as reader_mod

    monkeypatch.setattr(reader_mod, "BLOCK_BYTES", block_bytes)
    wf = SyntheticWorkflow(tmp_path / "wf", "wf-messy", "messy")
    good = [
        wf.line("execute", i, i + 0.5, parent_id=7, attributes={"tuiflow.kind": "compute", "i": i})
        for i in range(30)
    ]
    bad = [
        "garbage",
        "",
        "   ",
        '{"name": 1}',
        "[1, 2]",
        good[0][:40],
        good[1].replace("0x", "0y", 2),
        '{"a": 1},{"b": 2}',
        good[2] + "," + good[3],
    ]
    rng = random.Random(11)
    for trial in range(12):
        lines = good[:] + rng.sample(bad, k=rng.randint(0, len(bad)))
        rng.shuffle(lines)
        newline = "\r\n" if trial % 3 == 0 else "\n"
        text = newline.join(lines) + (newline if trial % 2 else "")
        path = tmp_path / f"f{trial}.jsonl"
        path.write_bytes(text.encode())
        by_block = SpanReader()
        by_line = SpanReader()
        got = list(by_block.iter_files([path]))
        want = list(by_line.iter_lines(path.read_bytes().split(b"\n"), str(path)))
        assert _fields(got) == _fields(want)
        for counter in ("spans_read", "lines_skipped", "trace_ids"):
            assert getattr(by_block.stats, counter) == getattr(by_line.stats, counter), counter


def test_blocks_split_inside_long_lines(tmp_path, monkeypatch):
    import analyzer.reader as reader_mod

    monkeypatch.setattr(reader_mod, "BLOCK_BYTES", 100)  # every line is longer than a block
    seq = load_trace(scenarios.diamond(tmp_path / "a").dir)
    assert seq.stats.spans_read == 22 and seq.stats.lines_skipped == 0
