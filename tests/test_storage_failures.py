"""When the filesystem itself fails: a home on a full disk, a home mounted read-only.

Real processes on real (tmpfs) mounts: a coordinator and a worker keep running through a
full disk and finish the workflow once space returns, each failure logged as one line that
names the path and what to do; every command on a read-only home answers with one line
(or works, where it only reads), never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from support.engine import FAST_SETTINGS, cli, start, wait_for, write_wf

from spool import Home
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import load_workflow

FAN_OUT = """\
name: fill
tasks:
  - name: first
    run: echo started
  - name: part
    foreach: {range: 20}
    depends_on: [first]
    run: sleep 0.5; head -c 20000 /dev/zero | tr '\\0' x; echo
  - name: last
    depends_on: [part]
    run: echo done
"""


def _fill(mnt: Path) -> Path:
    """A file that takes every free byte of `mnt`."""
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def _one_line_errors(log: Path) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if "no space left on device" in ln]


def test_a_full_disk_pauses_the_home_and_nothing_is_lost_when_space_returns(tmp_path, tmpfs, procs):
    small_fs = tmpfs("disk", "4m")  # room for the home, until the test fills it
    home = Home.open(small_fs / "home", settings=FAST_SETTINGS)
    wf = write_wf(tmp_path, FAN_OUT)
    wf_id = Client(home).submit(load_workflow(wf))
    clog, wlog = tmp_path / "c.log", tmp_path / "w.log"
    procs.append(start("coordinator", home=home.root, log=clog))
    procs.append(start("worker", "--slots", "2", home=home.root, log=wlog))
    wait_for(lambda: Client(home).status(wf_id)["counts"].get("completed", 0) >= 2, what="tasks done")
    filler = _fill(small_fs)
    # the worker cannot write its attempts, the coordinator cannot commit: both wait, saying why
    wait_for(
        lambda: _one_line_errors(clog) and _one_line_errors(wlog), timeout=60, what="ENOSPC on both sides"
    )
    time.sleep(2)  # the disk stays full a while: both must wait, not give up
    assert all(p.poll() is None for p in procs), (clog.read_text(), wlog.read_text())
    filler.unlink()
    done = wait_for(
        lambda: Client(home).status(wf_id)["state"] in ("completed", "failed") and Client(home).status(wf_id),
        timeout=120,
        what="the workflow to finish once space returned",
    )
    logs = clog.read_text() + wlog.read_text()
    assert done["state"] == "completed", (done, logs[-3000:])
    assert "Traceback" not in logs, logs[-3000:]
    for line in _one_line_errors(clog) + _one_line_errors(wlog):
        assert str(small_fs) in line and "df -h" in line, line  # the path, and what to do
    # each task applied once, none failed for want of space: an attempt the home could not
    # take runs again (reason "storage") without spending a retry (these tasks have none)
    run = Client(home).run(wf_id)
    assert run.stats["completions_applied"] == len(run.definition.tasks) == 22, run.stats
    for view in Client(home).tasks(wf_id):
        assert view.state == "completed", view


@pytest.fixture
def readonly_home(tmp_path, tmpfs):
    """A home holding one submitted workflow, on a tmpfs then remounted read-only."""
    mnt = tmpfs("ro", "4m")
    home = Home.open(mnt / "home", settings=FAST_SETTINGS)
    wf = write_wf(tmp_path, "name: ro\ntasks:\n  - {name: a, run: 'true'}\n")
    wf_id = Client(home).submit(load_workflow(wf))
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    return home, wf, wf_id


WRITING = [
    (["submit", "{wf}"], "read-only"),
    (["cancel", "{id}"], "read-only"),
    (["purge", "--all", "--yes"], "read-only"),
    (["worker", "--burst"], "read-only"),
    (["coordinator"], "read-only"),
    (["run-local", "{wf}"], "read-only"),
]


@pytest.mark.parametrize("argv,expect", WRITING, ids=[w[0][0] for w in WRITING])
def test_a_read_only_home_is_one_line_for_every_command_that_writes(readonly_home, argv, expect):
    home, wf, wf_id = readonly_home
    args = [a.format(wf=wf, id=wf_id) for a in argv]
    r = cli(*args, home=home.root, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode not in (0, None), out
    assert "Traceback" not in out, out
    assert expect in out and home.root in out, out
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) <= 2, out  # one line (run-local may add its summary)


@pytest.mark.parametrize("argv", [["ls"], ["status", "{id}"], ["tasks", "{id}"], ["doctor"]])
def test_a_read_only_home_can_still_be_read(readonly_home, argv):
    home, _, wf_id = readonly_home
    r = cli(*[a.format(id=wf_id) for a in argv], home=home.root, timeout=60)
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode in (0, 1), out  # doctor may find the pending work without a coordinator
    if argv[0] != "doctor":
        assert r.returncode == 0 and (wf_id[:6] in out or " a " in out), out
    assert os.listdir(home.root)  # and nothing was needed to write
