"""Workers launched through Slurm (issue 14), the parts that need no cluster: `tuiflow slurm
--dry-run`'s batch script and site profile, and a real worker process in a Slurm job's
environment (its name, its GPUs, its heartbeat, its signals, its idle exit). The tests
against a real single-node Slurm are in test_slurm_cluster.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.engine import ROOT, cli, wait_for, write_wf

from spool import Home
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import load_workflow

SLURM_ENV = {
    "SLURM_JOB_ID": "77",
    "SLURM_ARRAY_JOB_ID": "70",
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURMD_NODENAME": "gpu-node-7",
    "CUDA_VISIBLE_DEVICES": "1,3",
}


def test_the_batch_script_asks_slurm_for_what_the_options_say(tmp_path):
    home = Home.open(tmp_path / "home")
    r = cli(
        "slurm", "--dry-run", "--workers", 3, "--queue", "gpu", "--gpus-per-node", 2, "--time", "4:00:00",
        "--partition", "a100", "--account", "lab", "--mem", "64G", "--sbatch=--qos=high", "--requeue",
        "--idle-exit", 60, "--signal-lead", 90, home=home.root,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    script = r.stdout
    for directive in (
        "--array=0-2", "--gres=gpu:2", "--time=4:00:00", "--partition=a100", "--account=lab",
        "--mem=64G", "--qos=high", "--requeue", "--signal=B:USR1@90",
        f"--output={home.root}/workers/logs/slurm-%x-%A_%a.out",
    ):  # fmt: skip
        assert f"#SBATCH {directive}\n" in script, directive
    last = script.strip().splitlines()[-1]
    assert last.startswith("exec ") and f"-m tuiflow worker --home {home.root} --queue gpu" in last
    assert "--slots 2 --gpus auto --idle-exit 60" in last  # a slot per GPU, the job's own GPUs


def test_a_site_profile_sets_defaults_and_the_command_line_wins(tmp_path):
    home = Home.open(tmp_path / "home")
    (Path(home.root) / "slurm.yaml").write_text(
        "partition: shared\naccount: physics\ntime: '2:00:00'\nsbatch: [--constraint=a100]\n"
        "setup: ['module load cuda/12.4', 'source /opt/venv/bin/activate']\npython: /opt/venv/bin/python\n"
    )
    r = cli("slurm", "--dry-run", "--partition", "debug", home=home.root)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --partition=debug\n" in r.stdout and "#SBATCH --account=physics\n" in r.stdout
    assert "#SBATCH --time=2:00:00\n" in r.stdout and "#SBATCH --constraint=a100\n" in r.stdout
    assert (
        "module load cuda/12.4\nsource /opt/venv/bin/activate\nexec /opt/venv/bin/python -m tuiflow"
        in r.stdout
    )


def test_a_bad_profile_is_refused_naming_the_file_and_the_field(tmp_path):
    home = Home.open(tmp_path / "home")
    profile = tmp_path / "site.yaml"
    profile.write_text("partition: a100\ngpus_per_nod: 2\ncpus: none\n")
    r = cli("slurm", "--dry-run", "--profile", profile, home=home.root)
    assert r.returncode == 2
    assert str(profile) in r.stderr and "gpus_per_nod" in r.stderr and "cpus" in r.stderr
    assert "Traceback" not in r.stderr


def test_submitting_without_slurm_says_where_to_run_it(tmp_path):
    home = Home.open(tmp_path / "home")
    env = {**os.environ, "PATH": "/nonexistent"}
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "slurm", "--home", home.root],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0 and "sbatch is not on PATH" in r.stderr and "Traceback" not in r.stderr


def _worker(home: Home, tmp_path: Path, *args: object, env: dict[str, str]) -> subprocess.Popen:
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "worker", "--home", home.root, *map(str, args)],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


SHOW_GPU = """echo "{\\"gpu\\": \\"$CUDA_VISIBLE_DEVICES\\"}" > "$TUIFLOW_OUTPUT"; sleep 0.3"""


def test_a_worker_in_a_slurm_job_names_itself_takes_the_jobs_gpus_and_exits_when_idle(tmp_path, procs):
    home = Home.open(tmp_path / "home")
    tasks = "".join(f"  - {{name: t{k}, gpus: 1, run: {json.dumps(SHOW_GPU)}}}\n" for k in range(4))
    wf = Client(home).submit(load_workflow(write_wf(tmp_path, f"name: gpus\ntasks:\n{tasks}")))
    procs.append(
        subprocess.Popen([sys.executable, "-m", "tuiflow", "coordinator", "--home", home.root], cwd=ROOT)
    )
    worker = _worker(home, tmp_path, "--slots", 2, "--gpus", "auto", "--idle-exit", 2, env=SLURM_ENV)
    procs.append(worker)
    run = wait_for(lambda: (r := Client(home).run(wf)).terminal and r, timeout=60, what="the workflow")
    assert run.state == "completed"
    assert {v.output["gpu"] for v in Client(home).tasks(wf)} <= {"1", "3"}  # the job's GPUs, one each
    doctor = cli("doctor", home=home.root).stdout
    assert "worker slurm-70_3-gpu-node-7" in doctor and "Slurm job 70_3 on gpu-node-7" in doctor
    listed = cli("ls", "--workers", home=home.root).stdout
    assert "slurm-70_3-gpu-node-7" in listed and "Slurm job 70_3 on gpu-node-7" in listed
    [row] = json.loads(cli("ls", "--workers", "--json", home=home.root).stdout)
    assert row["slurm"] == {"job": "70_3", "node": "gpu-node-7"} and row["queues"] == ["default"]
    t0 = time.monotonic()
    assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()[-2000:]
    assert time.monotonic() - t0 < 10  # about --idle-exit after the last task
    assert "nothing to do for 2 s; exiting" in (tmp_path / "worker.log").read_text()


def _running(home: Home, wf: str, name: str) -> bool:
    return any(v.name == name and v.state == "running" for v in Client(home).tasks(wf))


def test_usr1_drains_a_worker_and_sigterm_under_slurm_hands_its_work_back_at_once(tmp_path, procs):
    """SIGUSR1 (the time limit is near): the running task finishes, nothing new is claimed.
    SIGTERM in a Slurm job (scancel, preemption; SIGKILL follows): the running task ends as
    "worker stopped" and runs again on another worker without waiting for a heartbeat to
    expire, and no retry is spent."""
    home = Home.open(tmp_path / "home")
    text = (
        "name: sig\ntasks:\n  - {name: a, run: 'sleep 2'}\n  - {name: b, depends_on: [a], run: 'sleep 30'}\n"
    )
    wf = Client(home).submit(load_workflow(write_wf(tmp_path, text)))
    procs.append(
        subprocess.Popen([sys.executable, "-m", "tuiflow", "coordinator", "--home", home.root], cwd=ROOT)
    )
    first = _worker(home, tmp_path, env={})
    procs.append(first)
    wait_for(lambda: _running(home, wf, "a"), timeout=30, what="a to run")
    first.send_signal(signal.SIGUSR1)
    assert first.wait(30) == 0
    views = {v.name: v for v in Client(home).tasks(wf)}
    assert views["a"].state == "completed" and views["b"].state != "running"  # drained: b not claimed

    slurm = _worker(home, tmp_path, env=SLURM_ENV)
    procs.append(slurm)
    wait_for(lambda: _running(home, wf, "b"), timeout=30, what="b to run")
    slurm.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    slurm.wait(30)
    assert time.monotonic() - t0 < 10  # well within Slurm's KillWait: the task was stopped, not waited for
    # b has no retries: it is queued again (attempt 1) only because "worker stopped" costs none
    b = wait_for(
        lambda: (v := next(v for v in Client(home).tasks(wf) if v.name == "b")).state == "ready" and v,
        timeout=10,
        what=f"b to be queued again (it is {[v for v in Client(home).tasks(wf) if v.name == 'b']}, worker log: "
        f"{(tmp_path / 'worker.log').read_text()[-1500:]})",
    )
    assert b.attempt == 1


def test_a_slurm_jobs_environment_names_the_worker_and_its_gpus():
    import pytest

    from workers.slurm import SlurmJob, slurm_gpus

    assert SlurmJob.from_env({}) is None
    assert SlurmJob.from_env(SLURM_ENV).worker_id() == "slurm-70_3-gpu-node-7"
    plain = SlurmJob.from_env({"SLURM_JOB_ID": "5", "SLURMD_NODENAME": "n.x"})
    assert plain.worker_id() == "slurm-5-n-x" and plain.describe() == {"job": "5", "node": "n.x"}
    two = {"SLURM_JOB_ID": "5", "SLURMD_NODENAME": "n1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}
    assert SlurmJob.from_env(two).worker_id() == "slurm-5-n1-1"  # srun -n 2: two workers, two names
    assert slurm_gpus({"CUDA_VISIBLE_DEVICES": "0,2"}) == [0, 2]
    assert slurm_gpus({"SLURM_STEP_GPUS": "1"}) == [1] and slurm_gpus({}) == []
    with pytest.raises(ValueError, match="give --gpus explicitly"):
        slurm_gpus({"CUDA_VISIBLE_DEVICES": "GPU-6f1e"})


# ------------------------------------------------------------------ --follow
@pytest.mark.parametrize(
    ("waiting", "live", "starting", "slots", "most", "add"),
    [
        (0, 0, 0, 1, 4, 0),  # nothing waits
        (10, 0, 0, 2, 3, 3),  # 5 wanted, 3 allowed
        (10, 0, 0, 2, 8, 5),
        (4, 1, 1, 2, 8, 0),  # live and starting workers take all 4
        (5, 1, 1, 2, 8, 1),
        (50, 3, 1, 1, 4, 0),  # at the most already
    ],
)
def test_workers_to_add(waiting, live, starting, slots, most, add):
    from tuiflow.cli.autoscale import Backlog, workers_to_add

    assert workers_to_add(Backlog(waiting, live, starting), slots=slots, max_workers=most) == add


FAKE_SBATCH = """#!/bin/bash
# records the script; answers a job id; lists the job's array tasks as pending for squeue
n=$(( $(cat "$FAKE/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE/next"
cat > "$FAKE/job-$n.sh"
size=$(grep -o 'array=0-[0-9]*' "$FAKE/job-$n.sh" | cut -d- -f2)
if [ -z "$size" ]; then echo "$n PENDING" >> "$FAKE/squeue.out"
else for k in $(seq 0 "$size"); do echo "${n}_$k PENDING" >> "$FAKE/squeue.out"; done; fi
echo "$n"
"""
FAKE_SQUEUE = """#!/bin/bash
cat "$FAKE/squeue.out" 2>/dev/null; true
"""


def test_follow_submits_for_waiting_work_up_to_the_most_and_counts_jobs_not_started(tmp_path):
    """`tuiflow slurm --follow` against stand-ins for sbatch and squeue: 10 items wait and
    a worker takes 2, so it wants 5 workers and submits 3 (--max-workers), one array; while
    they are pending it submits nothing more; once Slurm forgets them (they ran and left)
    and the work still waits, it submits again; Ctrl-C stops it and it says so."""
    fake = tmp_path / "fake"
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    home = Home.open(tmp_path / "home")
    q = home.queue("default")
    for i in range(10):
        q.put({"item": i})
    env = {**os.environ, "FAKE": str(fake), "PATH": f"{fake}:{os.environ['PATH']}"}
    follower = subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "slurm", "--home", home.root, "--follow", "--max-workers", "3",
         "--interval", "0.2", "--slots", "2", "--idle-exit", "30"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for((fake / "job-101.sh").exists, timeout=30, what="the first submission")
        time.sleep(1.0)  # five more looks: the three pending workers are counted
        assert sorted(p.name for p in fake.glob("job-*.sh")) == ["job-101.sh"]
        script = (fake / "job-101.sh").read_text()
        assert "#SBATCH --array=0-2" in script and "--slots 2" in script and "--idle-exit 30" in script
        (fake / "squeue.out").write_text("")  # they ran and left; the work is still there
        wait_for((fake / "job-102.sh").exists, timeout=30, what="the second submission")
        time.sleep(1.0)  # sbatch wrote the script before it answered: let the follower hear the answer
    finally:
        follower.send_signal(signal.SIGINT)
        text, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0, text
    assert "10 waiting, 0 live + 0 starting worker(s) of 2 slot(s) (max 3): submitted 3 as job 101" in text
    assert "submitted 3 as job 102" in text and "stopped;" in text
