"""One workflow the coordinator cannot apply fails alone: the coordinator goes on with the
others, says why in the workflow's state, and does not crash on it again after a restart."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading

from support.engine import cli, start, wait_for, write_wf

from spool import Home, layout
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import load_workflow
from tuiflow.engine.coordinator import Coordinator
from tuiflow.engine.model import Definition

GOOD = "name: good\ntasks:\n  - {name: a, run: 'true'}\n  - {name: b, depends_on: [a], run: 'true'}\n"


def _with_priority(definition: Definition, priority: int) -> Definition:
    """A definition as an older tuiflow (or a hand-written record) could hold: the priority
    is outside what a queue can take, which nothing checked before it was queued."""
    tasks = [dataclasses.replace(t, priority=priority) for t in definition.tasks]
    return Definition(definition.name, tasks, params=definition.params, base_dir=definition.base_dir)


def test_a_workflow_the_coordinator_cannot_queue_fails_alone_and_stays_failed(
    tmp_path, fast_home: Home, procs
):
    client = Client(fast_home)
    bad = client.submit(_with_priority(load_workflow(str(write_wf(tmp_path, GOOD, "bad.yaml"))), 40000))
    good = client.submit(load_workflow(str(write_wf(tmp_path, GOOD, "good.yaml"))))
    coordinator = start("coordinator", home=fast_home.root, log=tmp_path / "c1.log")
    procs.append(coordinator)
    procs.append(start("worker", home=fast_home.root, log=tmp_path / "w.log"))
    run = wait_for(lambda: (r := client.run(good)).terminal and r, timeout=30, what="the good workflow")
    assert run.state == "completed"
    failed = wait_for(lambda: (r := client.run(bad)).terminal and r, timeout=30, what="the bad one to fail")
    assert failed.state == "failed" and "priority" in (failed.error or ""), failed.error
    assert coordinator.poll() is None  # it went on
    status = client.status(bad)
    assert "priority" in status["error"] and {t["state"] for t in status["tasks"]} == {"failed"}
    shown = cli("status", bad, home=fast_home.root)
    assert "error:" in shown.stdout and "priority" in shown.stdout, shown.stdout
    # A restart does not trip over it again: it is failed, and stays so.
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait(10)
    again = start("coordinator", home=fast_home.root, log=tmp_path / "c2.log")
    procs.append(again)
    third = client.submit(load_workflow(str(write_wf(tmp_path, GOOD, "third.yaml"))))
    assert wait_for(
        lambda: (r := client.run(third)).terminal and r, timeout=30, what="a later one"
    ).state == ("completed")
    assert again.poll() is None
    assert bad in client.purge()


def test_a_workflow_whose_state_cannot_be_written_is_marked_broken_and_left_alone(tmp_path, fast_home: Home):
    """Its state does not encode (here: the store refuses it, as msgpack refuses a number
    beyond 64 bits): the coordinator marks it broken with the reason, never loads it again,
    and serves the others; cancel and purge still work on it."""
    client = Client(fast_home)
    bad = client.submit(load_workflow(str(write_wf(tmp_path, GOOD, "bad.yaml"))))
    good = client.submit(load_workflow(str(write_wf(tmp_path, GOOD, "good.yaml"))))
    coord = Coordinator(fast_home, sweep_interval=0.1)
    write_run = coord.store.write_run

    def refuse(run, version, fence=None):
        if run.wf_id == bad:
            raise OverflowError("int too big to convert")
        return write_run(run, version, fence=fence)

    coord.store.write_run = refuse
    coord.acquire(wait=5)
    thread = threading.Thread(target=coord.run, kwargs={"acquire": False}, daemon=True)
    thread.start()
    try:
        procs_ = [start("worker", home=fast_home.root, log=tmp_path / "w.log")]
        try:
            run = wait_for(
                lambda: (r := client.run(good)).terminal and r, timeout=30, what="the good workflow"
            )
            assert run.state == "completed"
            why = wait_for(lambda: client.store.broken(bad), timeout=30, what="the broken marker")
            assert "cannot be written" in why and "int too big" in why
            assert thread.is_alive()
            assert "cannot be written" in client.status(bad)["error"]
            client.cancel(bad)  # works: its workers are told to stop
            assert os.path.exists(layout.cancel_marker(fast_home.root, bad))
            assert bad in client.purge()
        finally:
            for p in procs_:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
    finally:
        coord.stop()
        thread.join(30)


def test_hostile_messages_to_the_coordinator_are_dropped_and_everyone_goes_on(
    tmp_path, fast_home: Home, procs
):
    """Whoever can write the home can drop messages into the coordinator's queues: garbage,
    wrong types, events for tasks that do not exist (negative, huge, beyond 64 bits), for
    another attempt, with an output outside the home, requests for workflows that do not
    exist. Each is dropped with a logged reason; the coordinator (a real process) goes on
    and every workflow completes. (A well-formed completion of the current attempt is
    indistinguishable from a worker's: the trust model in the README says so.)"""
    client = Client(fast_home)
    victim = client.submit(load_workflow(str(write_wf(tmp_path, GOOD, "victim.yaml"))))
    clog = tmp_path / "c.log"
    procs.append(start("coordinator", home=fast_home.root, log=clog))
    wait_for(lambda: client.run(victim).state == "running", timeout=30, what="the victim to start")
    completions, control = fast_home.completions(), fast_home.control()
    shard = os.path.join(completions.root, layout.READY_DIR, "00")
    os.makedirs(shard, exist_ok=True)
    with open(os.path.join(shard, "00000-1000000000000000000-garbage.0.msg"), "wb") as f:
        f.write(b"\xc1\xc1 not msgpack")

    def event(**fields):
        return {"kind": "completed", "wf": victim, "idx": 0, "attempt": 0, "at": 1.0, **fields}

    hostile = [
        "a string",
        {"events": "not a list"},
        {"worker": "evil", "events": [42, None, {"kind": "exploded"}]},
        {"worker": "evil", "events": [event(idx=-1), event(idx=10**6), event(idx=2**64 - 1)]},
        {
            "worker": "evil",
            "events": [event(attempt=7), event(at="noon"), event(output_ref=["../../etc", 1])],
        },
        {"worker": "evil", "events": [event(wf="nosuchwf"), event(kind="failed", reason="no such kind")]},
    ]
    for payload in hostile:
        completions.put(payload)
    for payload in [
        "x",
        {"op": "cancel"},
        {"op": "cancel", "wf": "nosuchwf"},
        {"op": "explode", "wf": victim},
    ]:
        control.put(payload)
    bystander = client.submit(load_workflow(str(write_wf(tmp_path, GOOD, "bystander.yaml"))))
    procs.append(start("worker", home=fast_home.root, log=tmp_path / "w.log"))
    for wf in (victim, bystander):
        run = wait_for(lambda wf=wf: (r := client.run(wf)).terminal and r, timeout=30, what=f"workflow {wf}")
        assert run.state == "completed", run.error
        assert run.stats.get("completions_applied") == 2  # none of the forged completions counted
    assert procs[0].poll() is None
    log = clog.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "malformed" in log, log[-3000:]
