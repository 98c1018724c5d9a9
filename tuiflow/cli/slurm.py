"""`tuiflow slurm`: workers as Slurm jobs — the batch script, a site profile, submission.

One ``sbatch`` submits N workers as a job array. Each array task is one worker process for
the named queues: the batch script ``exec``s ``tuiflow worker`` so that the worker *is* the
batch step and gets Slurm's signals itself:

* ``--signal=B:USR1@<lead>``: Slurm sends SIGUSR1 `lead` seconds before the time limit;
  the worker drains (finishes what runs, claims nothing new) and exits.
* SIGTERM (``scancel``, preemption, the time limit itself): Slurm follows it with SIGKILL
  after KillWait, so the worker stops hard at once: running attempts end as "worker
  stopped" (retried elsewhere at no cost to their retries), claimed messages go back, and
  it exits having said so, instead of being judged dead a heartbeat timeout later.
* ``--idle-exit``: a worker whose queues stayed empty that long exits, giving the node back.

The worker takes the GPUs the job was given (``--gpus auto``: ``CUDA_VISIBLE_DEVICES``)
and names itself after the job (``slurm-<job>_<task>-<node>``).

Site defaults (partition, account, time, extra ``#SBATCH`` lines, lines that set up the
environment) live in a YAML profile: ``--profile FILE``, else ``$TUIFLOW_SLURM_PROFILE``,
else ``<home>/slurm.yaml``. Options on the command line win over the profile.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spool import layout
from tuiflow import __version__
from tuiflow.errors import TuiflowError

PROFILE_ENV = "TUIFLOW_SLURM_PROFILE"
PROFILE_FILE = "slurm.yaml"


class SlurmError(TuiflowError):
    """sbatch missing or refusing the job; the message says which."""


class SlurmProfileError(SlurmError):
    """A site profile that cannot be read or holds a bad setting (invalid input)."""


class SlurmProfile(BaseModel):
    """What a worker job asks Slurm for, and how it starts (every field optional)."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    time: str | None = Field(None, description="Slurm's time format: 30, 2:00:00, 1-00:00:00")
    cpus: int | None = Field(None, ge=1)
    mem: str | None = Field(None, description="e.g. 32G")
    gpus_per_node: int | None = Field(None, ge=0)
    slots: int | None = Field(None, ge=1)
    idle_exit: float | None = Field(None, ge=0)
    signal_lead: int | None = Field(None, ge=1, description="seconds before the time limit: drain")
    requeue: bool | None = None
    #: extra ``#SBATCH`` options, e.g. ``--constraint=a100`` or ``--qos=high``
    sbatch: list[str] = Field(default_factory=list)
    #: shell lines run before the worker starts (``module load cuda``, ``source venv/bin/activate``)
    setup: list[str] = Field(default_factory=list)
    #: the python that runs ``-m tuiflow`` on the compute nodes (default: this one)
    python: str | None = None

    def merged(self, **options: Any) -> SlurmProfile:
        """This profile with the options given on the command line (not None) on top."""
        given = {k: v for k, v in options.items() if v is not None and v != []}
        if "sbatch" in given:
            given["sbatch"] = [*self.sbatch, *given["sbatch"]]
        return self.model_copy(update=given)


DEFAULTS = SlurmProfile(
    time="1:00:00", cpus=4, gpus_per_node=0, idle_exit=300.0, signal_lead=120, requeue=False
)


def find_profile(home_root: str, explicit: str | None) -> Path | None:
    """The profile file to read: the explicit one, the environment's, or the home's."""
    if explicit:
        return Path(explicit)
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV])
    candidate = Path(home_root) / PROFILE_FILE
    return candidate if candidate.exists() else None


def load_profile(path: Path | None) -> SlurmProfile:
    """The defaults with the profile at `path` on top (SlurmError naming the file and field)."""
    if path is None:
        return DEFAULTS
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise SlurmProfileError(f"cannot read the Slurm profile {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SlurmProfileError(f"the Slurm profile {path} is not YAML: {e}") from None
    if not isinstance(data, dict):
        raise SlurmProfileError(f"the Slurm profile {path} must be a mapping of settings")
    try:
        return DEFAULTS.merged(**SlurmProfile.model_validate(data).model_dump(exclude_unset=True))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise SlurmProfileError(f"the Slurm profile {path}: {problems}") from None


def logs_dir(home_root: str) -> str:
    """Where the worker jobs' output goes (Slurm opens it before the script runs)."""
    return f"{home_root}/{layout.WORKERS_DIR}/{layout.WORKER_LOGS_DIR}"


def batch_script(home_root: str, queues: list[str], workers: int, p: SlurmProfile) -> str:
    """The batch script of `workers` worker jobs (a job array when more than one)."""
    logs = logs_dir(home_root)
    directives = [
        f"--job-name=tuiflow-{'-'.join(queues)}",
        f"--output={logs}/slurm-%x-{'%A_%a' if workers > 1 else '%j'}.out",
        *([f"--array=0-{workers - 1}"] if workers > 1 else []),
        "--nodes=1",
        "--ntasks=1",
        *([f"--cpus-per-task={p.cpus}"] if p.cpus else []),
        *([f"--mem={p.mem}"] if p.mem else []),
        *([f"--time={p.time}"] if p.time else []),
        *([f"--partition={p.partition}"] if p.partition else []),
        *([f"--account={p.account}"] if p.account else []),
        *([f"--gres=gpu:{p.gpus_per_node}"] if p.gpus_per_node else []),
        *([f"--signal=B:USR1@{p.signal_lead}"] if p.signal_lead else []),
        "--requeue" if p.requeue else "--no-requeue",
        *p.sbatch,
    ]
    slots = p.slots or p.gpus_per_node or 1  # default: a slot per GPU
    command = [p.python or sys.executable, "-m", "tuiflow", "worker", "--home", home_root]
    for q in queues:
        command += ["--queue", q]
    command += ["--slots", str(slots), "--gpus", "auto"]
    if p.idle_exit is not None:
        command += ["--idle-exit", f"{p.idle_exit:g}"]
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
    lines += [
        f"# made by `tuiflow slurm` (tuiflow {__version__}): a worker for {', '.join(queues)}",
        "set -e",
        *p.setup,
        "exec " + shlex.join(command),  # the worker is the batch step: Slurm's signals reach it
    ]
    return "\n".join(lines) + "\n"


def submit(home_root: str, script: str) -> str:
    """Submit `script` with sbatch; the job id (SlurmError with sbatch's words if refused)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError("sbatch is not on PATH: run this on a Slurm login node (or use --dry-run)")
    os.makedirs(logs_dir(home_root), exist_ok=True)
    r = subprocess.run(
        [sbatch, "--parsable"], input=script, capture_output=True, text=True, timeout=120, check=False
    )
    if r.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip().split(";")[0]
