from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.engine import FAST_SETTINGS

from spool import Home

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


@dataclass(frozen=True)
class AuditRecord:
    """One line of a latencyfs --audit log (see tests/support/latencyfs.py)."""

    time_ns: int
    tgid: int
    tid: int
    op: str
    paths: tuple[str, ...]
    result: str

    @classmethod
    def parse(cls, line: str) -> AuditRecord:
        t, tgid, tid, op, *paths, result = line.split()
        unquoted = tuple(re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m[1], 16)), p) for p in paths)
        return cls(int(t), int(tgid), int(tid), op, unquoted, result)


class NfsMounts:
    """Latencyfs mounts over one backing directory, one FUSE process per simulated NFS client."""

    def __init__(self, base: Path):
        self.base = base
        self.source = base / "source"  # the "server": write here to act behind every client's back
        self.mounts: list[Path] = []
        self.audit_paths: list[Path] = []  # per mount; empty unless audit=True
        self.logs: list[Path] = []
        self.faults_off_file = base / "faults-off"
        self._procs: list[subprocess.Popen] = []

    @property
    def mount(self) -> Path:
        """The first client's mount point."""
        return self.mounts[0]

    def faults_off(self) -> None:
        """Suppress every fault on every client (latency and caches stay)."""
        self.faults_off_file.touch()

    def faults_on(self) -> None:
        self.faults_off_file.unlink(missing_ok=True)

    def audit(self, client: int = 0) -> list[AuditRecord]:
        """The audit records that client `client` has written so far."""
        lines = self.audit_paths[client].read_text().splitlines()
        return [AuditRecord.parse(line) for line in lines if line.strip()]

    def _start(self, args: list[str], audit: bool, seed: int | None) -> None:
        k = len(self.mounts)
        mnt, log_path = self.base / f"mnt{k}", self.base / f"latencyfs{k}.log"
        mnt.mkdir()
        if audit:
            self.audit_paths.append(self.base / f"audit{k}.log")
            args = [*args, f"--audit={self.audit_paths[-1]}"]
        if seed is not None:
            args = [*args, f"--seed={seed + k}"]  # distinct draws per client, reproducible
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(LATENCYFS), str(self.source), str(mnt), *args], stdout=log, stderr=log
            )
        self._procs.append(proc)
        self.mounts.append(mnt)
        self.logs.append(log_path)
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"latencyfs did not mount {mnt}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.02)

    def close(self) -> None:
        for mnt in self.mounts:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def nfs_mounts(tmp_path):
    """Factory: latencyfs "NFS clients" mounted over a fresh backing directory.

    nfs_mounts(clients=2, latency_ms=1, lost_reply=0.01, estale=0.01, negative_cache=0.2,
               audit=True, faults_off=False, seed=None) -> NfsMounts

    Every client is its own FUSE process (own kernel dentry/attribute caches) over the same
    `.source`. With faults_off=True the faults start suppressed; `.faults_on()` enables them.
    Client k draws its faults with seed `seed + k` (random when seed is None).
    Everything is unmounted and stopped at teardown. Skips where FUSE is unavailable.
    """
    reason = _fuse_unavailable()
    if reason:
        pytest.skip(f"FUSE tests skipped: {reason}")
    made: list[NfsMounts] = []

    def make(
        clients: int = 1,
        latency_ms: float = 1.0,
        lost_reply: float = 0.0,
        estale: float = 0.0,
        negative_cache: float = 0.0,
        audit: bool = False,
        faults_off: bool = False,
        seed: int | None = None,
    ) -> NfsMounts:
        base = tmp_path / f"nfs{len(made)}"
        base.mkdir()
        mounts = NfsMounts(base)
        made.append(mounts)
        mounts.source.mkdir()
        if faults_off:
            mounts.faults_off()
        args = [
            f"--latency-ms={latency_ms}",
            f"--lost-reply={lost_reply}",
            f"--estale={estale}",
            f"--negative-cache={negative_cache}",
            f"--faults-off-file={mounts.faults_off_file}",
        ]
        for _ in range(clients):
            mounts._start(args, audit, seed)
        return mounts

    yield make
    for mounts in made:
        mounts.close()


def _mount_tmpfs(mnt: Path, options: str) -> None:
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts tmpfs file systems: ``tmpfs("name", "4m")`` is a fresh mount of that size
    under tmp_path (skipped where mounting needs a root this process is not); unmounted at
    the end of the test."""
    made: list[Path] = []

    def mount(name: str, size: str) -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        _mount_tmpfs(mnt, f"size={size}")
        made.append(mnt)
        return mnt

    yield mount
    for mnt in made:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


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
