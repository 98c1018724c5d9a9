"""Dashboard benchmark: first paint and UI-thread cost per refresh, on a big home.

    python benchmarks/tui_bench.py [--json] [--home DIR] [--seconds 5] [--rate 1000]

The fixture is the demo home (`tuiflow.fixtures.demo`) with its fan-out grown to 10,000 tasks, plus
pending workflows up to 100 in all. The app runs headless (Textual's Pilot) at 160×50 in
a child process, so every figure includes what a user waits for.

1. first paint, cold: seconds from starting `python` to the first screen drawn with its
   data, for the overview (100 workflows) and for a workflow screen opened on the
   10,000-task workflow. The floor beside them is the same measure for a bare Textual app
   with one label (interpreter start + Textual import + first frame).
2. refresh under churn: the app is live (file watching) on the 10,000-task workflow's task
   list while another process changes `--rate` task states a second, written the way the
   coordinator writes them (a CAS state write every 50 ms). Over `--seconds`: refreshes
   a second, the UI thread's CPU milliseconds per refresh (everything the event loop did,
   drawing included, divided by the refreshes), the `apply` milliseconds of each refresh
   (p50/p95/max), the read milliseconds on the fetch thread, and the longest stall of the
   event loop. The same figures for the overview (100 workflows) follow.
3. ceiling of the approach we did not take: seconds for a stock `DataTable` to take
   10,000 rows and draw its first frame, in the same run.

Targets (2-core machine): first paint <= 1.5 s; refresh <= 50 ms of UI thread.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = (160, 50)
TASKS = 10_000
WORKFLOWS = 100


# ------------------------------------------------------------------- fixture
def build_fixture(root: str) -> None:
    sys.path.insert(0, str(ROOT))
    from spool import Home
    from tuiflow.engine.client import Client
    from tuiflow.engine.compiler import compile_workflow
    from tuiflow.fixtures import demo

    home = demo.build(root, fanout_tasks=TASKS, spans=False)
    client = Client(Home.open(root))
    have = len(client.store.ids())
    for k in range(WORKFLOWS - have):
        client.submit(
            compile_workflow(
                {
                    "name": f"eval-{k:03d}",
                    "tasks": [
                        {"name": "prep", "run": "true"},
                        {"name": "score", "run": "true", "foreach": {"range": 8}, "depends_on": ["prep"]},
                        {"name": "report", "run": "true", "depends_on": ["score"]},
                    ],
                }
            )
        )
    assert len(client.store.ids()) == WORKFLOWS, home.root


# -------------------------------------------------------------- child: paint
def _settled(app) -> bool:
    from tuiflow.app.screen import LiveScreen

    screen = app.screen
    return isinstance(screen, LiveScreen) and screen.loaded


def child_paint(home_dir: str, workflow: str) -> None:
    """Open the app (on `workflow`, unless "-"), wait for the first frame with data, print
    when (since the epoch). Imports only what `tuiflow` itself imports."""
    from spool import Home
    from tuiflow.app import TuiflowApp

    app = TuiflowApp(
        Home.open(home_dir),
        live=False,
        keymap={},
        initial_workflow=None if workflow == "-" else workflow,
    )

    async def run() -> float:
        async with app.run_test(size=SIZE) as pilot:
            while not _settled(app):
                await asyncio.sleep(0.002)
            await pilot.pause()  # the frame with the data is drawn
            return time.time()

    print(json.dumps({"painted_at": asyncio.run(run())}))


def child_floor() -> None:
    from textual.app import App
    from textual.widgets import Label

    class Bare(App):
        def compose(self):
            yield Label("hello")

    async def run() -> float:
        async with Bare().run_test(size=SIZE) as pilot:
            await pilot.pause()
            return time.time()

    print(json.dumps({"painted_at": asyncio.run(run())}))


def child_datatable() -> None:
    """A stock DataTable given the 10,000 task rows the task list shows."""
    from textual.app import App
    from textual.widgets import DataTable

    rows = [
        (f"work[{i}]", "completed", "0", "gpu-node-1-4242-a1b2", "1.2s", "340ms", "") for i in range(TASKS)
    ]

    class Table(App):
        def compose(self):
            yield DataTable()

    async def run() -> float:
        app = Table()
        async with app.run_test(size=SIZE) as pilot:
            table = app.query_one(DataTable)
            for col in ("TASK", "STATE", "ATT", "WORKER", "QUEUED", "RAN", "ERROR"):
                table.add_column(col)
            t0 = time.perf_counter()
            table.add_rows(rows)
            await pilot.pause()
            return time.perf_counter() - t0

    print(json.dumps({"seconds": asyncio.run(run())}))


def cold(args: list[str]) -> float:
    """Seconds from starting a child python to its reported first paint."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["painted_at"] - t0


# -------------------------------------------------------------- child: churn
def child_writer(home_dir: str, rate: int, seconds: float) -> None:
    """Change `rate` task states a second in the fan-out, in 50 ms group commits, the way
    the coordinator does: start the oldest ready tasks, complete the longest running."""
    from spool import Home
    from tuiflow.engine.runstate import READY, RUNNING
    from tuiflow.engine.store import WorkflowStore
    from tuiflow.fixtures import demo

    store = WorkflowStore(Home.open(home_dir))
    wf = demo.IDS["fanout"]
    run, version = store.load_run(wf)
    ready = [i for i in range(len(run)) if run.st[i] == READY]
    running = [i for i in range(len(run)) if run.st[i] == RUNNING]
    per_commit = max(2, int(rate * 0.05))
    end = time.monotonic() + seconds
    changes = 0
    next_at = time.monotonic()
    while time.monotonic() < end and (ready or running):
        now = time.time()
        for _ in range(per_commit // 2):
            if ready:
                i = ready.pop(0)
                run.on_started(i, run.attempt[i], "gpu-node-1-4242-a1b2", now)
                running.append(i)
                changes += 1
        for _ in range(per_commit - per_commit // 2):
            if running:
                i = running.pop(0)
                run.on_completed(i, run.attempt[i], "gpu-node-1-4242-a1b2", now)
                changes += 1
        version = store.write_run(run, version)
        next_at += 0.05
        time.sleep(max(0.0, next_at - time.monotonic()))
    print(json.dumps({"changes": changes}))


def child_churn(home_dir: str, screen: str, seconds: float, warmup: float) -> None:
    """Run the live app and measure its refreshes while the writer runs."""
    from spool import Home
    from tuiflow.app import TuiflowApp
    from tuiflow.app.screen import LiveScreen
    from tuiflow.fixtures import demo

    applies: list[float] = []
    reads: list[float] = []
    recording = threading.Event()
    original_done = LiveScreen._done
    original_load = {}

    def done(self, data):
        original_done(self, data)
        if recording.is_set():
            applies.append(self.last_apply_ms)

    LiveScreen._done = done  # type: ignore[method-assign]

    app = TuiflowApp(
        Home.open(home_dir),
        live=True,
        keymap={},
        initial_workflow=demo.IDS["fanout"] if screen == "workflow" else None,
    )

    async def run() -> dict[str, float]:
        async with app.run_test(size=SIZE) as pilot:
            while not _settled(app):
                await asyncio.sleep(0.005)
            await pilot.pause()
            target = app.screen
            load = type(target).load
            original_load["f"] = load

            def timed_load(self, now):
                t0 = time.perf_counter()
                try:
                    return load(self, now)
                finally:
                    if recording.is_set():
                        reads.append((time.perf_counter() - t0) * 1000)

            type(target).load = timed_load  # type: ignore[method-assign]
            await asyncio.sleep(warmup)
            # the event loop's own clock: how late a 5 ms sleep wakes is how long it was busy
            stalls: list[float] = []

            async def watchdog() -> None:
                while True:
                    t = time.perf_counter()
                    await asyncio.sleep(0.005)
                    stalls.append((time.perf_counter() - t - 0.005) * 1000)

            dog = asyncio.create_task(watchdog())
            recording.set()
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu = time.thread_time() - cpu0
            wall = time.perf_counter() - wall0
            recording.clear()
            dog.cancel()
            type(target).load = load  # type: ignore[method-assign]
            n = max(1, len(applies))
            return {
                "refreshes_per_s": len(applies) / wall,
                "ui_cpu_ms_per_refresh": cpu * 1000 / n,
                "ui_cpu_share": cpu / wall,
                "apply_ms_p50": statistics.median(applies) if applies else 0.0,
                "apply_ms_p95": _p95(applies),
                "apply_ms_max": max(applies, default=0.0),
                "read_ms_p50": statistics.median(reads) if reads else 0.0,
                "read_ms_p95": _p95(reads),
                "loop_stall_ms_max": max(stalls, default=0.0),
            }

    print(json.dumps(asyncio.run(run())))


def _p95(xs: list[float]) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


def churn(home_dir: str, screen: str, rate: int, seconds: float) -> dict[str, float]:
    warmup = 1.5
    app = subprocess.Popen(
        [sys.executable, __file__, "--child", "churn", home_dir, screen, str(seconds), str(warmup)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    # the app needs a moment to start; the writer runs through the whole measurement
    time.sleep(1.0)
    writer = subprocess.run(
        [sys.executable, __file__, "--child", "writer", home_dir, str(rate), str(seconds + warmup + 2)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    out, _ = app.communicate(timeout=120)
    result = json.loads(out.strip().splitlines()[-1])
    written = json.loads(writer.stdout.strip().splitlines()[-1])["changes"]
    result["state_changes_per_s"] = written / (seconds + warmup + 2)
    return result


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--home", help="build the fixture here (default: a temporary directory)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window under churn")
    parser.add_argument("--rate", type=int, default=1000, help="task state changes a second")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(ROOT))
        kind, *rest = args.child
        if kind == "paint":
            child_paint(*rest)
        elif kind == "floor":
            child_floor()
        elif kind == "datatable":
            child_datatable()
        elif kind == "writer":
            child_writer(rest[0], int(rest[1]), float(rest[2]))
        elif kind == "churn":
            child_churn(rest[0], rest[1], float(rest[2]), float(rest[3]))
        return

    tmp = None
    if args.home:
        home_dir = os.path.abspath(args.home)
        if os.path.exists(home_dir):
            sys.exit(f"{home_dir} exists; give a new directory")
    else:
        tmp = tempfile.mkdtemp(prefix="tui-bench-")
        home_dir = os.path.join(tmp, "home")
    try:
        t0 = time.perf_counter()
        build_fixture(home_dir)
        r: dict[str, object] = {
            "fixture_seconds": time.perf_counter() - t0,
            "tasks": TASKS,
            "workflows": WORKFLOWS,
        }
        # An installed package has its bytecode compiled at install time; an editable
        # checkout (and PYTHONDONTWRITEBYTECODE) may not, which would time the compiler.
        compileall.compile_dir(str(ROOT), quiet=1, rx=re.compile(r"/(\.|benchmarks|tests|build)"))
        cold(["--child", "floor"])  # warm the OS page cache for Python and Textual first
        r["floor_first_paint_s"] = min(cold(["--child", "floor"]) for _ in range(3))
        fanout = "fan0ut9k"  # tuiflow.fixtures.demo.IDS["fanout"]; the child must not import the demo
        r["overview_first_paint_s"] = min(cold(["--child", "paint", home_dir, "-"]) for _ in range(3))
        r["workflow_10k_first_paint_s"] = min(cold(["--child", "paint", home_dir, fanout]) for _ in range(3))
        out = subprocess.run(
            [sys.executable, __file__, "--child", "datatable"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        r["stock_datatable_10k_s"] = json.loads(out.strip().splitlines()[-1])["seconds"]
        # each churn run starts from the same fixture (the writer uses up ready tasks)
        for screen in ("workflow", "overview"):
            work = f"{home_dir}-{screen}"
            shutil.copytree(home_dir, work)
            try:
                r[f"{screen}_churn"] = churn(work, screen, args.rate, args.seconds)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    def rounded(v: object) -> object:
        if isinstance(v, float):
            return round(v, 3)
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return v

    r = rounded(r)  # type: ignore[assignment]
    if args.json:
        print(json.dumps(r))
        return
    w, o = r["workflow_churn"], r["overview_churn"]  # type: ignore[index]
    print(f"fixture: {TASKS:,}-task workflow + {WORKFLOWS} workflows (built in {r['fixture_seconds']} s)")
    print("first paint, cold process (target <= 1.5 s):")
    print(f"  bare Textual app (floor)     {r['floor_first_paint_s']:.3f} s")
    print(f"  overview, 100 workflows      {r['overview_first_paint_s']:.3f} s")
    print(f"  workflow, 10,000 tasks       {r['workflow_10k_first_paint_s']:.3f} s")
    print(f"  stock DataTable, 10k rows    {r['stock_datatable_10k_s']:.3f} s (the approach not taken)")
    for label, c in (("workflow, 10,000 tasks", w), ("overview, 100 workflows", o)):
        print(
            f"refresh under churn, {label} ({c['state_changes_per_s']:.0f} state changes/s; target <= 50 ms):"
        )
        print(
            f"  {c['refreshes_per_s']:.1f} refreshes/s, UI thread {c['ui_cpu_ms_per_refresh']:.1f} ms CPU/refresh "
            f"({c['ui_cpu_share'] * 100:.0f}% busy)"
        )
        print(
            f"  apply p50 {c['apply_ms_p50']:.1f} ms, p95 {c['apply_ms_p95']:.1f} ms, max {c['apply_ms_max']:.1f} ms; "
            f"read (fetch thread) p50 {c['read_ms_p50']:.1f} ms, p95 {c['read_ms_p95']:.1f} ms; "
            f"longest loop stall {c['loop_stall_ms_max']:.1f} ms"
        )


if __name__ == "__main__":
    main()
