"""NFS benchmark: what one task costs in filesystem requests on a 1 ms mount, and how close
a fan-out comes to the bare spool cycle measured on the same mount in the same run.

    python benchmarks/nfs_bench.py [--json] [--tasks 1000] [--workers 2] [--latency-ms 1]
        [--shapes 15]

Mounts tests/support/latencyfs.py (a FUSE passthrough that delays every metadata request
by --latency-ms, as an NFS round trip does, and counts every request it serves) over a
temporary directory, then measures on it:

1. the bare cycle: put (create a temp file, write, close, rename in), claim (rename out),
   ack (unlink) as bare syscalls with no library code: cycles/s and requests per cycle;
2. the fan-out: 1 root -> --tasks no-op python tasks -> 1 join, run by `run-local`'s
   machinery with --workers workers on a home on the mount: tasks/s over the workflow's
   wall time and requests per task (every request the mount served while it ran, the
   coordinator's and the workers' alike, over the number of tasks);

and prints both with the ratio (fan-out tasks/s / bare cycles/s). Targets (issue 14):
ratio >= 0.5 and <= 60 requests per task. --shapes N lists the N path shapes that drew
the most requests during the fan-out (digits and ids shown as #). Needs root or a user
allowed to mount FUSE, and fusermount3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine_bench  # noqa: E402
import spool_bench  # noqa: E402

from spool import Home  # noqa: E402

LATENCYFS = ROOT / "tests" / "support" / "latencyfs.py"


class CountingMount:
    """A latencyfs mount whose request counts can be read between phases."""

    def __init__(self, base: str, latency_ms: float, attr_cache: float):
        self.source, self.mnt, self.counts = f"{base}/source", f"{base}/mnt", f"{base}/counts.json"
        os.mkdir(self.source)
        os.mkdir(self.mnt)
        self._log = open(f"{base}/latencyfs.log", "w")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                *(sys.executable, str(LATENCYFS), self.source, self.mnt),
                *(f"--latency-ms={latency_ms}", f"--count={self.counts}", f"--attr-cache={attr_cache}"),
            ],
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mnt):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                sys.exit(
                    f"nfs_bench: the FUSE mount failed: {Path(base, 'latencyfs.log').read_text()[-500:]}"
                )
            time.sleep(0.05)

    def snapshot(self) -> dict:
        """The counts once the mount has published every request made so far."""
        time.sleep(0.2)  # the counter publishes at most every 50 ms
        with open(self.counts) as f:
            return json.load(f)

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", self.mnt], check=False)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._log.close()


def delta(after: dict, before: dict, key: str) -> Counter:
    return Counter(after[key]) - Counter(before[key])


def bare_cycle(mount: CountingMount, cycles: int) -> tuple[float, float]:
    """Bare put -> claim -> ack cycles/s and requests per cycle on the mount."""
    step = spool_bench.ceiling_step(f"{mount.mnt}/bare")
    step(8)  # directories made and looked up once, as a running queue has them
    before = mount.snapshot()
    t0 = time.perf_counter()
    step(cycles)
    seconds = time.perf_counter() - t0
    after = mount.snapshot()
    return cycles / seconds, (after["total"] - before["total"]) / cycles


def fanout(mount: CountingMount, tasks: int, workers: int) -> tuple[float, float, Counter, Counter]:
    home = Home.open(f"{mount.mnt}/home")
    before = mount.snapshot()
    _, wall = engine_bench.run_local(home, engine_bench.fanout_definition(tasks), workers, 1)
    after = mount.snapshot()
    n = tasks + 2
    requests = after["total"] - before["total"]
    return n / wall, requests / n, delta(after, before, "by_op"), delta(after, before, "by_path")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=1.0)
    parser.add_argument(
        "--attr-cache",
        type=float,
        default=1.0,
        metavar="S",
        help="the mount's lookup/attribute cache (0: noac)",
    )
    parser.add_argument("--cycles", type=int, default=300, help="bare cycles to time")
    parser.add_argument("--shapes", type=int, default=0, metavar="N", help="list the N costliest path shapes")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="nfs-bench-")
    mount = CountingMount(base, args.latency_ms, args.attr_cache)
    try:
        cycle_rate, cycle_requests = bare_cycle(mount, args.cycles)
        task_rate, task_requests, by_op, by_path = fanout(mount, args.tasks, args.workers)
    finally:
        mount.close()
        shutil.rmtree(base, ignore_errors=True)
    n = args.tasks + 2
    r = {
        "latency_ms": args.latency_ms,
        "attr_cache_s": args.attr_cache,
        "bare_cycles_per_s": cycle_rate,
        "bare_requests_per_cycle": cycle_requests,
        "fanout_tasks": n,
        "fanout_tasks_per_s": task_rate,
        "fanout_requests_per_task": task_requests,
        "ratio": task_rate / cycle_rate,
        "requests_per_task_by_op": {op: round(k / n, 2) for op, k in by_op.most_common()},
    }
    if args.shapes:
        r["requests_per_task_by_shape"] = {s: round(k / n, 2) for s, k in by_path.most_common(args.shapes)}
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
        return
    print_table(r)


def print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NFS benchmark ({r['latency_ms']} ms per metadata request)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in r.items():
        if isinstance(v, dict):
            for sub, x in v.items():
                table.add_row(f"{k}: {sub}", f"{x:,.2f}")
        else:
            table.add_row(k, f"{v:,.3f}" if isinstance(v, float) else f"{v:,}")
    Console().print(table)


if __name__ == "__main__":
    main()
