"""Analyzer benchmark: the full analysis of a big workflow against a naive baseline.

    python benchmarks/analyzer_bench.py [--json] [--spans N] [--tasks T] [--dir DIR] [--repeat R]

1. Generates a workflow directory (default 1,000,000 spans over 20,000 tasks) in the
   producers' exact line format: a layered DAG (each task depends on 1-3 tasks of the
   layer before), ~10 % of tasks retried once (a failed attempt, then a good one), ~5 %
   in merged batches of 4 whose shared work is recorded on one member, user spans nested
   two levels deep, 64 workers. One span file per attempt, plus the coordinator's.
2. Runs, each in a fresh Python process so the figures do not leak into each other:
   - ``analysis``: `load_trace` (read + index), e2e, queuing, critical path, and the JSON
     report serialised with ``json.dumps``;
   - ``baseline``: ``json.loads`` of every line of the same files into dicts kept in one
     list (no analysis at all).

Memory is the process's peak resident set size (``ru_maxrss`` of the child, via
``resource.getrusage``), which counts everything the process really held (interpreter,
imports, the parsed data, allocator slack), not only Python objects as tracemalloc
would, and does not slow allocation down. ``rss_after_imports`` is the same figure just
before the timed work starts, so ``peak - after_imports`` is what the work added.
Times are wall-clock (``time.perf_counter``) around the work only, with the files in the
page cache (they were just written). Targets: analysis <= 10 s and <= 2 GB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from analyzer.contract import (
    ATTR_ATTEMPT,
    ATTR_BATCH_ID,
    ATTR_BYTES,
    ATTR_DEPENDS_ON,
    ATTR_ERROR,
    ATTR_EXECUTOR,
    ATTR_GPUS,
    ATTR_HOST,
    ATTR_KIND,
    ATTR_OUTCOME,
    ATTR_QUEUE,
    ATTR_READY_AT,
    ATTR_RUN_ID,
    ATTR_TASK,
    ATTR_WORKER,
    ATTR_WORKFLOW_ID,
    ATTR_WORKFLOW_NAME,
    format_trace_id,
    trace_id_for,
)
from analyzer.synthetic import RESOURCE, otel_line, task_dir_name

TARGET_SECONDS = 10.0
TARGET_BYTES = 2 * 1024**3
WORKERS = 64
EPOCH = 1_800_000_000.0


# --- generation ------------------------------------------------------------------------------


class _Lines:
    """Span lines in ``ReadableSpan.to_json(indent=None)`` format, built from templates
    (json.dumps per span would make generation slower than the analysis it feeds)."""

    def __init__(self, workflow_id: str):
        self.trace = format_trace_id(trace_id_for(workflow_id))
        self.tail = (
            ', "events": [], "links": [], "resource": '
            + json.dumps({"attributes": RESOURCE, "schema_url": ""})
            + "}"
        )
        self._minute: dict[int, str] = {}
        self._names: dict[str, str] = {}

    def iso(self, t: float) -> str:
        minute = int(t // 60)
        prefix = self._minute.get(minute)
        if prefix is None:
            prefix = datetime.fromtimestamp(minute * 60, tz=UTC).strftime("%Y-%m-%dT%H:%M:")
            self._minute[minute] = prefix
        micros = round((t - minute * 60) * 1e6)
        if micros >= 60_000_000:  # rounding spilled into the next minute
            return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{prefix}{micros // 1_000_000:02d}.{micros % 1_000_000:06d}Z"

    def line(
        self,
        name: str,
        sid: int,
        parent: int | None,
        start: float,
        end: float,
        attrs: str,
        status: str = '{"status_code": "UNSET"}',
    ) -> str:
        qname = self._names.get(name)
        if qname is None:
            qname = self._names[name] = json.dumps(name)
        parent_text = "null" if parent is None else f'"0x{parent:016x}"'
        return (
            f'{{"name": {qname}, "context": {{"trace_id": "{self.trace}", "span_id": "0x{sid:016x}", '
            f'"trace_state": "[]"}}, "kind": "SpanKind.INTERNAL", "parent_id": {parent_text}, '
            f'"start_time": "{self.iso(start)}", "end_time": "{self.iso(end)}", "status": {status}, '
            f'"attributes": {attrs}{self.tail}'
        )


def _check_template(lines: _Lines, wf_id: str) -> None:
    """The fast template must print what `otel_line` (the SDK's format) prints."""
    attrs = {ATTR_KIND: "network", ATTR_BYTES: 12}
    for start in (EPOCH + 0.25, EPOCH + 59.9999996, EPOCH + 3600.000001):
        fast = lines.line("write outputs", 5, 3, start, start + 1.5, json.dumps(attrs))
        ref = otel_line(
            "write outputs",
            trace_id=trace_id_for(wf_id),
            span_id=5,
            parent_id=3,
            start=start,
            end=start + 1.5,
            attributes=attrs,
        )
        if fast != ref:
            raise AssertionError(f"template drifted from the OTel format:\n{fast}\n{ref}")


def generate(root: Path, n_spans: int, n_tasks: int, seed: int = 7) -> dict:
    """Write the synthetic workflow under `root`; return what was written."""
    rng = random.Random(seed)
    wf_id = "wf-bench"
    lines = _Lines(wf_id)
    _check_template(lines, wf_id)
    next_id = [1]

    def new_id() -> int:
        next_id[0] += 1
        return next_id[0]

    layers = max(2, round((n_tasks / 12.5) ** 0.5))  # 20,000 tasks -> 40 layers of 500
    per_layer = -(-n_tasks // layers)
    names = [f"layer{i // per_layer:02d}/task-{i:05d}" for i in range(n_tasks)]
    layer_of = [i // per_layer for i in range(n_tasks)]
    deps: list[list[int]] = []
    for i in range(n_tasks):
        layer = layer_of[i]
        if layer == 0:
            deps.append([])
            continue
        lo, hi = (layer - 1) * per_layer, min(layer * per_layer, n_tasks)
        deps.append(sorted(set(rng.sample(range(lo, hi), k=min(hi - lo, rng.randint(1, 3))))))
    budget = [n_spans // n_tasks + (1 if i < n_spans % n_tasks else 0) for i in range(n_tasks)]
    budget[-1] -= 1  # the coordinator's workflow span
    retried = {i for i in range(n_tasks) if rng.random() < 0.10}
    batch_of: dict[int, str] = {}
    for i in range(0, n_tasks - 3, 4):
        if rng.random() < 0.05 and len({layer_of[i + k] for k in range(4)}) == 1:
            for k in range(4):
                batch_of[i + k] = f"batch-{i}"
    wf_span = new_id()
    ready_end: list[float] = [0.0] * n_tasks
    worker_free = [EPOCH] * WORKERS
    written = files = size = attempts_total = 0
    t_first = EPOCH
    t_last = EPOCH

    def attrs_json(obj: dict) -> str:
        return json.dumps(obj)

    child_attrs = {
        "compute": '{"' + ATTR_KIND + '": "compute"}',
        "network": '{"' + ATTR_KIND + '": "network"}',
    }

    for i in range(n_tasks):
        task = names[i]
        ready_at = max((ready_end[d] for d in deps[i]), default=EPOCH) + rng.uniform(0.01, 0.08)
        attempts = [0, 1] if i in retried else [0]
        spans_left = budget[i]
        t = ready_at
        for att in attempts:
            failed = att == 0 and len(attempts) == 2
            w = (
                min(range(WORKERS), key=lambda k: worker_free[k])
                if rng.random() < 0.7
                else rng.randrange(WORKERS)
            )
            start = max(t, worker_free[w]) + rng.expovariate(4.0)
            count = min(10, spans_left - 8) if failed else spans_left
            spans_left -= count
            out: list[str] = []
            root_id = new_id()
            cur = start
            # read upstream outputs, with `chunks` nested network spans
            chunks = max(0, (count - 6) // 4) if not failed else 2
            steps = max(0, count - (4 if failed else 6) - chunks)
            read_id = new_id()
            read_start = cur
            for _ in range(chunks):
                d = rng.uniform(0.005, 0.05)
                # chunks overlap a little: parallel downloads
                cs = cur - (d * 0.3 if rng.random() < 0.3 else 0.0)
                cs = max(cs, read_start)
                out.append(
                    lines.line(
                        "fetch chunk",
                        new_id(),
                        read_id,
                        cs,
                        cs + d,
                        '{"'
                        + ATTR_KIND
                        + '": "network", "'
                        + ATTR_BYTES
                        + f'": {rng.randint(1 << 16, 1 << 22)}}}',
                    )
                )
                cur = max(cur, cs + d)
            out.append(
                lines.line(
                    "read upstream outputs",
                    read_id,
                    root_id,
                    read_start,
                    cur,
                    '{"' + ATTR_KIND + '": "network", "' + ATTR_BYTES + f'": {1 << 20}}}',
                )
            )
            setup = rng.uniform(0.2, 2.0) if batch_of.get(i, "") == "" or i % 4 == 0 else 0.01
            out.append(
                lines.line("executor setup", new_id(), root_id, cur, cur + setup, child_attrs["compute"])
            )
            cur += setup
            exec_id = new_id()
            exec_start = cur
            for _ in range(steps):
                d = rng.uniform(0.02, 0.3)
                out.append(
                    lines.line(
                        "generate batch",
                        new_id(),
                        exec_id,
                        cur,
                        cur + d,
                        '{"' + ATTR_KIND + '": "compute", "step.tokens": 256}',
                    )
                )
                cur += d
            if failed:
                out.append(
                    lines.line(
                        "execute",
                        exec_id,
                        root_id,
                        exec_start,
                        cur,
                        child_attrs["compute"],
                        '{"status_code": "ERROR", "description": "CUDA OOM"}',
                    )
                )
                end = cur
            else:
                out.append(lines.line("execute", exec_id, root_id, exec_start, cur, child_attrs["compute"]))
                w_d = rng.uniform(0.01, 0.2)
                out.append(
                    lines.line(
                        "write outputs",
                        new_id(),
                        root_id,
                        cur,
                        cur + w_d,
                        '{"'
                        + ATTR_KIND
                        + '": "network", "'
                        + ATTR_BYTES
                        + f'": {rng.randint(1 << 10, 1 << 24)}}}',
                    )
                )
                cur += w_d
                ready_end[i] = cur
                p_d = rng.uniform(0.005, 0.05)
                out.append(
                    lines.line("post-process", new_id(), root_id, cur, cur + p_d, child_attrs["compute"])
                )
                cur += p_d
                end = cur
            root_attrs = {
                ATTR_WORKFLOW_ID: wf_id,
                ATTR_WORKFLOW_NAME: "bench",
                ATTR_RUN_ID: wf_id,
                ATTR_TASK: task,
                ATTR_ATTEMPT: att,
                ATTR_DEPENDS_ON: [names[d] for d in deps[i]],
                ATTR_READY_AT: t,
                ATTR_WORKER: f"gpu-{w:02d}",
                ATTR_HOST: f"node-{w // 8:02d}",
                ATTR_QUEUE: "gpu",
                ATTR_GPUS: [w % 8],
                ATTR_EXECUTOR: "vllm",
                ATTR_OUTCOME: "failed" if failed else "completed",
            }
            if failed:
                root_attrs[ATTR_ERROR] = "CUDA OOM"
            if i in batch_of:
                root_attrs[ATTR_BATCH_ID] = batch_of[i]
            status = (
                '{"status_code": "ERROR", "description": "failed"}' if failed else '{"status_code": "UNSET"}'
            )
            # The exporter writes children as they end, the root last.
            out.append(lines.line("task", root_id, wf_span, start, end, attrs_json(root_attrs), status))
            worker_free[w] = end
            t_last = max(t_last, end)
            t = end + rng.uniform(0.5, 2.0)  # retry back-off
            path = root / "tasks" / task_dir_name(task) / str(att) / "logs" / "spans.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            text = "\n".join(out) + "\n"
            path.write_text(text)
            written += len(out)
            files += 1
            size += len(text)
            attempts_total += 1
            with open(path.parent / "lineage.jsonl", "w") as f:
                row = {
                    "data_id": f"d-{i}",
                    "sources": [f"d-{d}" for d in deps[i]],
                    "task": task,
                    "attempt": att,
                }
                f.write(json.dumps(row) + "\n")
    coord = root / "trace" / "spans.jsonl"
    coord.parent.mkdir(parents=True, exist_ok=True)
    wf_attrs = json.dumps({ATTR_WORKFLOW_ID: wf_id, ATTR_WORKFLOW_NAME: "bench"})
    text = lines.line("workflow", wf_span, None, t_first, t_last + 0.1, wf_attrs) + "\n"
    coord.write_text(text)
    return {
        "spans": written + 1,
        "tasks": n_tasks,
        "attempts": attempts_total,
        "files": files + 1,
        "bytes": size + len(text),
        "layers": layers,
        "retried_tasks": len(retried),
        "batched_tasks": len(batch_of),
    }


# --- measurement (each in its own process) ---------------------------------------------------


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_analysis(wf_dir: str, jobs: int | None) -> dict:
    from analyzer.critical import critical_path
    from analyzer.e2e import e2e_breakdown
    from analyzer.gpu import gpu_usage
    from analyzer.lineage import lineage_graph
    from analyzer.queuing import queuing_delays
    from analyzer.reader import gc_paused
    from analyzer.report import Analysis, build_report
    from analyzer.trace import load_trace

    base = _rss_bytes()
    cpu0 = _cpu_seconds()
    # The whole command runs with the cyclic GC paused, as docs/analyzer.md recommends for
    # a one-shot command (load_trace and analyze pause it inside anyway; pausing around
    # both spares the collector passes over the fresh records in between).
    with gc_paused():
        t0 = time.perf_counter()
        trace = load_trace(wf_dir, jobs=jobs)
        t1 = time.perf_counter()
        e2e = e2e_breakdown(trace)
        t2 = time.perf_counter()
        queuing = queuing_delays(trace)
        t3 = time.perf_counter()
        path = critical_path(trace)
        t4 = time.perf_counter()
        lineage = lineage_graph(trace.lineage, trace.assets)
        analysis = Analysis(trace, e2e, queuing, path, lineage, gpu_usage(trace))
        text = json.dumps(build_report(analysis))
        t5 = time.perf_counter()
    cpu1 = _cpu_seconds()
    # What one full collection over the loaded trace costs once the GC runs again: a
    # process that goes on allocating pays a few of these (see docs/analyzer.md).
    g0 = time.perf_counter()
    gc.collect()
    gc_pass = time.perf_counter() - g0
    phases = {
        "read": t1 - t0,
        "e2e": t2 - t1,
        "queuing": t3 - t2,
        "critical_path": t4 - t3,
        "lineage+gpu+report": t5 - t4,
    }
    return {
        "seconds": t5 - t0,
        "cpu_seconds": cpu1 - cpu0,
        "gc_pass_seconds": gc_pass,
        "phases": phases,
        "peak_rss_bytes": _rss_bytes(),
        "rss_after_imports_bytes": base,
        # helper processes of the parallel reader: the largest one's peak (Linux: KiB)
        "helper_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "helper_cpu_seconds": _children_cpu_seconds(),
        "helper_chunks": trace.stats.helper_chunks,
        "helper_failures": trace.stats.helper_failures,
        "spans_read": trace.stats.spans_read,
        "lines_skipped": trace.stats.lines_skipped,
        "critical_path_tasks": len(path.nodes),
        "report_bytes": len(text),
    }


def measure_baseline(wf_dir: str) -> dict:
    root = Path(wf_dir)
    files = [*sorted(root.glob("tasks/*/*/logs/spans.jsonl")), root / "trace" / "spans.jsonl"]
    base = _rss_bytes()
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    rows = []
    for path in files:
        with open(path, "rb") as handle:
            for line in handle:
                rows.append(json.loads(line))
    t1 = time.perf_counter()
    return {
        "seconds": t1 - t0,
        "cpu_seconds": _cpu_seconds() - cpu0,
        "peak_rss_bytes": _rss_bytes(),
        "rss_after_imports_bytes": base,
        "spans_read": len(rows),
    }


def _child(kind: str, wf_dir: str, jobs: int | None) -> dict:
    cmd = [sys.executable, __file__, "--measure", kind, "--dir", wf_dir]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--dir", help="generate into (or, with --reuse, read) this directory; kept")
    parser.add_argument("--reuse", action="store_true", help="skip generation, use --dir as is")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the best is kept")
    parser.add_argument(
        "--jobs", type=int, help="processes parsing span files (default: the analyzer's choice)"
    )
    parser.add_argument("--measure", choices=("analysis", "baseline"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        out = (
            measure_analysis(args.dir, args.jobs)
            if args.measure == "analysis"
            else measure_baseline(args.dir)
        )
        print(json.dumps(out))
        return 0

    tmp = None
    if args.dir:
        wf_dir = Path(args.dir)
    else:
        tmp = tempfile.mkdtemp(prefix="analyzer-bench-")
        wf_dir = Path(tmp) / "wf-bench"
    try:
        gen: dict = {}
        if not args.reuse:
            if wf_dir.exists():
                shutil.rmtree(wf_dir)
            t0 = time.perf_counter()
            gen = generate(wf_dir, args.spans, args.tasks)
            gen["seconds"] = time.perf_counter() - t0
        runs = {
            kind: [_child(kind, str(wf_dir), args.jobs) for _ in range(max(1, args.repeat))]
            for kind in ("analysis", "baseline")
        }
        best = {kind: min(rs, key=lambda r: r["seconds"]) for kind, rs in runs.items()}
        a, b = best["analysis"], best["baseline"]
        a["all_seconds"] = [r["seconds"] for r in runs["analysis"]]
        b["all_seconds"] = [r["seconds"] for r in runs["baseline"]]
        # Helpers run while the parent holds its records: counting both peaks in full is
        # an upper bound of what the machine held at once.
        a["total_peak_rss_bytes"] = a["peak_rss_bytes"] + (
            a["helper_peak_rss_bytes"] if a["helper_chunks"] else 0
        )
        result = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "memory_method": "peak RSS (ru_maxrss) of a fresh child process per measurement",
            "generated": gen,
            "analysis": a,
            "baseline": b,
            "speedup_vs_baseline": b["seconds"] / a["seconds"] if a["seconds"] else None,
            "memory_ratio_vs_baseline": a["total_peak_rss_bytes"] / b["peak_rss_bytes"],
            "targets": {
                "seconds": TARGET_SECONDS,
                "bytes": TARGET_BYTES,
                "met": a["seconds"] <= TARGET_SECONDS and a["total_peak_rss_bytes"] <= TARGET_BYTES,
            },
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print(result)
        return 0 if result["targets"]["met"] else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _print(r: dict) -> None:
    def mb(n: int) -> str:
        return f"{n / 1024**2:,.0f} MiB"

    g, a, b = r["generated"], r["analysis"], r["baseline"]
    print(f"machine  : {r['machine']['cpus']} CPUs, Python {r['machine']['python']}")
    if g:
        print(
            f"generated: {g['spans']:,} spans, {g['tasks']:,} tasks ({g['layers']} layers),"
            f" {g['attempts']:,} attempts ({g['retried_tasks']:,} retried, {g['batched_tasks']:,} batched),"
            f" {g['files']:,} files, {g['bytes'] / 1024**2:,.0f} MiB in {g['seconds']:.1f} s"
        )
    print(f"memory   : {r['memory_method']}")
    helpers = ""
    if a["helper_chunks"]:
        helpers = (
            f" + {a['helper_chunks']} helper process(es) peak {mb(a['helper_peak_rss_bytes'])},"
            f" cpu {a['helper_cpu_seconds']:.2f} s"
        )
    if len(a["all_seconds"]) > 1:
        print(
            "runs     : analysis "
            + ", ".join(f"{s:.2f}" for s in a["all_seconds"])
            + " s; baseline "
            + ", ".join(f"{s:.2f}" for s in b["all_seconds"])
            + " s (the best of each below)"
        )
    print(
        f"analysis : {a['seconds']:6.2f} s wall, cpu {a['cpu_seconds']:.2f} s, peak {mb(a['peak_rss_bytes'])}"
        f" (after imports {mb(a['rss_after_imports_bytes'])}){helpers}"
    )
    print(
        f"           spans {a['spans_read']:,}, skipped {a['lines_skipped']},"
        f" critical path {a['critical_path_tasks']} tasks, one GC pass after {a['gc_pass_seconds']:.2f} s; "
        + ", ".join(f"{k} {v:.2f} s" for k, v in a["phases"].items())
    )
    print(
        f"baseline : {b['seconds']:6.2f} s wall, cpu {b['cpu_seconds']:.2f} s, peak {mb(b['peak_rss_bytes'])}"
        f" (after imports {mb(b['rss_after_imports_bytes'])}): json.loads of {b['spans_read']:,} lines into a list"
    )
    t = r["targets"]
    print(
        f"targets  : <= {t['seconds']:.0f} s and <= {mb(t['bytes'])} (helpers included):"
        f" {'met' if t['met'] else 'NOT met'}; analysis is {r['speedup_vs_baseline']:.2f}x the baseline's"
        f" speed at {r['memory_ratio_vs_baseline']:.2f}x its memory"
    )


if __name__ == "__main__":
    sys.exit(main())
