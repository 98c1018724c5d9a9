"""`tuiflow slurm --follow`: worker jobs kept in proportion to the work that waits.

Every `interval` seconds the follower reads what the coordinator reads, the queues'
ready and delayed items and the workers' heartbeats, and asks ``squeue`` which of the
jobs it submitted have not started a worker yet. When the waiting work is more than the
live and starting workers can take (`slots` items each), it submits more worker jobs (one
job array), up to `max_workers` live or starting. It never cancels a job: workers leave by
themselves once their queues stayed empty for their ``--idle-exit``. It is no service:
stop it (Ctrl-C) and the workers it started go on; start it again and it counts them.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

from tuiflow.cli.slurm import SlurmError, SlurmProfile, batch_script, submit

#: squeue states of a job that may still start a worker (anything else: it never will)
_STARTING = {"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED"}


@dataclasses.dataclass(frozen=True)
class Backlog:
    """What one look saw: items waiting in the queues, workers serving them, and the
    follower's jobs that have no live worker yet (pending, or running but not yet beating)."""

    waiting: int
    live: int
    starting: int


def workers_to_add(seen: Backlog, *, slots: int, max_workers: int) -> int:
    """Workers to submit so that live and starting ones can take what waits (`slots`
    items each), never more than `max_workers` live or starting."""
    room = max_workers - seen.live - seen.starting
    short = seen.waiting - (seen.live + seen.starting) * slots
    if room <= 0 or short <= 0:
        return 0
    return min(room, math.ceil(short / slots))


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """State of each array task (``123_4``) or job of `job_ids` that Slurm still knows;
    None when squeue cannot be asked (the follower then submits nothing this round)."""
    if not job_ids:
        return {}
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    r = subprocess.run(
        [squeue, "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if r.returncode != 0:
        if "Invalid job id" in r.stderr:
            return {}  # every one of them has left Slurm's memory
        return None
    return dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line)


class Follower:
    """The loop of `tuiflow slurm --follow` (one `look` and `step` per interval)."""

    def __init__(
        self,
        client,
        queues: list[str],
        profile: SlurmProfile,
        *,
        max_workers: int,
        say: Callable[[str], None],
        states: Callable[[list[str]], dict[str, str] | None] = squeue_states,
        dry_run: bool = False,
    ):
        self.client = client
        self.queues = queues
        self.profile = profile
        self.slots = profile.slots or profile.gpus_per_node or 1
        self.max_workers = max_workers
        self.say = say
        self.states = states
        self.dry_run = dry_run
        self.jobs: list[str] = []  # ids this follower submitted

    def look(self) -> Backlog | None:
        """What waits and who serves it; None if squeue could not be asked."""
        states = self.states(self.jobs)
        if states is None:
            return None
        self.jobs = [job for job in self.jobs if job in states]  # the rest ended: asked no more
        waiting = 0
        for name in self.queues:
            counts = self.client.home.queue(name).counts()
            waiting += counts.ready + counts.delayed
        live_jobs, live = set(), 0
        for w in self.client.workers():
            if w["dead"] or w["state"] != "running" or not set(w["queues"]) & set(self.queues):
                continue
            live += 1
            if w.get("slurm"):
                live_jobs.add(str(w["slurm"].get("job")))
        starting = sum(
            1 for job, state in states.items() if state.split()[0] in _STARTING and job not in live_jobs
        )
        return Backlog(waiting, live, starting)

    def step(self) -> int:
        """One look, and the jobs it calls for submitted; how many workers were added."""
        seen = self.look()
        if seen is None:
            self.say("squeue did not answer: submitting nothing this round")
            return 0
        n = workers_to_add(seen, slots=self.slots, max_workers=self.max_workers)
        if not n:
            return 0
        head = (
            f"{seen.waiting} waiting, {seen.live} live + {seen.starting} starting worker(s) "
            f"of {self.slots} slot(s) (max {self.max_workers}): "
        )
        if self.dry_run:
            self.say(head + f"would submit {n}")
            return n
        job = submit(self.client.home.root, batch_script(self.client.home.root, self.queues, n, self.profile))
        self.jobs += [f"{job}_{k}" for k in range(n)] if n > 1 else [job]
        self.say(head + f"submitted {n} as job {job}")
        return n

    def run(self, interval: float, stop: threading.Event) -> None:
        """Step every `interval` seconds until `stop` is set; a refused sbatch is said and
        tried again next round."""
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                self.step()
            except SlurmError as e:
                self.say(f"{e}; trying again in {interval:g} s")
            stop.wait(max(0.0, interval - (time.monotonic() - t0)))


__all__ = ["Backlog", "Follower", "squeue_states", "workers_to_add"]
