"""The python executor: calls ``module:function(**kwargs)`` in a long-lived subprocess.

One executor process per worker slot, reused task after task so imports (and models)
stay loaded. The worker waits for its reply with the attempt's deadline and stop checks;
a timeout, a cancel or a crash kills the process (and its group) and the next task gets
a fresh one. A worker with one thread forks the process (`pyrunner.fork_serving`); one
with threads starts a fresh interpreter.

The executor process opens nothing in the home: what a task printed waits in its
node-local scratch files, and its return value comes back in the reply. Here, the worker
copies the printed bytes into the attempt's logs, capped at ``max_log_bytes`` (only the
head and the tail are read: `logcap.CappedLog.absorb`), and writes the output file, both
through the attempt's open directory (`ctx.files`). A killed or crashed task's output is
rescued from the scratch files the same way.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from analyzer.contract import EXECUTE_SPAN, SETUP_SPAN
from spool import layout
from workers.executors.interface import InlineExecutor, Outcome, Phase, TaskContext
from workers.forked import ForkedProcess
from workers.framing import read_frame, write_frame
from workers.supervise import describe_exit, kill_group
from workers.wire import FailKind

_STREAMS = (("stdout", layout.STDOUT_FILE), ("stderr", layout.STDERR_FILE))

MIN_SETUP_SPAN = 0.005  # seconds


class PythonExecutor(InlineExecutor):
    """Followed by the worker's loop (``inline = True``): `start` writes the request to the
    executor process, whose reply makes `fileno` readable."""

    name = "python"

    #: fork the executor process from the worker when it has one thread (see
    #: `pyrunner.fork_serving`), else start a fresh interpreter
    fork = True

    def __init__(self) -> None:
        self.proc: subprocess.Popen | ForkedProcess | None = None
        self._wfd = -1
        self._rfd = -1
        self.tasks_run = 0
        self.scratch: str | None = None
        self._t0 = 0.0  # when the current attempt was sent
        # the environment the process last got: (the worker's, the attempt's on top)
        self._env: tuple[dict[str, str], dict[str, str]] | None = None

    def _spawn(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.scratch = tempfile.mkdtemp(prefix="tuiflow-runner-")  # node-local, never the shared home
        try:
            if self.fork and sys.platform.startswith("linux") and threading.active_count() == 1:
                from workers.pyrunner import fork_serving

                self.proc = ForkedProcess(fork_serving(to_child_r, from_child_w, self.scratch, pythonpath))
            else:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "workers.pyrunner",
                        str(to_child_r),
                        str(from_child_w),
                        self.scratch,
                        str(os.getpid()),
                    ],
                    pass_fds=(to_child_r, from_child_w),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                    env=dict(os.environ, PYTHONPATH=pythonpath),
                )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._wfd, self._rfd = to_child_w, from_child_r
        self._env = None  # a new process gets the whole environment with its first task

    def _discard(self, ctx: TaskContext | None = None, grace: float = 0.0) -> int | None:
        proc, self.proc = self.proc, None
        for fd in (self._wfd, self._rfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wfd = self._rfd = -1
        if proc is None:
            return None
        kill_group(proc, grace)
        try:
            if ctx is not None:
                self._copy_printed(ctx, proc.pid)  # what a killed or crashed task printed
        finally:
            if self.scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
                self.scratch = None
        return proc.returncode

    def _copy_printed(self, ctx: TaskContext, pid: int, sizes: list[int] | None = None) -> None:
        """Copy what the task printed (`sizes`: bytes of stdout and stderr; None: all the
        scratch files hold) from the executor process's scratch files (named by
        `pyrunner.Runner`, in its node-local scratch directory) into the attempt's logs."""
        assert ctx.files is not None
        for i, (stream, name) in enumerate(_STREAMS):
            if sizes is not None and not sizes[i]:
                continue
            try:
                src = os.open(f"{self.scratch}/{stream}.{pid}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                n = sizes[i] if sizes is not None else os.fstat(src).st_size
                if n:
                    with ctx.files.log(name) as log:
                        log.absorb(src, n)
            finally:
                os.close(src)

    def _take_value(self, ctx: TaskContext, reply: dict) -> None:
        """Write the task's return value (JSON text in the reply, or in a scratch file) as
        its output file; it replaces one the task may have written itself."""
        data: bytes | None = None
        if "value" in reply:
            data = reply["value"].encode()
        elif "value_file" in reply:
            with open(reply["value_file"], "rb") as f:
                data = f.read()
            os.unlink(reply["value_file"])
        if data is not None:
            assert ctx.files is not None
            ctx.files.write(layout.OUTPUT_FILE, data)
            ctx.output = data

    def warm(self) -> None:
        """Start the executor process ahead of the first task (it imports while we wait)."""
        if self.proc is None or self.proc.poll() is not None:
            self._discard()
            self._spawn()

    def run(self, ctx: TaskContext) -> Outcome:
        """Run one attempt to its end (on a slot thread); the worker's loop uses
        `start` / `fileno` / `finish` / `stop` instead and follows the attempt itself."""
        outcome = self.start(ctx)
        if outcome is not None:
            return outcome
        while True:
            timeout = 0.05
            if ctx.deadline is not None:
                timeout = max(0.0, min(timeout, ctx.deadline - time.monotonic()))
            ready, _, _ = select.select([self._rfd], [], [], timeout)
            if ready:
                return self.finish(ctx)
            timed_out = ctx.deadline is not None and time.monotonic() >= ctx.deadline
            stop = FailKind.TIMEOUT if timed_out else ctx.should_stop()
            if stop:
                return self.stop(ctx, stop)

    def start(self, ctx: TaskContext) -> Outcome | None:
        """Send the attempt to the executor process. None: it runs (`fileno` becomes
        readable when it ends); an Outcome: it could not start."""
        self._t0 = time.time()
        self.warm()  # a process that died while idle is replaced, not blamed on this attempt
        spec = ctx.msg.spec
        request = {
            "call": spec["call"],
            "kwargs": spec.get("kwargs", {}),
            "cwd": ctx.cwd,
            "base_dir": ctx.msg.base_dir or ctx.cwd,
        }
        base, task = ctx.base_env, ctx.task_env
        if self._env is None or self._env[0] is not base:
            request["env"] = ctx.env
        else:  # what changed since the last task: a few variables, not the whole environment
            last = self._env[1]
            changed = {k: v for k, v in task.items() if last.get(k, base.get(k)) != v}
            unset = []
            for k in last:
                if k not in task:  # back to what the worker has, or gone
                    if k in base:
                        changed[k] = base[k]
                    else:
                        unset.append(k)
            request["env_set"], request["env_unset"] = changed, unset
        try:
            write_frame(self._wfd, request)
            self._env = (base, task)
        except (BrokenPipeError, OSError) as e:
            code = self._discard()
            return Outcome.failed(
                FailKind.ERROR, f"python executor process unavailable ({e}; {describe_exit(code or 0)})"
            )
        return None

    def fileno(self) -> int:
        return self._rfd

    def finish(self, ctx: TaskContext) -> Outcome:
        """The outcome of the started attempt, once `fileno` is readable."""
        try:
            reply = read_frame(self._rfd)
        except (OSError, ValueError):
            reply = None
        if reply is None:
            code = self._discard(ctx)
            assert ctx.files is not None
            err = ctx.files.tail(layout.STDERR_FILE, 2000)
            return Outcome.failed(
                FailKind.ERROR,
                f"python executor process died ({describe_exit(code if code is not None else -9)})"
                + (f"\n{err}" if err else ""),
                exit_code=code,
            )
        self.tasks_run += 1
        sizes = reply.get("out")
        if sizes and any(sizes) and self.proc is not None:
            self._copy_printed(ctx, self.proc.pid, sizes)
        phases = []
        if "import" in reply:
            setup_end = reply["import"][1]
            # Setup is a span when it is real work (a cold process, a first import, a model
            # load); a warm call's microseconds of lookup would only add noise.
            if setup_end - self._t0 > MIN_SETUP_SPAN:
                phases.append(Phase(SETUP_SPAN, self._t0, setup_end, {"warm": self.tasks_run > 1}))
            phases.append(Phase(EXECUTE_SPAN, *reply["execute"]))
        if reply.get("ok"):
            self._take_value(ctx, reply)
            return Outcome.completed(phases=phases)
        return Outcome.failed(FailKind.ERROR, reply.get("error") or "failed", phases=phases)

    def stop(self, ctx: TaskContext, reason: FailKind) -> Outcome:
        """End the started attempt for `reason` (timeout, cancelled, worker stopped): the
        executor process is killed (its group, with the grace period) and replaced later."""
        self._discard(ctx, ctx.kill_grace)
        phases = [Phase(EXECUTE_SPAN, self._t0, time.time())]
        if reason is FailKind.TIMEOUT:
            return Outcome.failed(
                reason, f"timed out after {ctx.msg.timeout:g} s; executor process killed", phases=phases
            )
        return Outcome.failed(reason, f"{reason}: executor process killed", phases=phases)

    def close(self) -> None:
        self._discard(grace=2.0)
