from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spool import Home, Settings

ROOT = Path(__file__).resolve().parent.parent
ACTORS = ROOT / "tests" / "support" / "actors.py"
LATENCYFS = ROOT / "tests" / "support" / "latencyfs.py"


class Actor:
    """A real child process running tests/support/actors.py; read its milestone lines."""

    def __init__(self, *args: object):
        self.proc = subprocess.Popen(
            [sys.executable, str(ACTORS), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # A reader thread, so that `expect` can give up on an actor that hangs without
        # printing (a blocking readline would wait for pytest-timeout instead).
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """Block until the actor prints a line starting with `prefix`; return that line."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line.strip()
            if not line:
                self.proc.wait()
                err = self.proc.stderr.read()
                raise AssertionError(
                    f"actor exited ({self.proc.returncode}) before printing {prefix!r}: {err}"
                )
        raise AssertionError(f"actor did not print {prefix!r} within {timeout} s")

    def kill(self, sig: int = 9) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)  # EOF once the process is gone (unless a grandchild holds the pipe)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def actors():
    started: list[Actor] = []

    def start(*args: object) -> Actor:
        actor = Actor(*args)
        started.append(actor)
        return actor

    yield start
    for actor in started:
        actor.close()


@pytest.fixture
def home(tmp_path) -> Home:
    return Home.open(tmp_path / "home")


def _fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel/container)"
    if not shutil.which("fusermount3"):
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"mfusepy/libfuse3 unavailable: {e}"
    return None


@pytest.fixture(scope="session")
def fuse_root(tmp_path_factory):
    """A directory on a latency-injecting FUSE passthrough mount (1 ms per metadata op)."""
    reason = _fuse_unavailable()
    if reason:
        pytest.skip(f"FUSE tests skipped: {reason}")
    base = tmp_path_factory.mktemp("latencyfs")
    source, mnt = base / "source", base / "mnt"
    source.mkdir()
    mnt.mkdir()
    log = open(base / "latencyfs.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(LATENCYFS), str(source), str(mnt), "--latency-ms", "1"], stdout=log, stderr=log
    )
    deadline = time.monotonic() + 15
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.skip(f"FUSE tests skipped: mount failed: {(base / 'latencyfs.log').read_text()[-500:]}")
        time.sleep(0.05)
    yield mnt
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(params=["local", pytest.param("fuse", marks=pytest.mark.fuse)])
def fs_root(request, tmp_path) -> Path:
    """A fresh directory, on the local disk or on the latency FUSE mount."""
    if request.param == "local":
        return tmp_path
    root = request.getfixturevalue("fuse_root") / request.node.name.replace("[", "_").replace("]", "")
    root.mkdir()
    return root


def _mount_tmpfs(mnt: Path, options: str) -> None:
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs: writes past that fail with a real ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    _mount_tmpfs(mnt, "size=256k")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def readonly_fs(tmp_path):
    """A read-only tmpfs (root ignores permission bits, so chmod alone cannot make one)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    _mount_tmpfs(mnt, "size=1m")
    os.makedirs(mnt / "existing", exist_ok=True)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


#: a home whose workers are judged dead within 1.5 s, for tests of crashes and takeovers
FAST_SETTINGS = Settings(heartbeat_interval=0.2, dead_after=1.5, lease_ttl=2.0, poll_interval=0.05)


@pytest.fixture
def fast_home(tmp_path) -> Home:
    return Home.open(tmp_path / "home", settings=FAST_SETTINGS)


@pytest.fixture
def procs():
    """Processes a test started; whatever still runs at its end is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(30)
