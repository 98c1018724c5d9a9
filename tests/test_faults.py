"""The engine under the faults of issue 10: workers that die of an exception, clocks that
disagree, lost NFS replies and ESTALE, and what `doctor` says afterwards."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from support.engine import EXAMPLES, FAST_SETTINGS, ROOT, cli, start, wait_for, write_wf

from spool import Home
from tuiflow.engine.client import Client
from tuiflow.engine.coordinator import Coordinator


@pytest.fixture
def coordinator(fast_home):
    """A coordinator serving `fast_home` on a thread of this process."""
    coord = Coordinator(fast_home, sweep_interval=0.2)
    coord.acquire(wait=5)
    thread = threading.Thread(target=coord.run, kwargs={"acquire": False}, daemon=True)
    thread.start()
    yield coord
    coord.stop()
    thread.join(30)


def test_a_worker_that_dies_of_an_exception_mid_task_loses_nothing(
    tmp_path, fast_home: Home, coordinator, actors, procs
):
    """Its heartbeat is left to expire (only a clean exit removes it), so the coordinator
    declares it dead, retries the attempt it ran, and another worker completes it."""
    wf = write_wf(
        tmp_path, 'name: one\ntasks:\n  - {name: t, run: "sleep 0.3; echo ran >> ran.txt", num_retries: 2}\n'
    )
    client = Client(fast_home)
    wf_id = client.submit_file(str(wf))
    crashing = actors("crashing-worker", fast_home.root, "crasher")
    crashing.expect("crashing", timeout=30)
    assert crashing.wait(30) != 0  # the exception ended the process
    assert (tmp_path / "home" / "workers" / "crasher.hb").exists()
    procs.append(start("worker", "--id", "rescuer", home=fast_home.root, log=tmp_path / "rescuer.log"))
    run = wait_for(lambda: (r := client.run(wf_id)).terminal and r, timeout=30, what="the workflow to end")
    t = client.tasks(wf_id)[0]
    assert (run.state, t.state, t.worker) == ("completed", "completed", "rescuer")
    assert (tmp_path / "ran.txt").read_text() == "ran\nran\n"  # it ran on both
    assert not fast_home.queue("default").claimed()  # nothing left claimed by the dead worker
    wait_for((tmp_path / "home" / "workers" / "crasher.dead").exists, what="crasher.dead")
    procs[-1].send_signal(signal.SIGTERM)
    procs[-1].wait(30)
    # Handled: the dead worker holds nothing any more, so doctor has nothing to report.
    report = client.doctor()
    assert report["problems"] == [] and report["ok"], report["problems"]
    assert {w["id"]: w["dead"] for w in report["workers"]} == {"crasher": True}


FAKETIME = shutil.which("faketime")


@pytest.mark.skipif(FAKETIME is None, reason="faketime is not installed (Debian package faketime)")
@pytest.mark.parametrize("offset", ["+5m", "-5m"])
def test_a_worker_whose_clock_is_five_minutes_off(tmp_path, fast_home: Home, coordinator, offset):
    """A retry waits out its backoff however wrong the promoting worker's clock is, and the
    times shown to users are true: each duration is taken on one host's clock."""
    wf = write_wf(
        tmp_path,
        f"""
        name: skewed
        tasks:
          - name: flaky
            run: 'touch "{tmp_path}/attempt-$TUIFLOW_ATTEMPT"; test "$TUIFLOW_ATTEMPT" -ge 1'
            num_retries: 1
            retry_backoff: 2
          - {{name: quick, run: "sleep 0.02"}}
          - {{name: slow, run: "sleep 0.6"}}
        """,
    )
    client = Client(fast_home)
    wf_id = client.submit_file(str(wf))
    log = tmp_path / "worker.log"
    with open(log, "w") as f:
        # faketime runs the worker as a child of its own: a session of their own lets the
        # end of the test stop both
        worker = subprocess.Popen(
            [FAKETIME, "-f", offset, sys.executable, "-m", "tuiflow", "worker", "--slots", "3",
             "--home", str(fast_home.root)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: client.run(wf_id).terminal, timeout=30, what=f"the workflow to end (log: {log})")
        first, second = (os.stat(tmp_path / f"attempt-{n}").st_mtime for n in (0, 1))
        assert 2.0 <= second - first < 3.5  # the file server's clock, not the worker's
        views = {t.name: t for t in client.tasks(wf_id)}
        assert views["flaky"].state == "completed" and views["flaky"].attempt == 1
        for name, runs in (("quick", 0.02), ("slow", 0.6)):
            v = views[name]
            assert runs <= v.ran_for < runs + 0.5, (name, v.ran_for)
            assert 0 <= v.queued_for < 2.0, (name, v.queued_for)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)


def _ran(path) -> collections.Counter:
    return collections.Counter(path.read_text().split()) if path.exists() else collections.Counter()


@pytest.mark.fuse
@pytest.mark.slow
def test_a_coordinator_stopped_past_its_lease_never_writes_again(tmp_path, nfs_mounts, procs):
    """Split brain after SIGSTOP/SIGCONT (issue 10, defect 1), with real processes on two
    NFS-like clients: coordinator A (client 0) is stopped past lease_ttl in the middle of a
    fan-out, B (client 1) takes over and renews twice, A resumes. A's file system calls
    after SIGCONT are audited by the mount: A renames nothing (no state write, no claim, no
    queued task), says it was deposed and exits; B finishes; no task runs twice."""
    fs = nfs_mounts(clients=2, latency_ms=1, audit=True)
    home_a, home_b = fs.mounts[0] / "home", fs.mounts[1] / "home"
    Home.open(home_a, settings=FAST_SETTINGS)
    runs = tmp_path / "runs.txt"
    log = f'echo "$TUIFLOW_TASK" >> {runs}'
    wf = write_wf(
        tmp_path,
        f"""
        name: paused
        tasks:
          - {{name: root, run: '{log}'}}
          - {{name: work, depends_on: [root], foreach: {{range: 300}}, run: '{log}'}}
          - {{name: join, depends_on: [work], run: '{log}'}}
          - {{name: after, depends_on: [join], run: '{log}'}}
        """,
    )
    a = start("coordinator", home=home_a, log=tmp_path / "a.log")
    procs.append(a)
    for k in range(2):
        procs.append(start("worker", "--slots", "3", home=home_b, log=tmp_path / f"w{k}.log"))
    wf_id = Client(Home.open(home_a)).submit_file(str(wf))
    client = Client(Home.open(home_b))
    wait_for(lambda: sum(_ran(runs).values()) >= 60, timeout=60, what="the fan-out to get going")
    a.send_signal(signal.SIGSTOP)
    b = start("coordinator", "--wait", home=home_b, log=tmp_path / "b.log")
    procs.append(b)
    lease = Home.open(home_b).lease("observer")
    b_id = f"coordinator-{socket.gethostname()}-{b.pid}"
    wait_for(
        lambda: (i := lease.inspect()) is not None and i.holder == b_id and i.renewals >= 2,
        timeout=30,
        what="B to take over the lease and renew it twice",
    )
    resumed = time.time_ns()
    a.send_signal(signal.SIGCONT)
    time.sleep(2)  # four renewal intervals: time enough to do harm, or to notice
    # A may finish what it was stopped in the middle of, up to its fence: create a lock
    # marker or a temporary file, and remove them (an unlink of a file it holds open is a
    # rename to .fuse_hidden* on FUSE). It may append to the lease's log. Nothing else.
    after = [r for r in fs.audit(0) if r.tgid == a.pid and r.time_ns > resumed]
    hidden = [r for r in after if r.op == "rename" and r.paths[-1].split("/")[-1].startswith(".fuse_hidden")]
    assert not [r for r in after if r.op == "rename" and r not in hidden], after
    assert not [r for r in after if r.op == "link" and not r.paths[-1].startswith("/home/coordinator/")], (
        after
    )
    assert a.wait(30) != 0
    assert "taken over" in (tmp_path / "a.log").read_text()
    events = [json.loads(line) for line in (home_b / "coordinator" / "lease.log").read_text().splitlines()]
    a_id = f"coordinator-{socket.gethostname()}-{a.pid}"
    assert [e["event"] for e in events if e["by"].startswith(f"{a_id} ")] == ["deposed"]
    run = wait_for(
        lambda: (r := client.run(wf_id)).terminal and r, timeout=90, what="B to finish the workflow"
    )
    assert run.state == "completed"
    info = lease.inspect()
    assert info.holder == b_id
    ran = _ran(runs)
    assert len(ran) == 303 and set(ran.values()) == {1}, [t for t, n in ran.items() if n > 1]


@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "code", "expect"),
    [
        ("diamond.yaml", 1, {"completed": 4, "failed": 1, "skipped": 1, "upstream_failed": 1}),
        ("ml-pipeline.yaml", 0, {"completed": 11}),
        ("fanout.yaml", 0, {"completed": 1002}),
    ],
)
def test_examples_on_a_faulty_nfs_mount(tmp_path, nfs_mounts, example, code, expect):
    """run-local on a mount that loses 5 % of rename and link replies, makes ~4 % of opens
    stale, and caches negative lookups for 0.2 s: the same results as on a local disk."""
    fs = nfs_mounts(lost_reply=0.05, estale=0.2, negative_cache=0.2, latency_ms=1, faults_off=True)
    home = fs.mount / "home"
    Home.open(home)
    fs.faults_on()
    r = cli("run-local", EXAMPLES / example, "--workers", 2, "--json", home=home, timeout=240)
    assert r.returncode == code, r.stderr[-3000:]
    status = json.loads(r.stdout)
    assert {k: v for k, v in status["counts"].items() if v} == expect, status["tasks"]
    assert status["stats"]["completions_applied"] == expect["completed"]
    fs.faults_off()
    assert not Client(Home.open(home)).doctor()["problems"]


def test_doctor_reports_only_live_problems(fast_home: Home):
    """After a run in which the coordinator already handled a dead worker (its record is
    `.dead`, it holds nothing) and which left no work, there is nothing to fix. A dead
    worker that still holds claimed messages is a problem; so is unfinished work with no
    coordinator."""
    from spool import HeartbeatWriter

    client = Client(fast_home)
    HeartbeatWriter(fast_home.workers_dir, "handled").beat({"queues": ["default"]})
    os.replace(f"{fast_home.workers_dir}/handled.hb", f"{fast_home.workers_dir}/handled.dead")
    fast_home.queue("default")
    report = client.doctor()
    assert report["problems"] == [], report["problems"]
    q = fast_home.queue("default")
    q.put({"v": 1})
    q.claim("stuck", 1)
    HeartbeatWriter(fast_home.workers_dir, "stuck").beat({"queues": ["default"]})
    os.replace(f"{fast_home.workers_dir}/stuck.hb", f"{fast_home.workers_dir}/stuck.dead")
    problems = client.doctor()["problems"]
    assert any("worker stuck" in p and "still holds work" in p for p in problems), problems
    assert any("no coordinator holds the lease" in p for p in problems), problems
    assert not any("handled" in p for p in problems), problems
