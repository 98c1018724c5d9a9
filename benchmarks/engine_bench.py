"""Engine benchmark: throughput, hop latency and scale, with the filesystem ceiling of the same run.

    python benchmarks/engine_bench.py [--json] [--home DIR] [--workers 2] [--slots 1]

1. fan-out/fan-in: 1 root -> 1,000 no-op python tasks -> 1 join, run by `run-local`'s
   machinery (the same coordinator and worker classes) with `--workers` workers.
   Reports tasks/s over the workflow's wall time (and the whole session's seconds), next
   to two ceilings measured in the same run: the bare-syscall spool cycle (put + claim +
   ack with no library code) and the task-files floor: every file operation the engine
   makes per task (attempt directory, spans, a share of its bundle's message and of a
   completion message), as bare syscalls, for as many tasks as the fan-out has, in 1
   process and split over 2 processes.
2. chain: 200 no-op python tasks, each depending on the previous. The hop is the time from
   a task's completion (end of its root span, written by the worker) to its child's start
   (start of the child's root span): median and p95 in ms.
3. 100,000-task workflow: seconds to compile + submit it, ms for one CAS write of its
   state, and the peak RSS of a coordinator process that loads it and dispatches 100,000
   ready tasks.

Targets on the 2-core machine: fan-out >= 2,000 tasks/s; chain hop median <= 5 ms;
100k: submit <= 5 s, state write <= 100 ms, coordinator RSS <= 500 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from spool import Home, Settings  # noqa: E402
from spool.placement import spread_subdirectories  # noqa: E402
from tuiflow.engine.client import Client  # noqa: E402
from tuiflow.engine.local import LocalRun  # noqa: E402
from tuiflow.sdk.builder import Workflow  # noqa: E402
from workers.wire import bundle_size  # noqa: E402

EXAMPLES = str(ROOT / "examples")


def fanout_definition(n: int):
    wf = Workflow("bench-fanout", base_dir=EXAMPLES)
    wf.task("start", call="tasks:noop")
    wf.task("work", call="tasks:noop", foreach={"range": n}, depends_on=["start"])
    wf.task("join", call="tasks:noop", depends_on=["work"])
    return wf.compile()


def chain_definition(n: int):
    wf = Workflow("bench-chain", base_dir=EXAMPLES)
    prev = None
    for i in range(n):
        prev = wf.task(f"c{i:03d}", call="tasks:noop", depends_on=[prev] if prev else [])
    return wf.compile()


def run_local(home: Home, definition, workers: int, slots: int) -> tuple[str, float]:

    session = LocalRun(home, definition, workers=workers, slots=slots)
    wf_id = session.start()
    session.wait(poll=0.01)
    session.stop()
    run = Client(home).run(wf_id)
    assert run.state == "completed", f"{definition.name} ended {run.state}: {run.reason}"
    return wf_id, run.ended_at - run.started_at


def ceiling(base: str, seconds: float = 2.0) -> float:
    import spool_bench

    step = spool_bench.ceiling_step(f"{base}/ceiling")
    rates = [spool_bench._timed(seconds / 4, step) for _ in range(4)]
    return statistics.median(rates)


PAYLOAD_700 = b"m" * 700
SPANS_3K = b"s" * 3000


def task_files_step(root: str, bundle: int = 1):
    """The file operations the engine makes per no-op python task, as bare syscalls with no
    library code: its attempt directory (task/attempt/logs), its spans.jsonl, the probe for
    output.json; a `bundle`-th of a task message's put (temp file + rename), claim
    (rename), read and ack (unlink): a fan-out's tasks travel `bundle` to a message; and a
    tenth of a completion message's put, claim, read and ack (workers batch about ten
    events per message in a fan-out)."""
    for sub in ("ready", "claimed", "completions", "applied", "tasks"):
        os.makedirs(f"{root}/{sub}", exist_ok=True)
    counter = iter(range(1 << 62))
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def message(spool: str, taken: str, name: str) -> None:
        """put (temp file, rename in), claim (rename out), read, ack (unlink)."""
        fd = os.open(f"{root}/{spool}/.{name}", create, 0o644)
        os.write(fd, PAYLOAD_700)
        os.close(fd)
        os.rename(f"{root}/{spool}/.{name}", f"{root}/{spool}/{name}")
        os.rename(f"{root}/{spool}/{name}", f"{root}/{taken}/{name}")
        fd = os.open(f"{root}/{taken}/{name}", os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)

    def step(n: int) -> None:
        for _ in range(n):
            i = next(counter)
            if i % bundle == 0:
                message("ready", "claimed", f"m{i}")
            task = f"{root}/tasks/t{i}"
            os.mkdir(task)
            os.mkdir(f"{task}/0")
            os.mkdir(f"{task}/0/logs")
            fd = os.open(f"{task}/0/logs/spans.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.write(fd, SPANS_3K)
            os.close(fd)
            try:
                os.close(os.open(f"{task}/0/output.json", os.O_RDONLY))
            except FileNotFoundError:
                pass
            if i % bundle == bundle - 1:
                os.unlink(f"{root}/claimed/m{i - i % bundle}")
            if i % 10 == 0:
                message("completions", "applied", f"c{i}")
                os.unlink(f"{root}/applied/c{i}")

    return step


def _floor_worker(root: str, n: int, bundle: int, go, out) -> None:
    step = task_files_step(root, bundle)
    go.wait()
    t0 = time.perf_counter()
    step(n)
    out.put(time.perf_counter() - t0)


def task_floor(base: str, tasks: int, processes: int) -> float:
    """Tasks/s that the engine's per-task file operations alone allow for `tasks` tasks
    split over `processes` processes at once (the fan-out's count, so the filesystem sees
    the same amount of work as in the fan-out)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    share = [tasks // processes + (k < tasks % processes) for k in range(processes)]
    procs = [
        ctx.Process(
            target=_floor_worker, args=(f"{base}/floor{processes}-{k}", share[k], bundle_size(tasks), go, out)
        )
        for k in range(processes)
    ]
    for proc in procs:
        proc.start()
    go.set()
    seconds = max(out.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(60)
    return tasks / seconds


def _iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def chain_hops(home: Home, wf_id: str, n: int) -> list[float]:
    """Parent end -> child start, in seconds, from the attempts' root spans."""
    bounds = {}
    for i in range(n):
        path = Path(home.workflows_dir) / wf_id / "tasks" / f"c{i:03d}" / "0" / "logs" / "spans.jsonl"
        for line in path.read_text().splitlines():
            span = json.loads(line)
            if span["name"] == "task":
                bounds[i] = (_iso(span["start_time"]), _iso(span["end_time"]))
    return [bounds[i + 1][0] - bounds[i][1] for i in range(n - 1) if i in bounds and i + 1 in bounds]


def big(home: Home, n: int, base: str) -> dict:
    from tuiflow.engine.store import WorkflowStore

    t0 = time.perf_counter()
    wf = Workflow("bench-100k", base_dir=EXAMPLES)
    wf.task("root", call="tasks:noop", queue="bench-root")
    wf.task("bulk", call="tasks:noop", foreach={"range": n}, depends_on=["root"], queue="bench-bulk")
    definition = wf.compile()
    wf_id = Client(home).submit(definition)
    submit_s = time.perf_counter() - t0
    # the coordinator: loads it, dispatches the root, and after the root completes, 100k tasks
    log = open(f"{base}/coordinator.log", "w")  # noqa: SIM115
    coord = subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "coordinator", "--home", home.root],
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "worker", "--queue", "bench-root", "--home", home.root],
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    client = Client(home)
    deadline = time.monotonic() + 600
    bulk = home.queue("bench-bulk")
    while time.monotonic() < deadline:
        s = client.store.summary(wf_id) or {}
        if s.get("counts", {}).get("ready", 0) >= n and bulk.counts().ready >= n:
            break
        time.sleep(0.5)
    dispatch_s = time.perf_counter() - t0
    time.sleep(1.0)  # let it write the state after the dispatch batch
    with open(f"/proc/{coord.pid}/status") as f:
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    coord.terminate()
    worker.terminate()
    worker.wait(60)
    coord.wait(60)
    log.close()
    store = WorkflowStore(home)
    run, version = store.load_run(wf_id)
    writes = []
    for _ in range(5):
        t = time.perf_counter()
        version = store.write_run(run, version)
        writes.append(time.perf_counter() - t)
    size = os.path.getsize(store.state_record(wf_id).path)
    return {
        "tasks_100k": n + 1,
        "submit_seconds_100k": submit_s,
        "dispatch_seconds_100k": dispatch_s,
        "state_write_ms_100k": statistics.median(writes) * 1000,
        "state_bytes_100k": size,
        "coordinator_peak_rss_mb_100k": peak_kb / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", help="directory on the filesystem to measure (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1, help="slots per worker")
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--big", type=int, default=100_000)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="engine-bench-", dir=args.home)
    # Each phase's directory in block groups of its own (ext4), away from the inodes that
    # the phases before it (and whatever ran before this benchmark) freed: see the order below.
    spread_subdirectories(base)
    settings = Settings(heartbeat_interval=1.0)
    r: dict = {"workers": args.workers, "slots_per_worker": args.slots}
    try:
        # The engine's phases run first, then the task-files floor (which frees as many
        # inodes as the fan-out), and the spool ceiling last: on ext4 without a journal (this
        # VM's disk) inode allocation scans, one by one, the inodes freed in the last minute
        # (five if their inode table is not yet written back), and the ceiling frees tens of
        # thousands. Measured first, it taxed every file the phases after it made (floor
        # 4,700 -> 400 tasks/s). Each figure starts with the disk's dirty data written out,
        # so none pays for the writeback of the files the one before it made.
        os.sync()
        home = Home.open(f"{base}/fanout", settings=settings)
        t0 = time.perf_counter()
        _, wall = run_local(home, fanout_definition(args.fanout), args.workers, args.slots)
        r["fanout_tasks"] = args.fanout + 2
        r["fanout_seconds"] = wall
        r["fanout_tasks_per_s"] = (args.fanout + 2) / wall
        # the whole session: workers and executors starting, submit, run, stop
        r["fanout_session_seconds"] = time.perf_counter() - t0
        home = Home.open(f"{base}/chain", settings=settings)
        wf_id, wall = run_local(home, chain_definition(args.chain), args.workers, args.slots)
        hops = sorted(chain_hops(home, wf_id, args.chain))
        r["chain_tasks"] = args.chain
        r["chain_seconds"] = wall
        r["chain_hop_ms_median"] = statistics.median(hops) * 1000
        r["chain_hop_ms_p95"] = hops[int(len(hops) * 0.95) - 1] * 1000
        os.sync()
        r["task_files_floor_1proc_per_s"] = task_floor(base, args.fanout + 2, 1)
        os.sync()
        r["task_files_floor_2proc_per_s"] = task_floor(base, args.fanout + 2, 2)
        os.sync()
        r["ceiling_cycle_per_s"] = ceiling(base)
        if args.big:
            r.update(big(Home.open(f"{base}/big", settings=settings), args.big, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report("engine benchmark", r, as_json=args.json)


def report(title: str, r: dict, *, as_json: bool) -> None:
    """Print a benchmark's figures: one JSON line, or a table."""
    if as_json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in r.items():
        table.add_row(k, f"{v:,.3f}" if isinstance(v, float) else f"{v:,}")
    Console().print(table)


if __name__ == "__main__":
    main()
