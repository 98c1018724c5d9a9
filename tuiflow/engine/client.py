"""The client API: submit, cancel, retry, and the read API that the CLI and the dashboard share.

Writes never touch workflow state directly: submit stores a new workflow and asks the
coordinator (through the control spool) to start it; cancel and retry are requests the
coordinator applies. Reads go to the records: listing reads only the small per-workflow
summaries; a status reads one state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import secrets
import time
from typing import Any

from spool import Home, SpoolError, StorageError, layout
from spool.fsops import listdir
from spool.liveness import SUFFIX as HB_SUFFIX
from spool.liveness import decode, fs_age, fs_now, read_raw
from tuiflow.engine.markers import Markers
from tuiflow.engine.model import Definition
from tuiflow.engine.runstate import STATE_NAMES, TERMINAL, WF_TERMINAL, NotRetryable, RunState
from tuiflow.engine.store import WorkflowStore
from tuiflow.errors import NotFound
from workers.wire import ControlOp, ControlRequest


@dataclasses.dataclass
class TaskView:
    name: str
    state: str
    attempt: int
    worker: str | None
    queue: str
    ready_at: float
    started_at: float
    ended_at: float
    queued_for: float | None
    ran_for: float | None
    exit_code: int | None
    reason: str | None
    output: Any
    output_ref: str | None
    depends_on: list[str]
    group: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def task_times(run: RunState, i: int, now: float) -> tuple[float | None, float | None]:
    """Seconds task `i` waited in its queue and ran (its current attempt; up to `now`
    while it still waits or runs); None where it never became ready or never started."""
    ready, started, ended = run.ready_at[i], run.started[i], run.ended[i]
    queued_for = None
    if ready:
        queued_for = max(0.0, (started or (ended if run.st[i] in TERMINAL else now)) - ready)
    ran_for = max(0.0, (ended or now) - started) if started else None
    return queued_for, ran_for


def task_views(run: RunState, now: float, indices: list[int] | None = None) -> list[TaskView]:
    d = run.definition
    out = []
    for i in range(len(run)) if indices is None else indices:
        t = d.tasks[i]
        ready, started, ended = run.ready_at[i], run.started[i], run.ended[i]
        queued_for, ran_for = task_times(run, i, now)
        code = run.st[i]
        ref = run.output_refs.get(i)
        out.append(
            TaskView(
                name=t.name,
                state=STATE_NAMES[code],
                attempt=run.attempt[i],
                worker=run.worker.get(i),
                queue=t.queue,
                ready_at=ready,
                started_at=started,
                ended_at=ended,
                queued_for=queued_for,
                ran_for=ran_for,
                exit_code=run.exit_code.get(i),
                reason=run.reason.get(i),
                output=run.outputs.get(i),
                output_ref=ref[0] if ref else None,
                depends_on=list(t.depends_on),
                group=t.name.split("/", 1)[0] if "/" in t.name else None,
            )
        )
    return out


class Client:
    """Talks to a home's coordinator through files; `who` is recorded on requests.

    One class with more methods than most, on purpose: it is the one entry the command
    line and the dashboard use, in three groups: requests (submit, cancel, retry), reads
    of workflows (list, run, status, tasks, attempt_dir) and the home's health
    (coordinator_info, workers, queues, doctor, purge).
    """

    def __init__(self, home: Home, who: str | None = None, store: WorkflowStore | None = None):
        self.home = home
        self.store = store or WorkflowStore(home)
        self.who = who or _whoami()

    # ------------------------------------------------------------------ writes
    def submit(self, definition: Definition) -> str:
        """Store a new workflow and ask the coordinator to start it; returns its id."""
        wf_id = self.store.create(definition, owner=self.who)
        self._request(ControlOp.SUBMIT, wf_id)
        return wf_id

    def submit_file(self, path: str, set_values: dict[str, Any] | None = None) -> str:
        """Compile the workflow file at `path` (with `--set` values) and submit it; returns its id."""
        from tuiflow.engine.compiler import (
            load_workflow,  # the compiler's pydantic costs startup time elsewhere
        )

        return self.submit(load_workflow(path, set_values))

    def cancel(self, wf: str) -> str:
        """Ask the coordinator to cancel a workflow (an id or unique prefix); returns its id."""
        wf_id = self.store.resolve(wf)
        if self.store.broken(wf_id) is not None:
            # The coordinator leaves a broken workflow alone: tell its workers directly.
            Markers(self.home.root).cancelled(wf_id)
        self._request(ControlOp.CANCEL, wf_id)
        return wf_id

    def retry(self, wf: str, tasks: list[str] | None = None) -> tuple[str, list[str]]:
        """Ask for failed/upstream_failed/cancelled tasks (or `tasks`) to run again.

        Checked against the current state first, so a mistake is reported here, not lost
        in the coordinator's log. Returns (workflow id, the tasks that will run again).
        """
        wf_id = self.store.resolve(wf)
        run, _ = self.store.load_run(wf_id)
        probe = RunState.from_wire(run.definition, run.to_wire())
        probe.retry(tasks or None, time.time())  # raises NotRetryable with a clear message
        again = [run.definition.tasks[i].name for i in range(len(run)) if run.st[i] != probe.st[i]]
        if not again:
            raise NotRetryable(f"workflow {wf_id} has no failed, upstream_failed or cancelled tasks")
        self._request(ControlOp.RETRY, wf_id, tuple(tasks) if tasks else None)
        return wf_id, again

    def _request(self, op: ControlOp, wf_id: str, tasks: tuple[str, ...] | None = None) -> None:
        request = ControlRequest(op, wf_id, by=self.who, request=secrets.token_hex(8), tasks=tasks)
        self.home.control().put(request.to_wire())

    # ------------------------------------------------------------------- reads
    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        """Summaries of the home's workflows, newest first (only those in `state`, if given)."""
        items = self.store.summaries()
        if state:
            items = [s for s in items if s.get("state") == state]
        return items

    def run(self, wf: str) -> RunState:
        """The stored run state of a workflow (an id or unique prefix)."""
        run, _ = self.store.load_run(self.store.resolve(wf))
        return run

    def status(self, wf: str, *, now: float | None = None) -> dict[str, Any]:
        """A workflow's state, counts and tasks, as JSON-able data. `now`: wall clock (epoch s) that running tasks' durations run up to (default: time.time())."""
        now = time.time() if now is None else now
        run = self.run(wf)
        views = task_views(run, now)
        done = sum(run.counts[c] for c in TERMINAL)
        return {
            "id": run.wf_id,
            "name": run.definition.name,
            "state": run.state,
            "counts": run.count_dict(),
            "total": len(run),
            "done": done,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "wall_seconds": ((run.ended_at or now) - run.started_at) if run.started_at else None,
            "owner": run.definition.owner,
            "source": run.definition.source,
            "stats": dict(run.stats),
            # why the workflow failed as a whole (not a task's failure), if it did
            "error": self.store.broken(run.wf_id) or run.error,
            "coordinator": self.coordinator_info(),
            "tasks": [
                {
                    "name": v.name,
                    "state": v.state,
                    "attempt": v.attempt,
                    "output": v.output,
                    "output_ref": v.output_ref,
                    "worker": v.worker,
                    "queued_for": v.queued_for,
                    "ran_for": v.ran_for,
                    "exit_code": v.exit_code,
                    "reason": v.reason,
                }
                for v in views
            ],
        }

    def tasks(self, wf: str, *, prefix: str | None = None, state: str | None = None) -> list[TaskView]:
        """The tasks of a workflow (those whose name starts with `prefix`, in `state`, if given)."""
        run = self.run(wf)
        if state and state not in STATE_NAMES:
            raise NotFound(f"unknown task state {state!r} (states: {', '.join(STATE_NAMES)})")
        indices = [
            i
            for i, t in enumerate(run.definition.tasks)
            if (not prefix or t.name.startswith(prefix)) and (not state or STATE_NAMES[run.st[i]] == state)
        ]
        return task_views(run, time.time(), indices)

    def attempt_dir(self, wf: str, task: str, attempt: int | None = None) -> str:
        """The directory of an attempt of a task (default: its latest). NotFound for a wrong name or number."""
        run = self.run(wf)
        if task not in run.definition.index:
            raise NotFound(f"workflow {run.wf_id} has no task {task!r}")
        idx = run.definition.index[task]
        n = run.attempt[idx] if attempt is None else attempt
        if n < 0 or n > run.attempt[idx]:
            raise NotFound(f"task {task!r} has attempts 0..{run.attempt[idx]}, not {n}")
        return layout.resolve(self.home.root, layout.attempt_dir_rel(run.wf_id, task, n))

    def coordinator_info(self) -> dict[str, Any] | None:
        """Who holds the coordinator lease (holder, host, pid, generation), how long ago it
        renewed (seconds, by the file server's clock), whether its head entry is readable
        and whether the holder is a process of this host that is gone; None if nobody ever
        held it."""
        lease = self.home.lease("observer")
        age = None
        for _ in range(5):
            info = lease.inspect()
            if info is None:
                return None
            age = fs_age(lease.entry_path(info.version))
            if age is not None:
                break  # else that entry was followed (renewed) between the two reads: look again
        if age is None:
            age = fs_age(lease.path)  # renewing faster than we look: the directory changed just now
        return {
            "holder": info.holder,
            "host": info.host,
            "pid": info.pid,
            "generation": info.generation,
            "age_seconds": age,
            "readable": info.readable,
            "gone_here": info.gone_here,
        }

    def workers(self, now: float | None = None) -> list[dict[str, Any]]:
        """Heartbeat records (alive or dead), with their age (seconds since the record was
        last written): by the file server's clock (a probe file written next to them), or
        against `now` when given (the dashboard: it refreshes often, must write nothing in
        the directory it watches, and its tests fix the clock)."""
        out = []
        directory = self.home.workers_dir
        try:
            names = sorted(listdir(directory))
        except FileNotFoundError:
            return out
        if now is not None:
            server_now = now
        else:
            try:
                server_now = fs_now(directory)
            except OSError:
                server_now = time.time()
        for name in names:
            dead = name.endswith(layout.DEAD_SUFFIX)
            if not (dead or name.endswith(HB_SUFFIX)) or name.startswith("."):
                continue
            path = f"{directory}/{name}"
            try:
                hb = decode(read_raw(path), path)
            except (OSError, SpoolError):
                continue
            age = fs_age(path, server_now)
            stale = age is not None and age > self.home.settings.dead_after
            info = dict(hb.info)
            out.append(
                {
                    "id": hb.holder,
                    "host": info.get("host") or hb.host,
                    "pid": hb.pid,
                    "queues": info.get("queues", []),
                    "slots": info.get("slots"),
                    "gpus": info.get("gpus"),
                    "running": info.get("running", []),
                    "state": "dead" if dead or stale else info.get("state", "running"),
                    "heartbeat_age": age,
                    "tasks_done": info.get("tasks_done", 0),
                    # slot -> model keys its model host holds, least recently used first
                    "models": info.get("models") or {},
                    # the Slurm job it runs in ({"job": "120_3", "node": ...}), if any
                    "slurm": info.get("slurm") if isinstance(info.get("slurm"), dict) else None,
                    "dead": dead or stale,
                }
            )
        return out

    def queues(self) -> list[dict[str, Any]]:
        """Each task queue's depths: ready, delayed, claimed, dead (in items)."""
        out = []
        for name in self.home.list_queues():
            c = self.home.queue(name).counts()
            out.append(
                {
                    "name": name,
                    "ready": c.ready,
                    "delayed": c.delayed,
                    "claimed": c.claimed_total,
                    "dead": c.dead,
                }
            )
        return out

    # ------------------------------------------------------------------ doctor
    def doctor(self, *, stuck_after: float = 600.0) -> dict[str, Any]:
        """The health of the home (`tuiflow.engine.health.examine`): only live problems."""
        from tuiflow.engine.health import examine

        return examine(self, stuck_after=stuck_after)

    # ------------------------------------------------------------------- purge
    def purge(self, *, all_: bool = False) -> list[str]:
        """Delete finished workflows (and broken or corrupt ones; all workflows with `all_`),
        and dead workers' records. Returns the ids of the workflows removed; StorageError
        (naming the first workflow that could not be removed, after trying them all) if any
        could not be."""
        removed, failed = [], []
        for s in self.store.summaries():
            dead = s.get("state") in WF_TERMINAL or s.get("state") == "corrupt"
            if all_ or dead or self.store.broken(s["id"]) is not None:
                try:
                    self.store.remove(s["id"])
                    removed.append(s["id"])
                except StorageError as e:
                    failed.append(e)
        self.store.remove_leftovers(time.time())
        try:
            for name in listdir(self.home.workers_dir):
                if name.endswith(layout.DEAD_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.home.workers_dir}/{name}")
        except FileNotFoundError:
            pass
        except OSError as e:
            failed.append(StorageError.from_os("remove dead workers' records in", self.home.workers_dir, e))
        if failed:
            first = failed[0]
            raise StorageError(
                f"removed {len(removed)} workflow(s); {len(failed)} could not be removed: {first}",
                path=first.path,
                errno=first.errno,
            )
        return removed


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


__all__ = ["Client", "TaskView", "json", "task_views"]
