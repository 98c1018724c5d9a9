"""Spool substrate benchmark: the bare-syscall ceiling and the spool's own rates, in one run.

    python benchmarks/spool_bench.py [--home DIR] [--json] [--seconds S]

Everything runs on the filesystem holding --home (default: a fresh temporary directory),
so the ceiling and the spool figures are comparable. A "cycle" is put -> claim -> ack of
one ~100-byte message. The ceiling is the same cycle done with bare syscalls and no
library code: open/write/close a temp file, rename it into ready/, rename it to
claimed/, unlink it (plus fsync of file and directory for the fsync'd ceiling).

Targets (ARCHITECTURE / issue #2): 1-process cycle >= 50 % of the ceiling; with 100,000
messages queued >= 80 % of the 1,000-queued rate; `machine` durability >= 50 % of the
fsync'd ceiling.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from spool import CasRecord, ChangeWaiter, Durability, SpoolQueue

PAYLOAD = {"workflow": "wf-0123456789", "task": "train/rf", "attempt": 0, "kwargs": {"trees": 100}}
RAW = b"x" * 100


def _timed(seconds: float, step) -> float:
    """Run `step(n)` in growing batches for about `seconds`; return operations per second."""
    done, batch = 0, 64
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(batch)
        done += batch
        batch = min(batch * 2, 4096)
    return done / (time.perf_counter() - t0)


def ceiling_step(root: str, fsync: bool = False):
    """The bare-syscall cycle, no library code."""
    ready, claimed = f"{root}/ready", f"{root}/claimed"
    os.makedirs(ready, exist_ok=True)
    os.makedirs(claimed, exist_ok=True)
    counter = iter(range(1 << 62))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def step(n: int) -> None:
        for _ in range(n):
            i = next(counter)
            tmp, name = f"{ready}/.t{i}", f"m{i}"
            fd = os.open(tmp, flags, 0o644)
            os.write(fd, RAW)
            if fsync:
                os.fsync(fd)
            os.close(fd)
            os.rename(tmp, f"{ready}/{name}")
            if fsync:
                dfd = os.open(ready, os.O_RDONLY)
                os.fsync(dfd)
                os.close(dfd)
            os.rename(f"{ready}/{name}", f"{claimed}/{name}")
            os.unlink(f"{claimed}/{name}")

    return step


def spool_step(root: str, queued: int, durability: Durability, worker: str = "w0"):
    """put -> claim -> ack through the library, with `queued` messages waiting."""
    q = SpoolQueue(root, durability=durability)
    for _ in range(queued):
        q.put(PAYLOAD)

    def step(n: int) -> None:
        for _ in range(n):
            q.put(PAYLOAD)
            for m in q.claim(worker, 1):
                q.ack(m)

    return step


def _proc_cycles(root: str, seconds: float, worker: str, start, out) -> None:
    q = SpoolQueue(root)
    done = 0
    start.wait()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(64):
            q.put(PAYLOAD)
            for m in q.claim(worker, 1):
                q.ack(m)
        done += 64
    out.put(done / (time.perf_counter() - t0))


def spool_cycles_procs(root: str, seconds: float, procs: int, queued: int) -> float:
    q = SpoolQueue(root)
    for _ in range(queued):
        q.put(PAYLOAD)
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_proc_cycles, args=(root, seconds, f"w{i}", start, out)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.2)
    start.set()
    rates = [out.get() for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)


def cas_step(root: str, durability: Durability):
    os.makedirs(root, exist_ok=True)
    rec = CasRecord(f"{root}/record", durability=durability)
    version = rec.read()[1]
    value = {"tasks": {f"t{i}": "completed" for i in range(20)}}

    def step(n: int) -> None:
        nonlocal version
        for _ in range(n):
            version = rec.write(value, version)

    return step


def watch_latency_ms(root: str, mode: str, samples: int = 20) -> float:
    d = f"{root}/watch-{mode}"
    os.makedirs(d, exist_ok=True)
    code = (
        "import sys, time, os\n"
        "for i in range(int(sys.argv[2])):\n"
        "    line = sys.stdin.readline()\n"
        "    t = time.monotonic(); tmp = f'{sys.argv[1]}/.t{i}'\n"
        "    open(tmp, 'w').close(); os.rename(tmp, f'{sys.argv[1]}/f{i}')\n"
        "    print(t, flush=True)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", code, d, str(samples)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lat = []
    # published as the spool publishes (temp file, rename), awaited as its waiters await
    with ChangeWaiter([d], mode=mode, poll_interval=0.01, arrivals_only=True) as waiter:
        for _ in range(samples):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert waiter.wait(10)
            woke = time.monotonic()
            sent = float(writer.stdout.readline())
            lat.append((woke - sent) * 1000)
            time.sleep(0.02)
    writer.wait()
    return statistics.median(lat)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", help="directory on the filesystem to measure (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=3.0, help="total duration of each figure")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per figure")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="spool-bench-", dir=args.home)
    r: dict[str, float | str] = {"filesystem_dir": base}
    try:
        # Every figure is measured in several short rounds, interleaved with the others, and
        # reported as the median: a noisy VM disk then slows ceiling and spool alike.
        steps = {
            "ceiling_cycle_per_s": ceiling_step(f"{base}/ceiling"),
            "cycle_per_s_1proc": spool_step(f"{base}/q1", 1000, Durability.PROCESS),
            "cycle_per_s_1proc_100k_queued": spool_step(f"{base}/q100k", 100_000, Durability.PROCESS),
            "ceiling_fsync_cycle_per_s": ceiling_step(f"{base}/ceiling-fsync", fsync=True),
            "cycle_per_s_1proc_machine": spool_step(f"{base}/qm", 1000, Durability.MACHINE),
            "cas_writes_per_s": cas_step(f"{base}/cas", Durability.PROCESS),
            "cas_writes_per_s_machine": cas_step(f"{base}/cas-m", Durability.MACHINE),
        }
        rates: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                rates[name].append(_timed(args.seconds / args.rounds, step))
        r.update({k: statistics.median(v) for k, v in rates.items()})
        r["cycle_per_s_4proc"] = spool_cycles_procs(f"{base}/q4", args.seconds, 4, 1000)
        r["watch_wakeup_ms_p50_events"] = watch_latency_ms(base, "events")
        r["watch_wakeup_ms_p50_poll"] = watch_latency_ms(base, "poll")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    r["ratio_1proc_to_ceiling"] = r["cycle_per_s_1proc"] / r["ceiling_cycle_per_s"]
    r["ratio_100k_to_1k"] = r["cycle_per_s_1proc_100k_queued"] / r["cycle_per_s_1proc"]
    r["ratio_machine_to_fsync_ceiling"] = r["cycle_per_s_1proc_machine"] / r["ceiling_fsync_cycle_per_s"]
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"spool benchmark ({args.seconds:g} s per figure, median of {args.rounds} rounds)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in r.items():
        table.add_row(
            k, f"{v:,.3f}" if isinstance(v, float) and v < 10 else f"{v:,.0f}" if isinstance(v, float) else v
        )
    Console().print(table)


if __name__ == "__main__":
    main()
