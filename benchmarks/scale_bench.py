"""Scale benchmark: one home under many workflows, many claimers, and one huge workflow.

    python benchmarks/scale_bench.py [--json] [--home DIR] [--workflows 1000]
        [--claimers 64] [--messages 20000] [--big 100000]

1. Many workflows: --workflows small workflows (3 no-op tasks each: a -> b, a -> c) are
   submitted at once, then one coordinator and two workers (`tuiflow coordinator`,
   `tuiflow worker`, real processes) run them all. Reports the coordinator's throughput
   (tasks completed per second from its start until the last workflow ended) and the wall
   time of `tuiflow ls` (a fresh process, as a user types it) over the home holding them
   all, median of 3, next to the same command on an empty home (its floor: interpreter
   and imports).
2. Claim storm: --messages messages in one queue; --claimers processes each claim one
   message at a time and ack it until all are taken. Reports claims/s and wasted renames
   per claim (renames that lost the race to another claimer: the message was gone).
3. A --big-task workflow (benchmarks/engine_bench.py's): seconds to submit it, ms for one
   CAS write of its state, the coordinator's peak RSS while it dispatches every task.

Targets (issue 14): `tuiflow ls` <= 1 s with 1,000 workflows; wasted renames <= 0.1 per
claim; state write <= 100 ms and coordinator RSS <= 500 MB at 100,000 tasks.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine_bench  # noqa: E402

from spool import Home  # noqa: E402
from tuiflow.engine.client import Client  # noqa: E402
from tuiflow.engine.store import is_terminal  # noqa: E402
from tuiflow.sdk.builder import Workflow  # noqa: E402


def small_definition(k: int):
    wf = Workflow(f"small-{k:04d}", base_dir=engine_bench.EXAMPLES)
    wf.task("a", call="tasks:noop")
    wf.task("b", call="tasks:noop", depends_on=["a"])
    wf.task("c", call="tasks:noop", depends_on=["a"])
    return wf.compile()


def _tuiflow(*args: str, log=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuiflow", *args], stdout=log, stderr=log, cwd=ROOT)


def ls_seconds(home_root: str, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tuiflow", "ls", "--home", home_root],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def many_workflows(base: str, n: int) -> dict:
    home = Home.open(f"{base}/many")
    client = Client(home)
    t0 = time.perf_counter()
    ids = [client.submit(small_definition(k)) for k in range(n)]
    submit_s = time.perf_counter() - t0
    log = open(f"{base}/many.log", "w")  # noqa: SIM115
    t0 = time.perf_counter()
    procs = [_tuiflow("coordinator", "--home", home.root, log=log)]
    procs += [_tuiflow("worker", "--home", home.root, "--queue", "default", log=log) for _ in range(2)]
    waiting = set(ids)
    deadline = time.monotonic() + 1800
    while waiting and time.monotonic() < deadline:
        time.sleep(0.5)
        waiting = {w for w in waiting if not is_terminal(client.store.summary(w) or {})}
    wall = time.perf_counter() - t0
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)
    log.close()
    if waiting:
        sys.exit(f"scale_bench: {len(waiting)} workflows did not end in 30 minutes (log: {base}/many.log)")
    empty = Home.open(f"{base}/empty").root
    return {
        "workflows": n,
        "submit_per_s": n / submit_s,
        "coordinator_tasks_per_s": 3 * n / wall,
        "ls_seconds": ls_seconds(home.root),
        "ls_seconds_empty_home": ls_seconds(empty),
    }


def _claimer(root: str, k: int, total: int, taken, go, out) -> None:
    import spool.queue as queue_mod

    won = lost = 0
    real_take = queue_mod.take

    def counting_take(*args, **kwargs) -> bool:
        nonlocal won, lost
        ok = real_take(*args, **kwargs)
        if ok:
            won += 1
        else:
            lost += 1
        return ok

    queue_mod.take = counting_take  # claims rename through spool.queue.take
    q = Home.open(root).queue("storm")
    go.wait()
    while taken.value < total:
        for msg in q.claim(f"c{k}", 1):
            q.ack(msg)
            with taken.get_lock():
                taken.value += 1
    out.put((won, lost))


def claim_storm(base: str, claimers: int, messages: int) -> dict:
    home = Home.open(f"{base}/storm")
    q = home.queue("storm")
    for start in range(0, messages, 1000):
        q.put_many(range(start, min(messages, start + 1000)))
    ctx = mp.get_context("fork")
    taken, go, out = ctx.Value("q", 0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_claimer, args=(home.root, k, messages, taken, go, out)) for k in range(claimers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # every claimer started and waiting
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for proc in procs:
        proc.join(60)
    won = sum(w for w, _ in results)
    lost = sum(x for _, x in results)
    return {
        "claimers": claimers,
        "messages": messages,
        "claims_per_s": won / wall,
        "wasted_renames_per_claim": lost / max(1, won),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", help="directory on the filesystem to measure (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--claimers", type=int, default=64)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--big", type=int, default=100_000)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="scale-bench-", dir=args.home)
    r: dict = {}
    try:
        if args.workflows:
            r.update({f"many_{k}": v for k, v in many_workflows(base, args.workflows).items()})
        if args.claimers:
            r.update({f"storm_{k}": v for k, v in claim_storm(base, args.claimers, args.messages).items()})
        if args.big:
            r.update(engine_bench.big(Home.open(f"{base}/big"), args.big, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    engine_bench.report("scale benchmark", r, as_json=args.json)


if __name__ == "__main__":
    main()
