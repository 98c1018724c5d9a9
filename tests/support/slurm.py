"""A real single-node Slurm cluster for tests: slurmctld and slurmd as child processes.

The recipe (and what was measured with it) is ``shared/design/SLURM_CI.md``: Debian's
``slurm-wlm`` and ``munge`` packages, run as root without systemd. ``SlurmCluster.start``
writes ``slurm.conf``, ``cgroup.conf`` and ``gres.conf`` into a directory of its own, makes
fake GPU device nodes there (character devices 195,N: plain files leave
``CUDA_VISIBLE_DEVICES`` unset), starts ``munged`` if none is running, starts
``slurmctld -D`` and ``slurmd -D`` and waits until the node is ``idle``. ``stop`` cancels
every job, stops both daemons by PID, stops ``munged`` only if it started it, and removes
the freezer cgroup that ``proctrack/cgroup`` leaves behind.

Slurm's ports are fixed (6817 and 6818), so one cluster runs per machine at a time. Every
daemon started here carries ``TUIFLOW_SLURM_ROOT=<its directory>`` in its environment and its
directory holds a ``.tuiflow-slurm`` marker: a cluster left behind by a crashed test run is
recognised by either and stopped by the next ``start``; any other running ``slurmctld`` or
``slurmd`` makes ``start`` raise ``SlurmClusterError``.

Clients (``sbatch``, ``squeue``, ...) find the cluster through ``SLURM_CONF``: merge
``cluster.env`` into the environment of anything that calls them. The helpers here do so, and
run in ``cluster.work_dir`` so that default ``slurm-%j.out`` files land there, not in the
repository.

A test module uses it so::

    import pytest
    from support.slurm import SlurmCluster, slurm_cluster_fixture

    slurm = pytest.fixture(scope="module", name="slurm")(slurm_cluster_fixture)

    def test_runs(slurm: SlurmCluster, tmp_path):
        job = slurm.sbatch("#!/bin/sh\\ntrue\\n", "--job-name=t")
        assert slurm.wait_state(job, {"GONE"}, timeout=30) == "COMPLETED"

``slurm_cluster_fixture`` skips the module with ``slurm_unavailable_reason()`` where no
cluster can start (not root, Slurm or MUNGE not installed, no mknod, no cgroup freezer).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

#: environment variable set on every daemon started here; its value is the cluster's directory
ENV_MARKER = "TUIFLOW_SLURM_ROOT"
#: file written into the cluster's directory; marks it as owned by this module
DIR_MARKER = ".tuiflow-slurm"
#: major device number of NVIDIA GPUs (/dev/nvidia0 is 195,0)
NVIDIA_MAJOR = 195
SERVER_PROGRAMS = ("slurmctld", "slurmd", "munged")
CLIENT_PROGRAMS = ("sbatch", "squeue", "scancel", "sinfo", "runuser")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_PID_FILE = MUNGE_RUN_DIR / "munged.pid"
MUNGE_SOCKET = MUNGE_RUN_DIR / "munge.socket.2"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: job states in which a job has left the queue (``squeue`` lists them only with ``-t all``)
FINISHED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
#: ``squeue`` output fields, in order; the name goes last because it may contain the separator
SQUEUE_FIELDS = (
    ("job_id", "%i"),
    ("array_job_id", "%F"),
    ("array_task_id", "%K"),
    ("state", "%T"),
    ("node", "%N"),
    ("reason", "%r"),
    ("name", "%j"),
)
#: sockets of job steps live in the spool directory; keep its path well below the 108-byte limit
MAX_SPOOL_PATH = 60


class SlurmClusterError(RuntimeError):
    """The test cluster could not start, stop or answer; the message says what to do."""


def _which(program: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin:/usr/local/sbin"
    return shutil.which(program, path=path)


def slurm_unavailable_reason() -> str | None:
    """Why a test cluster cannot start on this machine, or None when it can.

    Returns:
        A short reason fit for ``pytest.skip``: not root, a program missing, no MUNGE key,
        no mknod, no cgroup freezer. Another cluster already running is not checked here:
        ``SlurmCluster.start`` raises for that, since a skip would hide it.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a test Slurm cluster needs root (slurmd runs jobs as their users; mknod for fake GPUs)"
    missing = [p for p in (*SERVER_PROGRAMS, *CLIENT_PROGRAMS) if _which(p) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install -y slurm-wlm munge)"
    if not MUNGE_KEY.exists():
        return f"{MUNGE_KEY} is missing (the munge package creates it)"
    if not (
        os.access(CGROUP_ROOT / "freezer", os.W_OK) or os.access(CGROUP_ROOT / "cgroup.controllers", os.W_OK)
    ):
        return f"no writable cgroup freezer (v1) or cgroup v2 under {CGROUP_ROOT} for proctrack/cgroup"
    with tempfile.TemporaryDirectory(prefix="tuiflow-mknod-") as d:
        try:
            os.mknod(os.path.join(d, "dev"), stat.S_IFCHR | 0o666, os.makedev(NVIDIA_MAJOR, 0))
        except OSError as e:
            return f"cannot mknod a character device for a fake GPU: {e.strerror}"
    return None


# -- processes found through /proc -------------------------------------------------------


def _procs() -> Iterator[tuple[int, str]]:
    """Yield (pid, comm) of every live process (zombies left out: they hold no port or socket)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:  # RACE: the process exited while we looked
                continue
            if _alive(int(entry)):
                yield int(entry), comm


def _read_nul_separated(pid: int, what: str) -> list[str]:
    try:
        data = Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:  # RACE: exited
        return []
    return [part.decode(errors="replace") for part in data.split(b"\0") if part]


def _is_ours(pid: int) -> bool:
    """Was this daemon started by this module (now or by an earlier, crashed test run)?"""
    if any(v.startswith(ENV_MARKER + "=") for v in _read_nul_separated(pid, "environ")):
        return True
    argv = _read_nul_separated(pid, "cmdline")
    for flag, value in itertools.pairwise(argv):
        if flag == "-f" and (Path(value).parent / DIR_MARKER).exists():
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM the processes (not our children), wait for them, SIGKILL whatever is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _kill_cgroup_tree(directory: Path) -> None:
    """SIGKILL every process in a cgroup tree and remove its directories (deepest first)."""
    if not directory.is_dir():
        return
    for d, _dirs, _files in os.walk(directory, topdown=False):
        with contextlib.suppress(OSError):
            (Path(d) / "freezer.state").write_text("THAWED")  # a frozen process ignores SIGKILL
        with contextlib.suppress(OSError):
            for line in (Path(d) / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line), signal.SIGKILL)
    deadline = time.monotonic() + 5
    for d, _dirs, _files in os.walk(directory, topdown=False):
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY until the killed processes are gone
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)


def _slurm_cgroup_dirs(host: str) -> list[Path]:
    """The cgroup directories slurmd makes for a node (v1: ``<controller>/slurm_<host>``)."""
    try:
        controllers = [c for c in CGROUP_ROOT.iterdir() if c.is_dir()]
    except OSError:
        return []
    return [c / f"slurm_{host}" for c in controllers if (c / f"slurm_{host}").is_dir()]


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _stop_stale_daemons(host: str) -> None:
    """Stop a cluster a crashed test run left behind; raise if someone else's is running."""
    ours: list[int] = []
    steps: list[int] = []
    for pid, comm in _procs():
        if comm not in ("slurmctld", "slurmd", "slurmstepd") or pid == os.getpid():
            continue
        if _is_ours(pid):
            (steps if comm == "slurmstepd" else ours).append(pid)
        elif comm != "slurmstepd":
            cmd = " ".join(_read_nul_separated(pid, "cmdline"))
            raise SlurmClusterError(
                f"a {comm} that tests/support/slurm.py did not start is running (pid {pid}: {cmd}); "
                f"its fixed ports (6817/6818) block a test cluster: stop it first (kill {pid})"
            )
    _terminate(ours, timeout=10)
    _terminate(steps, timeout=0)
    if ours or steps:
        for d in _slurm_cgroup_dirs(host):
            _kill_cgroup_tree(d)


# -- the cluster ------------------------------------------------------------------------


class SlurmCluster:
    """A running single-node cluster; make one with ``SlurmCluster.start``.

    Attributes:
        root: the cluster's directory (configuration, state, spool, logs, fake devices).
        conf: path of ``slurm.conf`` (``cgroup.conf`` and ``gres.conf`` sit next to it).
        env: what to merge into ``os.environ`` for Slurm clients: ``{"SLURM_CONF": ...}``.
        log_dir: the daemons' logs (``slurmctld.log``, ``slurmd.log``) and their stdout/stderr
            (``slurmctld.out``, ``slurmd.out``).
        work_dir: where the helpers run clients, so default ``slurm-%j.out`` files land here.
        host: the node's name (``hostname -s``).
        gpus, cpus: what the node declares.
    """

    def __init__(self, root: Path, gpus: int, cpus: int):
        self.root = root
        self.gpus = gpus
        self.cpus = cpus
        self.host = _short_hostname()
        self.conf = root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self.log_dir = root / "log"
        self.work_dir = root / "work"
        self.state_dir = root / "state"
        self.dev_dir = root / "dev"
        self.spool_dir = root / "spool"
        self._short_spool: Path | None = None
        self._ctld: subprocess.Popen | None = None
        self._slurmd: subprocess.Popen | None = None
        self._munged_pid: int | None = None  # set only when this cluster owns munged
        self._stopped = False

    # -- lifecycle --

    @classmethod
    def start(cls, root: Path, gpus: int = 2, cpus: int = 8) -> SlurmCluster:
        """Start a cluster in ``root`` (created if missing) and wait until its node is idle.

        Parameters:
            root: a directory of its own for this cluster (e.g. ``tmp_path_factory.mktemp``).
            gpus: fake GPUs the node declares (``Gres=gpu:N``); 0 for none.
            cpus: CPUs the node declares (``config_overrides`` allows more than the machine has).

        Raises:
            SlurmClusterError: Slurm cannot run here (the reason from ``slurm_unavailable_reason``),
                another cluster is running, or the node did not become idle within 30 s (the
                message carries the daemons' log tails).
        """
        reason = slurm_unavailable_reason()
        if reason is not None:
            raise SlurmClusterError(reason)
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        (root / DIR_MARKER).write_text(f"a test Slurm cluster started by pid {os.getpid()}\n")
        cluster = cls(root, gpus, cpus)
        _stop_stale_daemons(cluster.host)
        try:
            cluster._write_config()
            cluster._make_gpu_devices()
            cluster._start_munged()
            cluster._start_daemons()
            cluster._wait_idle(timeout=30)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        """Cancel every job, stop slurmd then slurmctld, then munged if this cluster started it.

        Safe to call twice, and on a cluster whose start failed halfway.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._ctld is not None and self._ctld.poll() is None:
            with contextlib.suppress(Exception):
                self._cancel_all(timeout=15)
        for proc in (self._slurmd, self._ctld):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        # a step whose slurmd went away keeps running: end what is left of this node's jobs
        steps = [pid for pid, comm in _procs() if comm == "slurmstepd" and _is_ours(pid)]
        _terminate(steps, timeout=0)
        for d in _slurm_cgroup_dirs(self.host):
            _kill_cgroup_tree(d)
        if self._munged_pid is not None:
            _terminate([self._munged_pid], timeout=5)
            self._munged_pid = None
        if self._short_spool is not None:
            shutil.rmtree(self._short_spool, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients --

    def client(
        self, *argv: str, env: Mapping[str, str] | None = None, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client (``sinfo``, ``scontrol``...) against this cluster; never raises on rc.

        Parameters:
            argv: the program and its arguments.
            env: variables added on top of ``os.environ`` and ``self.env``.
            input: text for its stdin.
            timeout: seconds before ``subprocess.TimeoutExpired``.
        """
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            cwd=self.work_dir,
            env={**os.environ, **self.env, **(env or {})},
        )

    def _check(self, *argv: str, **kwargs) -> str:
        result = self.client(*argv, **kwargs)
        if result.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}{self._log_tails()}"
            )
        return result.stdout

    def sbatch(self, script: str | os.PathLike[str], *args: str, env: Mapping[str, str] | None = None) -> str:
        """Submit a batch job; return its job id (for an array, the array's id).

        Parameters:
            script: a path to a script (a ``Path``, or a ``str`` without a newline), or the
                script's text (a ``str`` with a newline or starting with ``#!``), passed on stdin.
            args: ``sbatch`` options, e.g. ``"--gres=gpu:1"``, ``"--array=0-1"``.
            env: variables added to the environment ``sbatch`` runs in (and, as it exports
                its environment by default, the job's).

        Raises:
            SlurmClusterError: ``sbatch`` failed; the message has its stderr.
        """
        text = None
        if isinstance(script, str) and ("\n" in script or script.startswith("#!")):
            text = script
            argv = ["sbatch", "--parsable", *args]
        else:
            argv = ["sbatch", "--parsable", *args, os.fspath(script)]
        out = self._check(*argv, env=env, input=text)
        return out.strip().split(";")[0]

    def squeue(self, job_id: str | None = None, *, all_states: bool = False) -> list[dict[str, str]]:
        """The jobs in the queue, one dict per job (and per array element).

        Parameters:
            job_id: only this job (an array's id lists all its elements); an id Slurm has
                forgotten gives an empty list.
            all_states: also list jobs that have finished (``-t all``) while slurmctld still
                remembers them (``MinJobAge``, 300 s); otherwise only pending, running and
                completing ones, as plain ``squeue`` does.

        Returns:
            Dicts with ``job_id`` (``12`` or ``12_0``), ``array_job_id``, ``array_task_id``
            (``N/A`` outside arrays), ``state`` (``PENDING``, ``RUNNING``...), ``node`` (empty
            while pending), ``reason`` and ``name``.
        """
        fmt = "|".join(code for _, code in SQUEUE_FIELDS)
        argv = ["squeue", "-h", "-r", "-o", fmt]
        if job_id is not None:
            argv += ["-j", str(job_id)]
        if all_states:
            argv += ["-t", "all"]
        result = self.client(*argv)
        if result.returncode != 0:
            if job_id is not None and "Invalid job id" in result.stderr:
                return []
            raise SlurmClusterError(f"squeue failed ({result.returncode}): {result.stderr.strip()}")
        names = [name for name, _ in SQUEUE_FIELDS]
        return [
            dict(zip(names, line.split("|", len(names) - 1), strict=True))
            for line in result.stdout.splitlines()
            if line.strip()
        ]

    def job_state(self, job_id: str) -> str:
        """The job's state; ``GONE`` once slurmctld no longer lists it.

        An array's id gives its elements' distinct states, sorted and joined by commas.
        """
        rows = self.squeue(job_id, all_states=True)
        if not rows:
            return "GONE"
        return ",".join(sorted({row["state"] for row in rows}))

    def wait_state(self, job_id: str, states: set[str], timeout: float) -> str:
        """Poll until the job (every element of an array) is in one of ``states``; return its state.

        Parameters:
            job_id: the job (or array) to watch.
            states: e.g. ``{"RUNNING"}``. ``GONE`` matches a job no longer in the queue: one
                slurmctld has forgotten, or one in a finished state (``COMPLETED``,
                ``CANCELLED``, ``FAILED``, ``TIMEOUT``...), which is then what is returned.
            timeout: seconds.

        Raises:
            TimeoutError: not reached in time; the message has the last state seen and log tails.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows = self.squeue(job_id, all_states=True)
            seen = {row["state"] for row in rows} or {"GONE"}
            if all(s in states or ("GONE" in states and (s in FINISHED_STATES or s == "GONE")) for s in seen):
                return ",".join(sorted(seen))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} did not reach {sorted(states)} within {timeout} s: {rows}{self._log_tails()}"
                )
            time.sleep(0.1)

    def scancel(self, job_id: str, *args: str) -> None:
        """``scancel [args] job_id``, e.g. ``scancel(job, "--signal=TERM", "--full")``.

        Raises:
            SlurmClusterError: ``scancel`` failed; the message has its stderr.
        """
        self._check("scancel", *args, str(job_id))

    # -- internals --

    def _write_config(self) -> None:
        for d in (self.state_dir, self.log_dir, self.work_dir, self.dev_dir, self.spool_dir):
            d.mkdir(exist_ok=True)
        spool = self.spool_dir
        if len(str(spool / f"slurmd-{self.host}" / f"{self.host}_4294967295.4294967295")) > 100 or (
            len(str(spool)) > MAX_SPOOL_PATH
        ):
            # job steps listen on unix sockets in the spool directory (sun_path is 108 bytes)
            self._short_spool = Path(tempfile.mkdtemp(prefix="tfslurm-"))
            spool = self._short_spool
        memory_mb = 1024
        with contextlib.suppress(OSError, ValueError, IndexError):
            meminfo = Path("/proc/meminfo").read_text().splitlines()
            memory_mb = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) // 1024
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        t = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=ci",
                    "GresTypes=gpu",
                    f"SlurmctldHost={self.host}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    f"StateSaveLocation={self.state_dir}",
                    f"SlurmdSpoolDir={spool}/slurmd-%n",
                    f"SlurmctldPidFile={t}/slurmctld.pid",
                    f"SlurmdPidFile={t}/slurmd-%n.pid",
                    f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
                    f"SlurmdLogFile={self.log_dir}/slurmd.log",
                    "MpiDefault=none",
                    "ProctrackType=proctrack/cgroup",
                    "TaskPlugin=task/cgroup",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={self.log_dir}/jobcomp.txt",
                    "MailProg=/bin/true",
                    "KillWait=5",
                    "SlurmdParameters=config_overrides",
                    f"NodeName={self.host} CPUs={self.cpus} RealMemory={memory_mb}{gres} State=UNKNOWN",
                    "PartitionName=debug Default=YES Nodes=ALL MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (t / "cgroup.conf").write_text(
            "CgroupPlugin=autodetect\n"
            f"CgroupMountpoint={CGROUP_ROOT}\n"
            "ConstrainCores=no\n"
            "ConstrainRAMSpace=no\n"
            "ConstrainDevices=no\n"
        )
        lines = ["AutoDetect=off"] + [
            f"NodeName={self.host} Name=gpu File={self.dev_dir}/fakegpu{i}" for i in range(self.gpus)
        ]
        (t / "gres.conf").write_text("\n".join(lines) + "\n")

    def _make_gpu_devices(self) -> None:
        for i in range(self.gpus):
            path = self.dev_dir / f"fakegpu{i}"
            if not path.exists():
                os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(NVIDIA_MAJOR, i))

    def _start_munged(self) -> None:
        pid = next((p for p, comm in _procs() if comm == "munged"), None)
        if pid is not None:
            if _is_ours(pid):  # left behind by a crashed test run: adopt it, so stop() ends it
                self._munged_pid = pid
            return
        MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
        result = subprocess.run(
            ["runuser", "-u", "munge", "--", _which("munged") or "munged"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, ENV_MARKER: str(self.root)},
        )
        if result.returncode != 0:
            raise SlurmClusterError(f"munged did not start ({result.returncode}): {result.stderr.strip()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self._munged_pid = int(MUNGE_PID_FILE.read_text().split()[0])
            if self._munged_pid is not None and MUNGE_SOCKET.exists():
                return
            time.sleep(0.05)
        raise SlurmClusterError(f"munged started but wrote no {MUNGE_PID_FILE} / {MUNGE_SOCKET} within 10 s")

    def _start_daemons(self) -> None:
        env = {**os.environ, **self.env, ENV_MARKER: str(self.root)}
        for name in ("slurmctld", "slurmd"):
            program = _which(name) or name
            with open(self.log_dir / f"{name}.out", "wb") as out:
                proc = subprocess.Popen(
                    [program, "-D", "-f", str(self.conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env=env,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not the daemons
                )
            if name == "slurmctld":
                self._ctld = proc
            else:
                self._slurmd = proc

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in (("slurmctld", self._ctld), ("slurmd", self._slurmd)):
                if proc is not None and proc.poll() is not None:
                    raise SlurmClusterError(f"{name} exited ({proc.returncode}) at start{self._log_tails()}")
            result = self.client("sinfo", "-h", "-N", "-o", "%T")
            state = result.stdout.strip()
            if result.returncode == 0 and state == "idle":
                return
            time.sleep(0.1)
        raise SlurmClusterError(f"node not idle within {timeout} s (sinfo: {state!r}){self._log_tails()}")

    def _cancel_all(self, timeout: float) -> None:
        ids = {row["array_job_id"] for row in self.squeue()}
        if not ids:
            return
        self.client("scancel", *sorted(ids))
        deadline = time.monotonic() + timeout
        while self.squeue() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _log_tails(self, lines: int = 15) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            with contextlib.suppress(OSError):
                tail = (self.log_dir / name).read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    parts.append(f"\n--- {self.log_dir / name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "".join(parts)


def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A cluster for a module of tests; wrap it: ``pytest.fixture(scope="module", name=...)(this)``.

    Skips with ``slurm_unavailable_reason()`` where no cluster can start; stops the cluster after.
    """
    reason = slurm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


__all__ = ["SlurmCluster", "SlurmClusterError", "slurm_cluster_fixture", "slurm_unavailable_reason"]
