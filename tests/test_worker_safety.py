"""A worker among careless or hostile colleagues (issue 12), with real processes: a
coordinator and a worker daemon serving a home in which someone planted links, FIFOs, hard
links and malformed messages, tasks that flood their logs or return what the home's
messages cannot carry, and a hostile umask.

Each test asserts the worker refuses what it must (the attempt fails with a reason naming
the path), touches nothing outside the home (a victim file keeps its content and mtime),
and goes on: the other tasks of the workflow, and other workflows, complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.engine import FAST_SETTINGS, ROOT, start, wait_for, write_wf

from spool import Home, layout
from tuiflow.engine.client import Client

TASKS_PY = """
import sys


def value():
    return {"v": 1}


def huge():
    return {"x": 123456789012345678901234567890}


def flood(n):
    for i in range(1, n + 1):
        print(i)
        print(i, file=sys.stderr)
"""


class Victim:
    """A file outside the home that no worker may write: its content and mtime are kept."""

    def __init__(self, path: Path, content: bytes = b"precious: do not touch\n"):
        self.path = path
        path.write_bytes(content)
        past = time.time() - 3600  # an hour ago: any write would move it
        os.utime(path, (past, past))
        self.content = content
        self.mtime = path.stat().st_mtime_ns

    def untouched(self) -> bool:
        return self.path.read_bytes() == self.content and self.path.stat().st_mtime_ns == self.mtime


class Engine:
    """A home served by a real coordinator process, and workers started on demand."""

    def __init__(self, tmp_path: Path, procs: list, **settings):
        self.tmp = tmp_path
        self.procs = procs
        self.home = Home.open(tmp_path / "home", settings=dataclasses.replace(FAST_SETTINGS, **settings))
        self.client = Client(self.home)
        (tmp_path / "safety_tasks.py").write_text(TASKS_PY)
        self.procs.append(start("coordinator", home=self.home.root, log=tmp_path / "coordinator.log"))

    def submit(self, text: str, name: str = "wf.yaml") -> str:
        return self.client.submit_file(str(write_wf(self.tmp, text, name)))

    def worker(self, wid: str = "w1", *args: object, umask: int | None = None) -> subprocess.Popen:
        log = self.tmp / f"{wid}.log"
        if umask is None:
            p = start("worker", "--id", wid, *args, home=self.home.root, log=log)
        else:
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tuiflow",
                    "worker",
                    "--id",
                    wid,
                    *map(str, args),
                    "--home",
                    self.home.root,
                ],
                stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                umask=umask,
            )
        self.procs.append(p)
        return p

    def log(self, wid: str = "w1") -> str:
        return (self.tmp / f"{wid}.log").read_text()

    def attempt_dir(self, wf: str, task: str, attempt: int = 0) -> Path:
        return Path(layout.attempt_dir(self.home.root, wf, task, attempt))

    def finish(self, wf: str, timeout: float = 60) -> dict:
        """Wait for `wf` to end; its tasks by name."""
        wait_for(lambda: self.client.run(wf).terminal, timeout=timeout, what=f"workflow {wf} to end")
        return {t.name: t for t in self.client.tasks(wf)}


@pytest.fixture
def engine(tmp_path, procs):
    return Engine(tmp_path, procs)


def _plant_dir(engine: Engine, wf: str, task: str) -> Path:
    d = engine.attempt_dir(wf, task)
    (d / layout.LOGS_DIR).mkdir(parents=True)
    return d


def refused(t, path: Path, what: str = "symbolic link") -> None:
    assert t.state == "failed", (t.name, t.state, t.reason)
    assert str(path) in (t.reason or "") and what in t.reason, t.reason


# ------------------------------------------------------------------ (a) links
def test_planted_symlinks_are_refused_and_nothing_outside_the_home_is_touched(engine, tmp_path):
    """Links where a task's directory, an attempt's directory, its stdout.log or its
    logs/spans.jsonl will be: each attempt fails naming the link, the files and directory
    they point to are untouched, and the workflow's other tasks complete on the same worker."""
    victims = {name: Victim(tmp_path / f"victim-{name}.txt") for name in ("stdout", "spans")}
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    wf = engine.submit(
        """
        name: planted
        tasks:
          - {name: tasklink, run: 'echo into-task-link'}
          - {name: attemptlink, run: 'echo into-attempt-link'}
          - {name: stdoutlink, run: 'echo into-stdout-link'}
          - {name: spanslink, run: 'echo into-spans-link'}
          - {name: fine, run: 'echo fine'}
          - {name: after, depends_on: [fine], run: 'echo after'}
        """
    )
    tasks = Path(layout.tasks_dir(layout.workflow_dir(engine.home.root, wf)))
    tasks.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, tasks / "tasklink")
    (tasks / "attemptlink").mkdir()
    os.symlink(outside, tasks / "attemptlink" / "0")
    d = _plant_dir(engine, wf, "stdoutlink")
    os.symlink(victims["stdout"].path, d / layout.STDOUT_FILE)
    d = _plant_dir(engine, wf, "spanslink")
    os.symlink(victims["spans"].path, d / layout.LOGS_DIR / layout.SPANS_FILE)
    worker = engine.worker()
    got = engine.finish(wf)
    refused(got["tasklink"], tasks / "tasklink")
    refused(got["attemptlink"], tasks / "attemptlink" / "0")
    refused(got["stdoutlink"], engine.attempt_dir(wf, "stdoutlink") / layout.STDOUT_FILE)
    refused(got["spanslink"], engine.attempt_dir(wf, "spanslink") / layout.LOGS_DIR / layout.SPANS_FILE)
    assert all(t.reason.startswith("refused") for n, t in got.items() if t.state == "failed")
    assert (got["fine"].state, got["after"].state) == ("completed", "completed")
    assert all(v.untouched() for v in victims.values())
    assert os.listdir(outside) == []  # nothing made in the directory the links point to
    assert worker.poll() is None  # still serving
    assert "refused" in engine.log() and "symbolic link" in engine.log()


def test_a_planted_output_link_is_never_written_or_read(engine, tmp_path):
    """output.json as a link: a python task's return value is written into the home, not
    through the link (the link was planted before the attempt: it is removed, never
    followed); a link that appears while the task runs (here: made by the task, as a
    colleague racing it would) is refused rather than read as the task's output."""
    secret = Victim(tmp_path / "secret.json", b'{"secret": 42}\n')
    clobber = Victim(tmp_path / "clobber.txt")
    wf = engine.submit(
        f"""
        name: outputs
        tasks:
          - {{name: pyvalue, call: "safety_tasks:value"}}
          - {{name: swapped, run: 'ln -s {secret.path} "$TUIFLOW_OUTPUT"'}}
          - {{name: fine, run: 'echo fine'}}
        """
    )
    d = _plant_dir(engine, wf, "pyvalue")
    os.symlink(clobber.path, d / layout.OUTPUT_FILE)
    engine.worker()
    got = engine.finish(wf)
    assert (got["pyvalue"].state, got["pyvalue"].output) == ("completed", {"v": 1})
    out = d / layout.OUTPUT_FILE
    assert not out.is_symlink() and json.loads(out.read_text()) == {"v": 1}
    refused(got["swapped"], engine.attempt_dir(wf, "swapped") / layout.OUTPUT_FILE)
    assert got["swapped"].output is None  # the secret did not become its output
    assert got["fine"].state == "completed"
    assert secret.untouched() and clobber.untouched()


# ------------------------------------------------------------------ (b) FIFO
def test_a_fifo_planted_at_stdout_does_not_hang_the_worker(engine, tmp_path):
    """Opening a FIFO for writing blocks until someone reads it: a worker that did so would
    hang its slot forever. It is refused at once, and the worker serves the next task."""
    wf = engine.submit(
        """
        name: fifo
        tasks:
          - {name: piped, run: 'echo into-fifo'}
          - {name: pyped, call: "safety_tasks:flood", kwargs: {n: 3}}
          - {name: fine, run: 'echo fine'}
        """
    )
    for task in ("piped", "pyped"):
        d = _plant_dir(engine, wf, task)
        os.mkfifo(d / layout.STDOUT_FILE)
    worker = engine.worker()
    got = engine.finish(wf, timeout=30)
    refused(got["piped"], engine.attempt_dir(wf, "piped") / layout.STDOUT_FILE, "not a regular file")
    refused(got["pyped"], engine.attempt_dir(wf, "pyped") / layout.STDOUT_FILE, "not a regular file")
    assert got["fine"].state == "completed"
    assert worker.poll() is None


# ------------------------------------------------------------------ (c) hard link
def test_a_hard_link_to_an_outside_file_is_refused(engine, tmp_path):
    """A hard link cannot be told from the file by its name: the worker refuses a log with a
    second link (the other may be anyone's file), and never appends to it."""
    victim = Victim(tmp_path / "victim.txt")
    wf = engine.submit(
        """
        name: hardlink
        tasks:
          - {name: linked, run: 'echo into-hard-link'}
          - {name: fine, run: 'echo fine'}
        """
    )
    d = _plant_dir(engine, wf, "linked")
    os.link(victim.path, d / layout.STDERR_FILE)
    engine.worker()
    got = engine.finish(wf)
    refused(got["linked"], d / layout.STDERR_FILE, "hard links")
    assert got["fine"].state == "completed"
    assert victim.untouched() and victim.path.stat().st_nlink == 2


# ------------------------------------------------------------------ (d) bounded logs
CAP = 64 << 10
LINES = 200_000  # `seq 1 200000`: 1,288,895 bytes, twenty times the cap


def _check_capped(path: Path, name: str, total: int) -> None:
    data = path.read_bytes()
    assert len(data) <= CAP + 200, len(data)
    head, note, tail = data.partition(b"\n[tuiflow: ")
    assert head.startswith(b"1\n2\n3\n") and tail.endswith(b"\n199999\n200000\n")
    note, _, tail = tail.partition(b"\n")
    assert f" of {name} dropped here (max_log_bytes {CAP:,}".encode() in note, note
    dropped = int(note.split(b" ", 1)[0].replace(b",", b""))
    assert dropped == total - len(head) - 1 - len(tail), (dropped, total, len(head), len(tail))
    assert len(head) + len(tail) >= CAP - 16  # the cap is used, not wasted


def test_stdout_and_stderr_are_capped_keeping_head_and_tail(tmp_path, procs):
    """With max_log_bytes = 64 KiB, a task printing 1.2 MB to each stream leaves logs of at
    most the cap (plus a one-line note), with the first and the last lines it printed and
    the number of bytes dropped, for the shell and the python executor alike."""
    engine = Engine(tmp_path, procs, max_log_bytes=CAP)
    wf = engine.submit(
        f"""
        name: flood
        tasks:
          - {{name: sh, run: 'seq 1 {LINES}; seq 1 {LINES} >&2'}}
          - {{name: py, call: "safety_tasks:flood", kwargs: {{n: {LINES}}}}}
          - {{name: small, run: 'echo small'}}
        """
    )
    engine.worker()
    got = engine.finish(wf)
    assert all(t.state == "completed" for t in got.values()), got
    total = sum(len(f"{i}\n") for i in range(1, LINES + 1))
    for task in ("sh", "py"):
        d = engine.attempt_dir(wf, task)
        for name in (layout.STDOUT_FILE, layout.STDERR_FILE):
            _check_capped(d / name, name, total)
    assert (engine.attempt_dir(wf, "small") / layout.STDOUT_FILE).read_bytes() == b"small\n"  # no note


# ------------------------------------------------------------------ (e) outputs
def test_an_output_the_home_cannot_carry_fails_its_attempt_and_nothing_else(engine):
    """An integer beyond 64 bits (valid JSON, but not msgpack), from a shell task's output
    file or a python task's return value, and an output file of invalid JSON: each fails
    its attempt with a reason; the worker, the coordinator and another workflow go on."""
    wf = engine.submit(
        """
        name: outputs
        tasks:
          - {name: shbig, run: 'echo "{\\"x\\": 123456789012345678901234567890}" > "$TUIFLOW_OUTPUT"'}
          - {name: pybig, call: "safety_tasks:huge"}
          - {name: garbage, run: 'printf "{oops" > "$TUIFLOW_OUTPUT"'}
          - {name: fine, run: 'echo 7 > "$TUIFLOW_OUTPUT"'}
        """
    )
    worker = engine.worker()
    got = engine.finish(wf)
    for task in ("shbig", "pybig"):
        assert got[task].state == "failed" and "beyond 64 bits" in got[task].reason, got[task].reason
        assert str(engine.attempt_dir(wf, task) / layout.OUTPUT_FILE) in got[task].reason
    assert got["garbage"].state == "failed" and "is not valid JSON" in got["garbage"].reason
    assert (got["fine"].state, got["fine"].output) == ("completed", 7)
    other = engine.submit(
        "name: other\ntasks:\n  - {name: t, run: 'echo 1 > \"$TUIFLOW_OUTPUT\"'}\n", "o.yaml"
    )
    assert engine.finish(other)["t"].output == 1
    assert worker.poll() is None and procs_alive(engine)


def procs_alive(engine: Engine) -> bool:
    return all(p.poll() is None for p in engine.procs)


# ------------------------------------------------------------------ (f) malformed messages
def test_malformed_task_messages_are_quarantined_and_the_worker_goes_on(engine):
    """Garbage bytes, and valid msgpack that is not a task message (no idx, wrong types),
    dropped into the queue: each is moved to the queue's dead/ with its reason (the
    worker logs the ones it decoded), and the worker serves the valid work."""
    q = engine.home.queue("default")
    garbage = q.put({"placeholder": True})
    path = next(Path(q.root).glob(f"ready/*/{garbage}"))
    path.write_bytes(b"\xc1\xff\x00 not msgpack at all")
    q.put({"v": 1, "wf": "ghost", "task": "t", "attempt": 0, "spec": {}})  # no idx
    q.put({"v": 1, "wf": "ghost", "idx": "zero", "task": 5, "attempt": 0, "spec": {}})
    q.put([1, 2, 3])
    worker = engine.worker()
    wf = engine.submit("name: valid\ntasks:\n  - {name: t, run: 'echo ok'}\n")
    assert engine.finish(wf)["t"].state == "completed"
    dead = wait_for(lambda: len(d := q.dead()) == 4 and d, timeout=10, what="four dead messages")
    reasons = sorted(m.reason for m in dead)
    assert any("undecodable msgpack" in r for r in reasons), reasons
    assert any("idx" in r for r in reasons), reasons
    assert worker.poll() is None
    assert engine.log().count("moved to") == 4, engine.log()  # each logged with its reason
    assert not q.claimed()  # nothing left held


# ------------------------------------------------------------------ (g) modes
def test_what_the_worker_creates_has_the_homes_modes_at_umask_000(engine):
    """A worker started under umask 000 still creates its attempt directories (0700) and
    files (0600) in a private home: nothing it makes is world- or group-writable."""
    wf = engine.submit(
        """
        name: modes
        tasks:
          - {name: sh, run: 'echo out; echo err >&2; echo 1 > "$TUIFLOW_OUTPUT"'}
          - {name: py, depends_on: [sh], call: "safety_tasks:flood", kwargs: {n: 2}}
          - {name: pyv, depends_on: [sh], call: "safety_tasks:value"}
        """
    )
    engine.worker(umask=0)
    got = engine.finish(wf)
    assert all(t.state == "completed" for t in got.values()), got
    seen = []
    for task in ("sh", "py", "pyv"):
        d = engine.attempt_dir(wf, task)
        for p in [d.parent, d, *d.rglob("*")]:
            mode = stat.S_IMODE(p.lstat().st_mode)
            seen.append(p.name)
            assert mode == (0o700 if p.is_dir() else 0o600), f"{p}: {oct(mode)}"
    assert {"stdout.log", "stderr.log", "output.json", "spans.jsonl", "inputs.json"} <= set(seen), seen
