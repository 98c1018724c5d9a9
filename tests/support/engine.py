"""Driving the engine from tests: the CLI and daemons as real processes, and waiting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from spool import Home, Settings

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
WORKFLOWS = ROOT / "tests" / "workflows"
#: a home whose workers are judged dead within 1.5 s, for tests of crashes and takeovers
FAST_SETTINGS = Settings(heartbeat_interval=0.2, dead_after=1.5, lease_ttl=2.0, poll_interval=0.05)


def cli(
    *args: object, home: Path | str, timeout: float = 180, input: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuiflow", *map(str, args), "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        input=input,
    )


def start(*args: object, home: Path | str, log: Path) -> subprocess.Popen:
    f = open(log, "w")  # noqa: SIM115 - closed with the process by the fixture
    return subprocess.Popen(
        [sys.executable, "-m", "tuiflow", *map(str, args), "--home", str(home)],
        stdout=f,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def start_run_local(wf: Path, home: Home, **popen: Any) -> subprocess.Popen:
    """`tuiflow run-local WF --workers 2` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "run-local", str(wf), "--workers", "2", "--home", str(home.root)],
        cwd=ROOT,
        **popen,
    )


def wait_for(predicate, timeout: float = 60, poll: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def no_process_like(pattern: str, within: float = 10) -> None:
    """No process whose command line matches `pattern` is left (a killed process group
    may take a moment to be reaped after the state already says so). Patterns are
    anchored, odd sleep lengths: a `sleep 60` elsewhere on the machine must not match."""

    def gone() -> bool:
        return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.strip() == ""

    wait_for(gone, timeout=within, poll=0.1, what=f"no process matching {pattern!r}")


def write_wf(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def worker_state(home: Home, worker_id: str) -> str | None:
    """What a worker's heartbeat says it is doing: running, draining, stopping (None: no record)."""
    from tuiflow.engine.client import Client

    return next((w["state"] for w in Client(home).workers() if w["id"] == worker_id), None)
