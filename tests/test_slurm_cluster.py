"""Workers launched by `tuiflow slurm` on a real single-node Slurm cluster (slurmctld,
slurmd and munged started by the fixture, two fake GPU devices so that ``--gres=gpu:1``
sets ``CUDA_VISIBLE_DEVICES``): the GPU each task saw, a worker job cancelled mid-task
losing nothing, a job reaching its time limit draining first, idle workers exiting. Skipped,
with the reason, where no cluster can start (not root, Slurm or MUNGE not installed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.engine import ROOT, cli, wait_for, write_wf
from support.slurm import SlurmCluster, slurm_cluster_fixture

from spool import Home
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import load_workflow

slurm = pytest.fixture(scope="module", name="slurm")(slurm_cluster_fixture)

REPORT = """echo "{\\"gpu\\": \\"$CUDA_VISIBLE_DEVICES\\", \\"worker\\": \\"$TUIFLOW_WORKER\\"}" > "$TUIFLOW_OUTPUT"; sleep SLEEP"""


@pytest.fixture
def home(tmp_path, procs) -> Home:
    """A home with its coordinator running (on this machine, as on a login node)."""
    h = Home.open(tmp_path / "home")
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "tuiflow", "coordinator", "--home", h.root],
            cwd=ROOT,
            stdout=open(tmp_path / "coordinator.log", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
    )
    return h


def _submit(home: Home, tmp_path: Path, tasks: str) -> str:
    return Client(home).submit(load_workflow(write_wf(tmp_path, f"name: slurm\ntasks:\n{tasks}")))


def _launch(slurm: SlurmCluster, home: Home, *args: object) -> str:
    """`tuiflow slurm ...` against the test cluster; the job id it printed."""
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "slurm", "--home", home.root, *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **slurm.env}, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.split("submitted job ")[1].split()[0]


def _job_logs(home: Home) -> str:
    logs = Path(home.root) / "workers" / "logs"
    return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.glob("slurm-*.out")))


def _wait_done(home: Home, wf: str, timeout: float = 120):
    return wait_for(
        lambda: (r := Client(home).run(wf)).terminal and r, timeout=timeout, what=f"workflow {wf}"
    )


def test_workers_from_tuiflow_slurm_give_each_task_its_gpu_and_exit_when_idle(slurm, home, tmp_path):
    tasks = "".join(
        f"  - {{name: t{k}, gpus: 1, run: {json.dumps(REPORT.replace('SLEEP', '1'))}}}\n" for k in range(6)
    )
    wf = _submit(home, tmp_path, tasks)
    job = _launch(slurm, home, "--workers", 2, "--gpus-per-node", 1, "--idle-exit", 3, "--time", 10)
    run = _wait_done(home, wf)
    assert run.state == "completed", _job_logs(home)
    seen = {(v.output["worker"], v.output["gpu"]) for v in Client(home).tasks(wf)}
    workers = {w for w, _ in seen}
    assert all(w.startswith(f"slurm-{job}_") for w in workers), seen  # named after their array job
    for w in workers:  # a worker hands out its job's one GPU, and only that one
        assert len({g for ww, g in seen if ww == w}) == 1, seen
    assert {g for _, g in seen} <= {"0", "1"}
    if len(workers) == 2:  # two jobs hold the two GPUs: the tasks saw both
        assert {g for _, g in seen} == {"0", "1"}, seen
    for k in range(2):  # idle for 3 s: each worker exits and its job ends
        assert slurm.wait_state(f"{job}_{k}", {"GONE"}, timeout=60) == "COMPLETED", _job_logs(home)
    assert "nothing to do for 3 s; exiting" in _job_logs(home)


def test_a_worker_job_cancelled_mid_task_loses_nothing(slurm, home, tmp_path):
    tasks = "".join(
        f"  - {{name: t{k}, run: {json.dumps(REPORT.replace('SLEEP', '3'))}}}\n" for k in range(4)
    )
    wf = _submit(home, tmp_path, tasks)
    job = _launch(slurm, home, "--workers", 2, "--slots", 2, "--idle-exit", 3, "--time", 10)

    def running_on() -> str | None:
        return next((v.worker for v in Client(home).tasks(wf) if v.state == "running" and v.worker), None)

    victim = wait_for(running_on, timeout=60, what="a task to run")
    array_task = victim.split("-")[1].split("_")[1]  # slurm-<job>_<index>-<node>
    slurm.scancel(f"{job}_{array_task}")
    run = _wait_done(home, wf)
    views = Client(home).tasks(wf)
    assert run.state == "completed", _job_logs(home)
    assert all(v.state == "completed" for v in views)
    again = [v for v in views if v.attempt > 0]
    assert again, "the cancelled worker's tasks ran again elsewhere"
    assert all(v.output["worker"] != victim for v in again)
    assert slurm.wait_state(f"{job}_{array_task}", {"GONE"}, timeout=30) == "CANCELLED"
    assert victim not in cli("doctor", home=home.root).stdout  # it said it left: no dead worker to wait for


def test_a_worker_job_nearing_its_time_limit_drains_and_ends_before_it(slurm, home, tmp_path):
    """--signal-lead 55 on a one-minute job: Slurm sends SIGUSR1 up to 30 s after the job
    starts; the worker finishes the task it runs, claims nothing more and exits, so the job
    ends COMPLETED, not TIMEOUT. The rest waits in the queue for another worker: every task
    completes once, none ran twice."""
    tasks = "".join(f"  - {{name: t{k:02}, run: 'sleep 1'}}\n" for k in range(60))
    wf = _submit(home, tmp_path, tasks)
    job = _launch(
        slurm, home, "--workers", 1, "--slots", 1, "--time", 1, "--signal-lead", 55, "--idle-exit", 60
    )
    assert slurm.wait_state(job, {"GONE"}, timeout=60) == "COMPLETED", _job_logs(home)
    assert "drained: nothing runs; exiting" in _job_logs(home)
    views = Client(home).tasks(wf)
    assert any(v.state == "completed" for v in views) and any(v.state == "ready" for v in views)
    assert not any(v.state == "running" for v in views)  # the one it ran, it finished
    r = cli("worker", "--burst", "--slots", 8, home=home.root, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    run = _wait_done(home, wf)
    assert run.state == "completed" and all(v.attempt == 0 for v in Client(home).tasks(wf))


def test_follow_submits_workers_while_work_waits_and_no_more_than_the_most(slurm, home, tmp_path):
    """`tuiflow slurm --follow` on a real Slurm: six one-GPU tasks wait, so it submits
    workers (at most 2, the cluster's GPUs); squeue's word on its pending jobs keeps it from
    submitting more while they start; the workflow completes on them; idle, they leave."""
    tasks = "".join(
        f"  - {{name: t{k}, gpus: 1, run: {json.dumps(REPORT.replace('SLEEP', '1'))}}}\n" for k in range(6)
    )
    wf = _submit(home, tmp_path, tasks)
    wait_for(lambda: home.queue("default").counts().ready, timeout=30, what="tasks queued")
    follower = subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "slurm", "--home", home.root, "--follow", "--max-workers", "2",
         "--interval", "0.5", "--gpus-per-node", "1", "--idle-exit", "2", "--time", "10"],
        cwd=ROOT, env={**os.environ, **slurm.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        run = _wait_done(home, wf)
    finally:
        follower.send_signal(signal.SIGINT)
        said, _ = follower.communicate(timeout=60)
    assert run.state == "completed", said + _job_logs(home)
    submitted = [
        int(line.split("submitted ")[1].split()[0]) for line in said.splitlines() if "submitted" in line
    ]
    assert submitted and sum(submitted) <= 4, said  # never more than 2 live or starting at once
    assert "squeue did not answer" not in said, said
    workers = {v.output["worker"] for v in Client(home).tasks(wf)}
    assert all(w.startswith("slurm-") for w in workers), workers
