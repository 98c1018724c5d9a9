"""Programs that tests run as real, separate processes (so they can be SIGKILLed/SIGSTOPped).

Each prints one line per milestone on stdout (flushed), which the test waits for.

    actors.py claim QUEUE_ROOT WORKER OUT [--batch N] [--shards S]
    actors.py cas-incr RECORD N
    actors.py cas-writer RECORD
    actors.py lock-hold LOCKPATH
    actors.py lease-hold LEASE HOLDER TTL FENCED_RECORD
    actors.py heartbeat DIR HOLDER INTERVAL
    actors.py touch-later PATH DELAY
    actors.py crashing-worker HOME WORKER_ID
"""

from __future__ import annotations

import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from spool import CasRecord, ConflictError, DeposedError, HeartbeatWriter, Lease, LockLostError, SpoolQueue
from spool.lock import SpoolLock


def say(*parts: object) -> None:
    print(*parts, flush=True)


def claim(root: str, worker: str, out: str, batch: int = 8, shards: int = 16) -> None:
    q = SpoolQueue(root, shards=shards, listing_ttl=0.5)
    say("ready")
    empty = 0
    with open(out, "w") as f:
        while empty < 3:
            msgs = q.claim(worker, batch)
            if not msgs:
                empty += 1
                time.sleep(0.01)
                continue
            empty = 0
            for m in msgs:
                f.write(f"{m.payload}\n")
                if not q.ack(m):
                    raise SystemExit(f"ack failed for {m.name}")
    say("done")


def cas_incr(path: str, n: int) -> None:
    rec = CasRecord(path)
    conflicts = 0
    for _ in range(n):
        while True:
            value, version = rec.read()
            try:
                rec.write((value or 0) + 1, version)
                break
            except ConflictError:
                conflicts += 1
    say("done", conflicts)


def cas_writer(path: str) -> None:
    """Write records of varying size forever; each value is self-checking."""
    rec = CasRecord(path)
    say("ready")
    while True:
        value, version = rec.read()
        n = (value or {}).get("n", 0) + 1
        blob = os.urandom(random.choice([16, 4096, 65536, 1 << 20]))
        try:
            rec.write({"n": n, "blob": blob, "len": len(blob)}, version)
        except ConflictError:
            pass


def lock_hold(path: str) -> None:
    lock = SpoolLock(path, timeout=10)
    lock.acquire()
    say("locked")
    while True:
        time.sleep(60)


def lease_hold(path: str, holder: str, ttl: float, fenced: str) -> None:
    lease = Lease(path, holder, ttl=ttl, fast_takeover=False)
    generation = lease.acquire(timeout=60)
    say("held", generation)
    rec = CasRecord(fenced)
    while True:
        say("tick")  # about to sleep: a test that stops us now catches us between writes
        time.sleep(ttl / 5)
        _, version = rec.read()
        try:
            # The write is fenced by the lease: a deposed holder must not get through.
            rec.write({"by": holder, "generation": generation}, version, fence=lease.assert_held)
            lease.renew()
        except DeposedError as e:
            say("deposed", str(e).replace("\n", " "))
            sys.exit(3)
        except (ConflictError, LockLostError):
            pass  # not written; the next round's renewal tells whether we still hold the lease


def heartbeat(directory: str, holder: str, interval: float) -> None:
    writer = HeartbeatWriter(directory, holder)
    writer.beat({"queues": ["default"]})
    say("beating")
    while True:
        time.sleep(interval)
        writer.beat({"queues": ["default"]})


def touch_later(path: str, delay: float) -> None:
    say("ready")
    time.sleep(delay)
    with open(path, "w") as f:
        f.write(str(time.time()))
    say("touched", time.monotonic())


def crashing_worker(home_root: str, worker_id: str) -> None:
    """A real worker whose loop raises while its first task runs (a bug, a failing file
    server): the exception ends its loop mid-task, and the process."""
    from spool import Home
    from workers.worker import Worker

    worker = Worker(Home.open(home_root, create=False), ["default"], worker_id=worker_id)

    def failing_check(attempts: object) -> None:
        say("crashing")
        raise RuntimeError("injected: a bug in the worker's loop")

    worker.markers.check = failing_check  # the loop calls it every 0.25 s while a task runs
    say("serving")
    worker.run()


def main(argv: list[str]) -> None:
    cmd, *args = argv
    if cmd == "claim":
        batch = int(args[args.index("--batch") + 1]) if "--batch" in args else 8
        shards = int(args[args.index("--shards") + 1]) if "--shards" in args else 16
        claim(args[0], args[1], args[2], batch, shards)
    elif cmd == "cas-incr":
        cas_incr(args[0], int(args[1]))
    elif cmd == "cas-writer":
        cas_writer(args[0])
    elif cmd == "lock-hold":
        lock_hold(args[0])
    elif cmd == "lease-hold":
        lease_hold(args[0], args[1], float(args[2]), args[3])
    elif cmd == "heartbeat":
        heartbeat(args[0], args[1], float(args[2]))
    elif cmd == "crashing-worker":
        crashing_worker(args[0], args[1])
    elif cmd == "touch-later":
        touch_later(args[0], float(args[1]))
    else:
        raise SystemExit(f"unknown actor {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
