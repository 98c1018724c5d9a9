"""Producer-side tracing: span files per attempt, one trace per workflow, nothing missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status, StatusCode

from analyzer import contract as c
from spool import Home, Settings
from tuiflow.cli.exits import EXIT_NOT_FOUND
from workers.tracing import span_json, workflow_span_id

ROOT = Path(__file__).resolve().parent.parent
FAST = Settings(heartbeat_interval=0.2, dead_after=1.5, lease_ttl=2.0, poll_interval=0.05)


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans):
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def test_span_json_is_exactly_the_sdks_to_json():
    keep = _Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(
        "root", attributes={"a": 1, "l": ["x", "y"], "f": 0.5, "b": True}
    ) as root:
        root.add_event("checkpoint", {"step": 3})
        with tracer.start_as_current_span(
            "child", links=[Link(root.get_span_context(), {"why": "batch"})]
        ) as ch:
            ch.set_status(Status(StatusCode.ERROR, 'it failed: "quoted" \\ and\nnewline'))
        tracer.start_span("no-attrs").end()
    assert len(keep.spans) == 3
    for span in keep.spans:
        assert span_json(span) == span.to_json(indent=None)


def test_iso_time_is_exactly_the_sdks_ns_to_iso_str():
    import random

    from opentelemetry.sdk.util import ns_to_iso_str

    from workers.tracing import iso_time

    rng = random.Random(7)
    now = 1_795_000_000_000_000_000
    values = [rng.randrange(1, 4_000_000_000_000_000_000) for _ in range(20_000)]
    values += [now + rng.randrange(0, 10**12) for _ in range(20_000)]
    # around the microsecond and second boundaries, where rounding carries
    values += [now + k * 1_000_000_000 + d for k in range(50) for d in (-501, -500, -499, 0, 499, 500, 501)]
    values += [now + 999_999_500 + d for d in range(-3, 4)]
    for v in values:
        assert iso_time(v) == ns_to_iso_str(v), v


def test_an_attempts_span_lines_are_exactly_its_spans_to_json(tmp_path):
    from opentelemetry.trace import SpanContext

    from workers.tracing import Telemetry

    telemetry = Telemetry(str(tmp_path), "tuiflow-worker/test")
    path = tmp_path / "spans.jsonl"
    parent = SpanContext(0xABC, 0xDEF, is_remote=True)
    attempt = telemetry.attempt(
        str(path), parent, {"tuiflow.task": 'w"[1]', "l": ["a"], "n": 2}, 1_795_000_000.25
    )
    attempt.phase(c.EXECUTE_SPAN, 1_795_000_000.5, 1_795_000_001.0)
    attempt.phase("mine", 1_795_000_001.0, 1_795_000_000.0, kind="network", size=3)  # ends before it starts
    attempt.set_attribute("tuiflow.outcome", "failed")
    attempt.set_error('it failed: "quoted" \\ and\nnewline')
    attempt.end(1_795_000_002.0)
    lines = path.read_text().splitlines()
    spans = attempt.readable_spans(1_795_000_002.0)
    assert [json.loads(line)["name"] for line in lines] == [c.EXECUTE_SPAN, "mine", c.TASK_SPAN]
    assert lines == [span.to_json(indent=None) for span in spans]
    root = json.loads(lines[-1])
    assert root["parent_id"] == "0x0000000000000def" and root["status"]["status_code"] == "ERROR"
    assert attempt.traceparent == f"00-{0xABC:032x}-{attempt.span_id:016x}-01"


def trace_lines(home: Path, wf_id: str) -> list[dict]:
    out = []
    for path in sorted((home / "workflows" / wf_id).rglob("spans.jsonl")):
        out.extend(json.loads(line) | {"_file": str(path)} for line in path.read_text().splitlines())
    return out


def run_local(
    tmp_path: Path, text: str, *extra: str, code: int = 0, env: dict[str, str] | None = None
) -> tuple[Path, dict]:
    wf = tmp_path / "wf.yaml"
    wf.write_text(textwrap.dedent(text))
    home = tmp_path / "home"
    Home.open(home, settings=FAST)
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "run-local", str(wf), "--home", str(home), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
    )
    assert r.returncode == code, r.stderr[-3000:]
    return home, json.loads(r.stdout)


def roots(spans: list[dict]) -> list[dict]:
    return [s for s in spans if s["name"] == c.TASK_SPAN]


def test_diamond_trace_shape(tmp_path):
    home, status = run_local(
        tmp_path,
        """
        name: traced
        tasks:
          - {name: A, run: "sleep 0.5"}
          - {name: B, depends_on: [A], run: "sleep 1.0"}
          - {name: C, depends_on: [A], run: "sleep 0.2"}
          - {name: D, depends_on: [B, C], run: "sleep 0.1"}
        """,
        "--workers",
        "2",
    )
    wf_id = status["id"]
    spans = trace_lines(home, wf_id)
    trace_ids = {s["context"]["trace_id"] for s in spans}
    assert trace_ids == {c.format_trace_id(c.trace_id_for(wf_id))}  # one workflow, one trace
    [workflow] = [s for s in spans if s["name"] == c.WORKFLOW_SPAN]
    assert workflow["context"]["span_id"] == f"0x{workflow_span_id(wf_id):016x}"
    assert workflow["attributes"][c.ATTR_OUTCOME] == "completed"
    tasks = roots(spans)
    assert sorted(s["attributes"][c.ATTR_TASK] for s in tasks) == ["A", "B", "C", "D"]  # one root per attempt
    for s in tasks:
        a = s["attributes"]
        assert s["parent_id"] == workflow["context"]["span_id"]
        assert (
            a[c.ATTR_WORKFLOW_NAME] == "traced" and a[c.ATTR_ATTEMPT] == 0 and a[c.ATTR_EXECUTOR] == "shell"
        )
        assert a[c.ATTR_WORKER] and a[c.ATTR_OUTCOME] == "completed" and a[c.ATTR_READY_AT] > 0
        children = [x for x in spans if x["parent_id"] == s["context"]["span_id"]]
        names = {x["name"] for x in children}
        assert {c.EXECUTE_SPAN, c.READY_SPAN} <= names
        assert all(x["attributes"][c.ATTR_KIND] in ("compute", "network", "marker") for x in children)
    by_task = {s["attributes"][c.ATTR_TASK]: s for s in tasks}
    assert by_task["D"]["attributes"][c.ATTR_DEPENDS_ON] == ["B", "C"]
    assert status["wall_seconds"] >= 1.6

    # the analyzer, through the CLI a user types
    report = json.loads(tuiflow(home, "trace", "analyze", wf_id[:5], "-f", "json"))
    assert report["workflow_id"] == wf_id and report["wall_seconds"] >= 1.6
    assert [n["task"] for n in report["critical_path"]] == ["A", "B", "D"]
    b = next(n for n in report["critical_path"] if n["task"] == "B")
    assert 0.95 <= b["active_seconds"] <= 1.5 and b["wait_seconds"] < 0.5
    queuing = {q["task"]: q for q in report["queuing"]}
    assert queuing["D"]["blocked_by"] == "B" and queuing["B"]["blocked_by"] == "A"
    assert all(q["queuing_delay_seconds"] >= 0 for q in report["queuing"])
    assert report["compute"][c.EXECUTE_SPAN]["count"] == 4
    assert report["network"]["total_active_seconds"] >= 0
    assert report["spans_read"] == len(spans) and report["lines_skipped"] == 0
    fetched = tuiflow(home, "trace", "fetch", "spans", wf_id).splitlines()
    assert sorted(fetched) == sorted(
        line for p in (home / "workflows" / wf_id).rglob("spans.jsonl") for line in p.read_text().splitlines()
    )
    perfetto = json.loads(tuiflow(home, "trace", "analyze", wf_id, "-f", "perfetto"))
    events = perfetto["traceEvents"] if isinstance(perfetto, dict) else perfetto
    assert {e.get("name") for e in events} >= {"A #0", "B #0", "C #0", "D #0"}
    mermaid = tuiflow(home, "trace", "analyze", wf_id, "-f", "mermaid")
    assert mermaid.startswith("flowchart") and "critical path: A -> B -> D" in mermaid
    assert "Critical path" in tuiflow(home, "trace", "analyze", wf_id)


def tuiflow(home: Path, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_failures_before_execution_leave_zero_length_error_spans(tmp_path):
    home, status = run_local(
        tmp_path,
        """
        name: early-failures
        tasks:
          - {name: A, run: "echo '{\\"x\\": 1}' > $TUIFLOW_OUTPUT"}
          - {name: bad-template, depends_on: [A], run: "echo {{ inputs.A.missing }}"}
          - {name: bad-cwd, run: "true", cwd: /definitely/not/here}
        """,
        code=1,
    )
    spans = roots(trace_lines(home, status["id"]))
    by_task = {s["attributes"][c.ATTR_TASK]: s for s in spans}
    for name, reason in (("bad-template", "does not exist"), ("bad-cwd", "does not exist")):
        s = by_task[name]
        assert s["start_time"] == s["end_time"], name
        assert s["status"]["status_code"] == "ERROR" and reason in s["status"]["description"]
        assert s["attributes"][c.ATTR_OUTCOME] == "failed"


def test_cancelled_workflow_closes_every_span(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        textwrap.dedent(
            """
            name: cancel-traced
            tasks:
              - {name: long, run: "sleep 60"}
              - {name: queued, run: "sleep 60", queue: nobody}
              - {name: later, depends_on: [long], run: "true"}
            """
        )
    )
    home = tmp_path / "home"
    h = Home.open(home, settings=FAST)
    import signal
    import time

    from tuiflow.engine.client import Client

    proc = subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "run-local", str(wf), "--home", str(home), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    client = Client(h)
    deadline = time.monotonic() + 60
    while not (client.list() and client.list()[0]["counts"].get("running") == 1):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 1
    wf_id = client.list()[0]["id"]
    spans = trace_lines(home, wf_id)
    by_task = {s["attributes"][c.ATTR_TASK]: s for s in roots(spans)}
    # every task is in the trace: `later` was never queued, and its record says so
    assert sorted(by_task) == ["later", "long", "queued"]
    for s in by_task.values():
        assert s["attributes"][c.ATTR_OUTCOME] == "cancelled" and s["status"]["status_code"] == "ERROR"
    later = by_task.pop("later")
    assert later["start_time"] == later["end_time"]
    assert later["attributes"][c.ATTR_ERROR] == "workflow cancelled before it was queued"
    # The one worker slot took one of the two (usually `long`); the other waited in its queue
    # and is closed with a zero-length span.
    ran = [t for t, s in by_task.items() if s["start_time"] != s["end_time"]]
    assert len(ran) == 1, by_task
    [workflow] = [s for s in spans if s["name"] == c.WORKFLOW_SPAN]
    assert (
        workflow["status"]["status_code"] == "ERROR" and workflow["attributes"][c.ATTR_OUTCOME] == "cancelled"
    )


def test_user_spans_follow_into_threads_and_subprocesses(tmp_path):
    (tmp_path / "usertasks.py").write_text(
        textwrap.dedent(
            """
            import contextvars, subprocess, sys
            from concurrent.futures import ThreadPoolExecutor
            import tuiflow

            def work():
                with tuiflow.span("outer", kind="compute", model="tiny"):
                    ctx = contextvars.copy_context()
                    with ThreadPoolExecutor(2) as pool:
                        pool.submit(ctx.run, lambda: tuiflow.span("in-thread", kind="network").__enter__() and None).result()
                    subprocess.run([sys.executable, "-c", "import tuiflow\\nwith tuiflow.span('in-subprocess'): pass"], check=True)
                return {"ok": True}
            """
        )
    )
    home, status = run_local(tmp_path, "name: user-spans\ntasks:\n  - {name: t, call: 'usertasks:work'}\n")
    spans = trace_lines(home, status["id"])
    by_name = {s["name"]: s for s in spans}
    root = roots(spans)[0]
    execute = next(s for s in spans if s["name"] == c.EXECUTE_SPAN)
    outer = by_name["outer"]
    assert outer["context"]["trace_id"] == root["context"]["trace_id"]
    # the task's own spans are children of its `execute` span (via $TRACEPARENT), which is
    # the attempt's: work inside execute is not counted twice
    assert execute["parent_id"] == root["context"]["span_id"]
    assert outer["parent_id"] == execute["context"]["span_id"]
    assert outer["attributes"][c.ATTR_KIND] == "compute" and outer["attributes"]["model"] == "tiny"
    assert by_name["in-thread"]["parent_id"] == outer["context"]["span_id"]
    assert by_name["in-subprocess"]["parent_id"] == execute["context"]["span_id"]


@pytest.mark.parametrize("worker_mode", ["thread", "process"])
def test_executor_loads_the_sdk_only_for_tasks_that_make_spans(tmp_path, worker_mode):
    """Spawned executors (thread workers: a worker with threads never forks) import the SDK
    only when a task makes spans; forked ones (from a forked worker) have it from the
    worker already. Either way a raw-API span lands under its attempt."""
    (tmp_path / "rawtasks.py").write_text(
        textwrap.dedent(
            """
            import sys

            def quiet():
                return {"sdk": "opentelemetry.sdk.trace" in sys.modules}

            def raw():
                from opentelemetry import trace
                with trace.get_tracer("user.code").start_as_current_span("raw-api", attributes={"n": 1}):
                    pass
                return {"sdk": "opentelemetry.sdk.trace" in sys.modules}
            """
        )
    )
    home, status = run_local(
        tmp_path,
        """
        name: lazy-sdk
        tasks:
          - {name: quiet, call: "rawtasks:quiet"}
          - {name: raw, call: "rawtasks:raw", depends_on: [quiet]}
        """,
        "--workers",
        "1",
        "--worker-mode",
        worker_mode,
    )
    outputs = {t["name"]: t["output"] for t in status["tasks"]}
    if worker_mode == "thread":
        assert outputs == {"quiet": {"sdk": False}, "raw": {"sdk": True}}  # one executor, in turn
    else:
        assert outputs == {"quiet": {"sdk": True}, "raw": {"sdk": True}}
    spans = trace_lines(home, status["id"])
    root = next(s for s in roots(spans) if s["attributes"][c.ATTR_TASK] == "raw")
    [raw] = [s for s in spans if s["name"] == "raw-api"]
    [execute] = [
        s for s in spans if s["name"] == c.EXECUTE_SPAN and s["parent_id"] == root["context"]["span_id"]
    ]
    assert raw["parent_id"] == execute["context"]["span_id"]  # under the attempt's execute, via $TRACEPARENT
    assert raw["context"]["trace_id"] == root["context"]["trace_id"]
    assert raw["_file"] == root["_file"] and raw["attributes"] == {"n": 1}


def test_assets_and_lineage_rows(tmp_path):
    home, status = run_local(
        tmp_path,
        """
        name: lineage
        tasks:
          - {name: a, run: "echo '{\\"v\\": 1}' > $TUIFLOW_OUTPUT"}
          - {name: b, run: "true"}
          - {name: c, depends_on: [a, b], run: "echo '{\\"v\\": 2}' > $TUIFLOW_OUTPUT"}
        """,
    )
    wf = home / "workflows" / status["id"] / "tasks"
    [asset] = [json.loads(x) for x in (wf / "c" / "0" / "logs" / "assets.jsonl").read_text().splitlines()]
    assert asset["bytes"] == len('{"v": 2}\n') and len(asset["sha256"]) == 64 and asset["task"] == "c"
    [row] = [json.loads(x) for x in (wf / "c" / "0" / "logs" / "lineage.jsonl").read_text().splitlines()]
    assert row["data_id"] == f"{status['id']}/c" and row["sources"] == [f"{status['id']}/a"]
    assert not (wf / "b" / "0" / "logs" / "lineage.jsonl").exists()  # no output, no data
    # the CLI's concatenated streams: every attempt's rows, as JSONL
    assets = [json.loads(x) for x in tuiflow(home, "trace", "fetch", "assets", status["id"]).splitlines()]
    assert sorted(a["task"] for a in assets) == ["a", "c"]
    lineage = [json.loads(x) for x in tuiflow(home, "trace", "fetch", "lineage", status["id"]).splitlines()]
    assert {r["data_id"]: r["sources"] for r in lineage}[f"{status['id']}/c"] == [f"{status['id']}/a"]


def test_trace_history_across_runs(tmp_path):
    text = """
        name: twice
        tasks:
          - {name: fast, run: "true"}
          - {name: slow, depends_on: [fast], run: "sleep 0.3"}
        """
    home, first = run_local(tmp_path, text)
    _, second = run_local(tmp_path, text)
    hist = json.loads(tuiflow(home, "trace", "history", "twice", "--json"))
    assert hist["runs"] == 2 and {r["workflow_id"] for r in hist["recent"]} == {first["id"], second["id"]}
    assert all(r["wall_seconds"] >= 0.3 for r in hist["recent"])
    slow = next(t for t in hist["tasks"] if t["task"] == "slow")
    assert slow["runs"] == 2 and slow["success_rate"] == 1.0 and slow["duration_p50_seconds"] >= 0.3
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "--home", str(home), "trace", "history", "thrice"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == EXIT_NOT_FOUND and "no runs of a workflow named 'thrice'" in r.stderr
    assert "twice" in r.stderr
    assert "Traceback" not in r.stderr


def test_otlp_exporter_sends_every_span_and_leaves_the_files_alone(tmp_path):
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, spans also go to a collector (here a local
    HTTP server decoding OTLP/protobuf), including the batch still queued when run-local
    stops; the span files hold exactly what they hold without it."""
    import http.server
    import threading

    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="tuiflow[otlp] is not installed")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        home, status = run_local(
            tmp_path,
            """
            name: exported
            tasks:
              - {name: A, run: "true"}
              - {name: B, depends_on: [A], call: "tasks:noop"}
            """,
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
                "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing leaves before the stop's flush
                "PYTHONPATH": str(ROOT / "examples"),
            },
        )
    finally:
        server.shutdown()
    assert status["state"] == "completed"
    exported = {}
    for path, content_type, body in received:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    exported[f"0x{span.span_id.hex()}"] = (span.name, f"0x{span.trace_id.hex()}")
    on_disk = {
        s["context"]["span_id"]: (s["name"], s["context"]["trace_id"])
        for s in trace_lines(home, status["id"])
    }
    # every span the worker and coordinator wrote also reached the collector, unchanged
    producer = {k: v for k, v in on_disk.items() if v[0] != "user"}
    assert producer and producer.items() <= exported.items()
    assert {name for name, _ in exported.values()} >= {c.TASK_SPAN, c.WORKFLOW_SPAN, c.READY_SPAN}


def test_the_spans_of_a_task_killed_at_its_timeout_still_have_their_execute_parent(tmp_path):
    (tmp_path / "slowtasks.py").write_text(
        textwrap.dedent(
            """
            import time
            import tuiflow

            def slow():
                with tuiflow.span("before the hang"):
                    pass
                time.sleep(30)
            """
        )
    )
    home, status = run_local(
        tmp_path, "name: hang\ntasks:\n  - {name: t, call: 'slowtasks:slow', timeout: 1}\n", code=1
    )
    spans = trace_lines(home, status["id"])
    [mine] = [s for s in spans if s["name"] == "before the hang"]
    parents = {s["context"]["span_id"]: s for s in spans}
    execute = parents[mine["parent_id"]]  # written although the task never finished
    assert execute["name"] == c.EXECUTE_SPAN
    assert parents[execute["parent_id"]]["name"] == c.TASK_SPAN
