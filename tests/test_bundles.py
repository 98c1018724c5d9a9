"""Bundles: a fan-out's tasks queued several to a message, and what happens to a bundle
when its worker dies, stops, or one of its tasks runs long."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from support.engine import WORKFLOWS, cli, start, wait_for, write_wf

from spool import Home, Settings
from spool.queue import QueueCounts, items_in
from tuiflow.engine.client import Client
from tuiflow.engine.coordinator import Coordinator
from tuiflow.sdk.builder import Workflow
from workers import wire as p


@pytest.mark.parametrize(
    ("n", "most", "size"),
    [(1, 16, 1), (127, 16, 1), (128, 16, 2), (1000, 16, 15), (1024, 16, 16), (100_000, 16, 16), (5000, 1, 1)],
)
def test_bundles_leave_a_message_for_each_of_64_slots(n, most, size):
    assert p.bundle_size(n, most) == size
    assert size == 1 or -(-n // size) >= p.BUNDLE_SPREAD


def fan(n: int, **fields) -> Workflow:
    wf = Workflow("fan", base_dir=str(WORKFLOWS))
    wf.task("work", call="pytasks:emit", kwargs={"value": "{{ item }}"}, foreach={"range": n}, **fields)
    return wf


def queued_after_submit(home: Home, wf: Workflow, **coordinator) -> tuple[str, list[str]]:
    wf_id = Client(home).submit(wf.compile())
    coord = Coordinator(home, **coordinator)
    coord.acquire(wait=2)
    coord.step(time.time(), force_flush=True)
    coord.lease.release()
    return wf_id, home.queue("default").ready_names()


def test_a_fan_out_is_queued_in_bundles_counted_as_tasks(fast_home):
    _, names = queued_after_submit(fast_home, fan(200))
    assert len(names) == 67  # 66 bundles of 3 and one of 2: one message each for 67 slots
    assert sorted(items_in(n) for n in names) == [2] + [3] * 66
    q = fast_home.queue("default")
    assert q.counts().ready == 200
    found, complete = q.payloads(n[26:].rsplit(".", 2)[0] for n in names)
    bundles = [p.decode_task_payload(payload) for payload in found]
    assert all(isinstance(b, p.Bundle) for b in bundles)
    members = [m for b in bundles for m in b.members]
    assert complete and sorted(m.idx for m in members) == list(range(200))
    first = next(b.members for b in bundles if b.members[0].idx == 0)
    assert [(m.task, m.attempt, m.spec["kwargs"]) for m in first] == [
        (f"work[{i}]", 0, {"value": i}) for i in range(3)
    ]


@pytest.mark.parametrize(
    ("fields", "coordinator"), [({"gpus": 1}, {}), ({}, {"bundle_max": 1})], ids=["gpu-tasks", "bundle-max-1"]
)
def test_gpu_tasks_and_bundle_max_1_queue_every_task_alone(fast_home, fields, coordinator):
    _, names = queued_after_submit(fast_home, fan(200, **fields), **coordinator)
    assert len(names) == 200 and all(items_in(n) == 1 for n in names)


def test_ready_repair_finds_tasks_inside_bundles_and_requeues_a_lost_bundle(fast_home):
    home = fast_home
    Client(home).submit(fan(200).compile())
    coord = Coordinator(home, sweep_interval=0.05, repair_after=0.2)
    coord.acquire(wait=2)
    t = threading.Thread(target=coord.run, kwargs={"acquire": False}, daemon=True)
    t.start()
    try:
        q = home.queue("default")
        wait_for(lambda: q.counts().ready == 200, what="the fan-out to be queued")
        time.sleep(1.0)  # several repair rounds, each past repair_after
        assert coord.repair.repaired == 0  # every ready task's message is inside a bundle
        lost = next(n for n in q.ready_names() if items_in(n) == 3)
        for d in q._ready:
            Path(d, lost).unlink(missing_ok=True)
        wait_for(lambda: coord.repair.repaired == 3, timeout=30, what="ready-repair of the lost bundle")
        # counted as repaired when decided; the three messages land right after
        wait_for(lambda: q.counts().ready == 200, timeout=10, what="the repaired tasks queued")
        assert len(q.ready_names()) == 66 + 3  # the lost bundle's tasks come back alone
    finally:
        coord.stop()
        t.join(30)


class SlowFan:
    """A coordinator and one worker (1 slot) serving 128 python tasks, queued as 64
    bundles of two; work[0]'s first attempt sleeps `seconds` and notes its start in
    `marker`. The worker holds the bundle it claims for `hold` seconds."""

    def __init__(self, home: Home, tmp_path: Path, procs: list, seconds: float, worker: str, hold: float):
        self.home, self.tmp = home, tmp_path
        self.marker = tmp_path / "slow.txt"
        (tmp_path / "pytasks.py").write_text((WORKFLOWS / "pytasks.py").read_text())
        wf = write_wf(
            tmp_path,
            f"""
            name: slow-fan
            tasks:
              - name: work
                foreach: {{range: 128}}
                call: "pytasks:slow_first"
                kwargs: {{i: "{{{{ item }}}}", seconds: {seconds}, marker: "{self.marker}"}}
                num_retries: 1
            """,
        )
        procs.append(start("coordinator", home=home.root, log=tmp_path / "c.log"))
        self.worker = self.start_worker(procs, worker, "--bundle-hold", hold)
        self.wf_id = cli("submit", wf, home=home.root).stdout.strip()
        self.client = Client(home)
        self.queue = home.queue("default")

    def start_worker(self, procs: list, worker: str, *args: object):
        proc = start("worker", "--id", worker, *args, home=self.home.root, log=self.tmp / f"{worker}.log")
        procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def first_running(self) -> None:
        wait_for(lambda: self.client.status(self.wf_id)["counts"]["running"] == 1, what="work[0] to run")

    def end(self) -> dict:
        status = wait_for(
            lambda: (s := self.client.status(self.wf_id))["state"] in ("completed", "failed") and s,
            timeout=90,
            what="the end",
        )
        assert status["state"] == "completed", self.log("c")[-2000:]
        return status

    def queued_alone(self, idx: int, attempt: int = 0) -> bool:
        return any(n.endswith(f"-{self.wf_id}~{idx}~{attempt}.0.msg") for n in self.queue.all_names())


def test_worker_killed_holding_a_bundle_loses_no_task_and_runs_none_twice(fast_home, tmp_path, procs):
    fan = SlowFan(fast_home, tmp_path, procs, 61.37, "doomed", hold=600)
    fan.first_running()
    # work[0] runs; work[1], its bundle mate, waits in the worker, which holds the bundle
    [held] = fan.queue.claimed()["doomed"]
    assert held.endswith(f"-{fan.wf_id}~0~0+2.0.msg")
    fan.worker.send_signal(signal.SIGKILL)
    fan.worker.wait()
    fan.start_worker(procs, "rescuer")
    status = fan.end()
    tasks = {t["name"]: t for t in status["tasks"]}
    # the task that was running is retried (its attempt was lost with the worker)...
    assert tasks["work[0]"]["attempt"] == 1 and tasks["work[0]"]["worker"] == "rescuer"
    # ...the one that never started goes back as it was: same attempt, no failure counted
    assert tasks["work[1]"]["attempt"] == 0 and tasks["work[1]"]["worker"] == "rescuer"
    assert all(t["output"] == {"i": int(n[5:-1])} for n, t in tasks.items())
    assert status["stats"]["completions_applied"] == 128  # every task applied exactly once
    assert fan.marker.read_text().count("started") == 1
    assert "worker doomed is dead" in fan.log("c")
    assert fan.queue.counts().claimed == {}


def test_a_long_task_gives_back_the_rest_of_its_bundle(fast_home, tmp_path, procs):
    fan = SlowFan(fast_home, tmp_path, procs, 5.0, "first", hold=0.3)
    # work[0] runs long: its bundle mate goes back to the queue alone, for another worker
    wait_for(lambda: fan.queued_alone(1), timeout=10, what="work[1] given back")
    fan.start_worker(procs, "second")
    status = fan.end()
    tasks = {t["name"]: t for t in status["tasks"]}
    assert tasks["work[0]"]["attempt"] == 0 and tasks["work[0]"]["worker"] == "first"
    assert tasks["work[1]"]["attempt"] == 0 and tasks["work[1]"]["worker"] == "second"
    assert status["stats"]["completions_applied"] == 128
    assert "gave back 1 bundled task(s): a task of its bundle runs long" in fan.log("first")
    assert fan.queue.counts().claimed == {}


def test_a_stopped_worker_puts_its_unstarted_bundled_tasks_back(fast_home, tmp_path, procs):
    fan = SlowFan(fast_home, tmp_path, procs, 61.37, "stopper", hold=600)
    wait_for(lambda: fan.marker.exists() and fan.marker.read_text(), what="work[0] to start")
    fan.worker.send_signal(signal.SIGINT)  # hard stop: the running task is stopped, the waiting one goes back
    assert fan.worker.wait(30) == 0
    assert fan.queue.claimed() == {}  # the bundle was acked: nothing of it is held any more
    assert fan.queued_alone(1)
    work0 = wait_for(
        lambda: (t := fan.client.status(fan.wf_id)["tasks"][0])["attempt"] == 1 and t,
        what="work[0] queued again",
    )
    assert work0["state"] == "ready" and work0["reason"] == "attempt 0: worker stopper stopped"
    counts = fan.queue.counts()
    assert counts.ready + counts.delayed == 128  # 126 in bundles, work[1] alone, work[0]'s next attempt
    assert fan.client.status(fan.wf_id)["tasks"][1]["state"] == "ready"


def test_a_bundle_too_large_for_a_message_is_queued_task_by_task(tmp_path):
    home = Home.open(
        tmp_path / "home", settings=Settings(max_message_bytes=500)
    )  # a task fits (~300 B), not two
    wf_id, names = queued_after_submit(home, fan(200))
    assert len(names) == 200 and all(items_in(n) == 1 for n in names)
    assert Client(home).status(wf_id)["counts"]["ready"] == 200


def test_bundled_tasks_of_a_cancelled_workflow_are_dropped_unrun(fast_home, tmp_path, procs):
    fan = SlowFan(fast_home, tmp_path, procs, 61.37, "canceller", hold=600)
    fan.first_running()
    assert cli("cancel", fan.wf_id, home=fast_home.root).returncode == 0
    status = wait_for(
        lambda: (s := fan.client.status(fan.wf_id))["counts"]["running"] == 0 and s,
        timeout=30,
        what="the cancel",
    )
    assert status["state"] == "cancelled" and status["counts"]["cancelled"] == 128
    # the worker takes the remaining bundles and acks them without running anything
    wait_for(lambda: fan.queue.counts() == QueueCounts(0, 0, {}, 0), timeout=30, what="the queue to empty")
    # nothing but work[0] ever ran: every other attempt's trace is the coordinator's one span
    # for a task cancelled while queued (a worker would have written its own spans beside it)
    for i in range(1, 128):
        spans = (
            Path(fast_home.workflows_dir)
            / fan.wf_id
            / "tasks"
            / f"work%5B{i}%5D"
            / "0"
            / "logs"
            / "spans.jsonl"
        )
        [span] = [json.loads(line) for line in spans.read_text().splitlines()]
        assert span["status"]["description"] == "workflow cancelled while queued"
    assert fan.marker.read_text().count("started") == 1
