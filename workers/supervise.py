"""Supervising child processes: own process group, bounded waits, honest exit reasons.

Every attempt runs in a process group of its own (``start_new_session``), so stopping it
reaches whatever it spawned. Stopping is SIGTERM to the group, a grace period, then
SIGKILL. Exit statuses become sentences a person can act on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from workers.wire import FailKind


def describe_exit(returncode: int) -> str:
    """'exit code 3' / 'killed by signal 9 (SIGKILL)'."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown signal"
    return f"killed by signal {-returncode} ({name})"


def kill_group(
    proc: subprocess.Popen,
    grace: float,
    wait: Callable[[subprocess.Popen, float], object] | None = None,
) -> None:
    """SIGTERM the process group, wait `grace` seconds, then SIGKILL it. Reaps `proc`.

    Parameters:
        wait: called as ``wait(proc, grace)`` instead of ``proc.wait(grace)``: returns once
            `proc` exited or `grace` seconds passed (`logcap.Pump.wait` copies the
            process's output meanwhile).
    """
    if proc.poll() is not None:
        _killpg(proc.pid, signal.SIGKILL)  # orphans it left behind in its group
        return
    _killpg(proc.pid, signal.SIGTERM)
    if wait is not None:
        wait(proc, grace)
    else:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # stuck in uninterruptible sleep (D state): nothing more to do
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_or_stop(
    proc: subprocess.Popen,
    deadline: float | None,
    should_stop: Callable[[], FailKind | None],
    poll: float = 0.05,
) -> tuple[int | None, FailKind | None]:
    """Wait for `proc` until it exits, `deadline` (monotonic seconds) passes, or
    `should_stop()` names a reason, looking every `poll` seconds. Returns (returncode or
    None, stop reason or None: `FailKind.TIMEOUT` past the deadline); never kills."""
    while True:
        timeout = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
        try:
            return proc.wait(timeout=timeout), None
        except subprocess.TimeoutExpired:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            return None, FailKind.TIMEOUT
        reason = should_stop()
        if reason:
            return None, reason


def tail(path: str, max_bytes: int = 4000) -> str:
    """The last `max_bytes` of a text file (for error reports)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return tail_text(data, size, max_bytes)


def tail_text(data: bytes, size: int, max_bytes: int) -> str:
    """`data`, the last bytes of a file of `size` bytes, as text for an error report: from
    its first whole line, after an ellipsis, when the file holds more than `max_bytes`."""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = "…" + text[text.find("\n") + 1 :] if "\n" in text else "…" + text
    return text.strip()
