"""run-local's engine: a coordinator and workers for one workflow, hosted by one process.

The same `Coordinator` and `Worker` classes the daemons use: by default the workers are
processes forked from this one (`worker_mode="process"`), or threads of it
(`worker_mode="thread"`); the tasks themselves always run in processes of their own. If
another coordinator already holds the home's lease, the session leaves coordination to it
and only brings workers. `tuiflow.cli.runlocal` draws its progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from spool import Home, LeaseHeldError, layout, perms
from spool.atomic import open_for_append
from spool.watch import WakePipe
from tuiflow.engine.client import Client
from tuiflow.engine.coordinator import Coordinator, freeze_heap
from tuiflow.engine.model import Definition
from tuiflow.engine.runstate import WF_TERMINAL, Action, Changed, RunState
from tuiflow.errors import TuiflowError
from workers.forked import ForkedProcess
from workers.worker import Worker, install_stop_handlers

log = logging.getLogger("tuiflow.engine.local")


class LocalRun:
    """One run-local session (also usable from Python and tests)."""

    def __init__(
        self,
        home: Home,
        definition: Definition,
        *,
        workers: int | None = None,
        on_change: Callable[[str, Action, RunState], None] | None = None,
        worker_mode: str = "process",
        slots: int = 1,
    ):
        self.home = home
        self.definition = definition
        self.n_workers = workers or os.cpu_count() or 1
        self.external_coordinator: str | None = None
        self.wf_id: str | None = None
        self.interrupted = False
        self._user_on_change = on_change
        self._lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        # Forked workers and the coordinator poke each other through wake pipes, as threads
        # call each other's wake(): a hop does not wait for the filesystem watcher.
        self._coordinator_wake = WakePipe() if worker_mode == "process" else None
        self._worker_wakes: list[WakePipe] = []  # one per forked worker
        self.coordinator = Coordinator(
            home,
            on_change=self._on_change,
            after_commit=self._wake_workers,
            sweep_interval=0.5,
            wake_fd=self._coordinator_wake.fileno() if self._coordinator_wake else None,
        )
        # One store: the coordinator takes the definition it is about to run from memory,
        # not decoded again from the file just written (~10 ms for 1,000 tasks, all of it
        # on the way to the first task).
        self.client = Client(home, store=self.coordinator.store)
        self.queues = sorted({t.queue for t in definition.tasks})
        # executors with a long-lived process start with the workers, not at the first task
        self.warm = sorted({t.executor for t in definition.tasks} & {"python"})
        self.worker_mode = worker_mode
        self.slots = slots
        self.workers: list[Worker] = []
        self.worker_procs: list[subprocess.Popen | ForkedProcess] = []
        if worker_mode == "thread":
            self.workers = [
                Worker(
                    home,
                    self.queues,
                    slots=slots,
                    worker_id=f"local-{os.getpid()}-{i}",
                    wake=self.coordinator.wake,
                    warm=self.warm,
                )
                for i in range(self.n_workers)
            ]
        elif worker_mode != "process":
            raise ValueError(f"worker mode must be 'process' or 'thread', not {worker_mode!r}")
        self.threads: list[threading.Thread] = []
        self.crashed: list[str] = []
        self.started = time.monotonic()

    # -------------------------------------------------------------- events
    def _on_change(self, wf_id: str, action: Action, run: RunState) -> None:
        if self._user_on_change is not None:
            self._user_on_change(wf_id, action, run)
        if wf_id != self.wf_id or not isinstance(action, Changed):
            return
        if action.state == "completed" and len(run) > 100:
            return  # a line per completed task would drown big workflows; the bars tell it
        name = run.definition.tasks[action.idx].name
        text = f"{action.state:<15} {name}"
        if action.reason and action.state != "completed":
            text += f"  ({action.reason.splitlines()[0][:160]})"
        with self._lock:
            self._lines.append((text, action.state))

    def _wake_workers(self, queued: int) -> None:
        """After a commit that queued tasks: workers look for them now, not at their next poll."""
        if not queued:
            return
        for w in self.workers:
            w.wake()
        for pipe in self._worker_wakes:
            pipe.poke()

    # ----------------------------------------------------------------- run
    def start(self) -> str:
        try:
            self.coordinator.acquire(wait=0.5)
        except LeaseHeldError as e:
            self.external_coordinator = str(e)
        if self.worker_mode == "process":
            self._spawn_workers()  # they start up while we submit
        self.wf_id = self.client.submit(self.definition)
        freeze_heap()
        if self.external_coordinator is None:
            self._thread(self.coordinator.run, "coordinator", acquire=False)
        for w in self.workers:
            self._thread(w.run, f"worker-{w.id}")
        self.coordinator.wake()
        return self.wf_id

    def _spawn_workers(self) -> None:
        """Worker processes (one per core by default: the GIL would serialise threads). Each
        has its own session, so a Ctrl-C reaches run-local only, which cancels and then stops
        them; each also stops by itself if run-local dies (its parent pid changes).

        On Linux they are forked from this process when nothing else runs in it yet (no
        other thread: forking then is safe), so they start in milliseconds with everything
        already imported; otherwise each is a `tuiflow worker` process of its own."""
        perms.makedirs(os.path.dirname(layout.worker_log(self.home.root, "any")))
        # Linux only: on macOS a forked child may crash in system frameworks the parent used.
        fork = sys.platform.startswith("linux") and threading.active_count() == 1
        for i in range(self.n_workers):
            worker_id = f"local-{os.getpid()}-{i}"
            log_path = layout.worker_log(self.home.root, worker_id)
            if fork:
                self.worker_procs.append(self._fork_worker(worker_id, log_path))
                continue
            queue_args = [arg for q in self.queues for arg in ("--queue", q)]
            queue_args += [arg for name in self.warm for arg in ("--warm", name)]
            with open(log_path, "ab") as log_file:
                self.worker_procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tuiflow",
                            "worker",
                            "--home",
                            self.home.root,
                            "--id",
                            worker_id,
                            "--slots",
                            str(self.slots),
                            "--parent-pid",
                            str(os.getpid()),
                            *queue_args,
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=log_file,
                        start_new_session=True,
                    )
                )

    def _fork_worker(self, worker_id: str, log_path: str) -> ForkedProcess:
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()  # else the child would write our buffered output again
        wake = WakePipe()
        pid = os.fork()
        if pid:
            self._worker_wakes.append(wake)
            return ForkedProcess(pid)
        code = 1
        try:
            os.setsid()
            out = open_for_append(log_path)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(out)
            os.close(null)
            root = logging.getLogger()
            for handler in list(root.handlers):
                root.removeHandler(handler)
            logging.basicConfig(
                level=logging.INFO,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                stream=sys.stderr,
            )
            coordinator = self._coordinator_wake
            worker = Worker(
                self.home,
                self.queues,
                slots=self.slots,
                worker_id=worker_id,
                parent_pid=parent,
                warm=self.warm,
                wake_fd=wake.fileno(),
                wake=None if coordinator is None else coordinator.poke,
            )
            install_stop_handlers(lambda hard: worker.stop(drain=not hard))
            worker.run()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)  # never return into run-local's code (nor run its exit handlers)

    def _thread(self, target: Callable[..., Any], name: str, **kwargs: Any) -> None:
        def guarded() -> None:
            try:
                target(**kwargs)
            except Exception as e:
                log.exception("%s crashed", name)
                self.crashed.append(f"{name}: {type(e).__name__}: {e}")

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def snapshot(self) -> RunState | None:
        """The freshest state: the coordinator's own (in memory) or the stored one."""
        assert self.wf_id is not None
        loaded = self.coordinator.runs.peek(self.wf_id)
        if loaded is not None:
            return loaded.run
        with contextlib.suppress(Exception):
            return self.client.run(self.wf_id)
        return None

    def finished(self) -> bool:
        """The workflow has ended and nothing of it runs. Asked of the coordinator's state in
        memory while it holds the workflow (no file read: on NFS the summary's path walk,
        open, read and close cost a round trip each, every poll); of the stored summary
        otherwise (another coordinator runs it, or ours has not loaded it, or let it go)."""
        if not self.wf_id:
            return False
        loaded = self.coordinator.runs.peek(self.wf_id) if self.external_coordinator is None else None
        if loaded is not None:
            return loaded.run.terminal and not loaded.run.count_dict()["running"]
        s = self.client.store.summary(self.wf_id)
        return bool(s and s.get("state") in WF_TERMINAL and not self._running_tasks(s))

    @staticmethod
    def _running_tasks(summary: dict[str, Any]) -> int:
        return summary.get("counts", {}).get("running", 0)

    def cancel(self) -> None:
        if self.wf_id:
            self.client.cancel(self.wf_id)
            self.coordinator.wake()

    def stop(self) -> None:
        """Stop the workers (they finish what they run), then the coordinator."""
        for w in self.workers:
            w.stop(drain=not self.interrupted)
        for proc in self.worker_procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # drain: finish running attempts, claim no more
        for proc in self.worker_procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)  # hard stop: kills its attempts' process groups
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for t in self.threads[1 if self.external_coordinator is None else 0 :]:
            t.join(timeout=60)
        self.coordinator.stop()
        for t in self.threads:
            t.join(timeout=30)

    def wait(self, poll: float = 0.1, on_tick: Callable[[], None] | None = None) -> None:
        while not self.finished():
            dead = [p for p in self.worker_procs if p.poll() is not None]
            if dead and len(dead) == len(self.worker_procs):
                self.crashed.append(
                    f"all worker processes exited (codes {[p.returncode for p in dead]}; "
                    f"logs in {os.path.dirname(layout.worker_log(self.home.root, 'any'))})"
                )
            if self.crashed:
                raise TuiflowError(f"run-local stopped: {self.crashed[0]} (the workflow is left as it was)")
            if on_tick is not None:
                on_tick()
            time.sleep(poll)
        if on_tick is not None:
            on_tick()

    def drain_lines(self) -> list[tuple[str, str]]:
        """The lines that tell what happened since the last call, as (text, state)."""
        with self._lock:
            lines, self._lines = self._lines, []
        return lines
