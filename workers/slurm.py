"""A worker started by Slurm (`tuiflow slurm`): which job it is, and which GPUs it was given.

Slurm tells a job about itself through its environment: ``SLURM_JOB_ID`` (for an array,
``SLURM_ARRAY_JOB_ID`` and ``SLURM_ARRAY_TASK_ID``), ``SLURMD_NODENAME``, and, for a job
that asked for GPUs (``--gres=gpu:N``, ``--gpus-per-node``), ``CUDA_VISIBLE_DEVICES``
(``SLURM_STEP_GPUS`` / ``SLURM_JOB_GPUS`` where it is not set). The worker names itself
after the job, hands out exactly the GPUs the job holds, and says in its heartbeat which
job and node it is, so that ``tuiflow doctor`` and the dashboard can name them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """The Slurm job a worker runs in."""

    job_id: str
    node: str
    array_job_id: str | None = None
    array_task_id: str | None = None
    #: which of the step's tasks this is, when a step runs several (``srun -n 2 tuiflow worker``)
    proc_id: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SlurmJob | None:
        """The job of this environment; None outside Slurm."""
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            return None
        return cls(
            job_id=job_id,
            node=env.get("SLURMD_NODENAME") or env.get("SLURM_NODELIST") or "?",
            array_job_id=env.get("SLURM_ARRAY_JOB_ID") or None,
            array_task_id=env.get("SLURM_ARRAY_TASK_ID") or None,
            proc_id=env.get("SLURM_PROCID") if env.get("SLURM_STEP_NUM_TASKS", "1") != "1" else None,
        )

    @property
    def label(self) -> str:
        """How Slurm's own tools name it: ``123`` or, in an array, ``120_3``."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    def worker_id(self) -> str:
        """A worker id that names the job and the node (characters a worker id allows), and
        which task of its step it is when the step runs several."""
        node = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in self.node)[:40]
        return f"slurm-{self.label}-{node}" + (f"-{self.proc_id}" if self.proc_id else "")

    def describe(self) -> dict[str, str]:
        """What the heartbeat carries."""
        return {"job": self.label, "node": self.node}


def slurm_gpus(env: Mapping[str, str]) -> list[int]:
    """The GPU ids the job was given, as CUDA names them in the job (``--gpus auto``);
    [] when it was given none.

    Raises:
        ValueError: the variable names GPUs by UUID or MIG instance, which a worker cannot
            hand out one by one (give ``--gpus`` explicitly).
    """
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = env.get(name)
        if value is None:
            continue
        entries = [e.strip() for e in value.split(",") if e.strip()]
        try:
            return [int(e) for e in entries]
        except ValueError:
            raise ValueError(
                f"{name}={value!r} names GPUs other than by number: give --gpus explicitly"
            ) from None
    return []
