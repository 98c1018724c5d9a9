"""The shell executor: a command string (run by /bin/sh -c) or an argv list, in its own
process group. Its stdout and stderr are pipes that the slot thread supervising it copies
into the attempt's logs, capped at the home's ``max_log_bytes`` (`workers.logcap`): the
same thread that waits for the command's exit, so the cap costs no thread, and a task
that floods its output leaves a bounded log."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

from analyzer.contract import EXECUTE_SPAN, SETUP_SPAN
from spool import layout
from workers.executors.interface import Executor, Outcome, Phase, TaskContext
from workers.logcap import CappedLog, Pump
from workers.supervise import describe_exit, kill_group
from workers.wire import FailKind


class ShellExecutor(Executor):
    """Runs on a slot thread (``inline = False``): `run` waits for the command's process."""

    name = "shell"

    def run(self, ctx: TaskContext) -> Outcome:
        assert ctx.files is not None
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(ctx.files.log(layout.STDOUT_FILE))
            err = stack.enter_context(ctx.files.log(layout.STDERR_FILE))
            return self._run(ctx, out, err)

    def _run(self, ctx: TaskContext, out: CappedLog, err: CappedLog) -> Outcome:
        spec = ctx.msg.spec
        args = list(spec["argv"]) if "argv" in spec else ["/bin/sh", "-c", spec["run"]]
        t0 = time.time()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pump = Pump([(out_r, out), (err_r, err)])
        try:
            try:
                proc = subprocess.Popen(
                    args,
                    cwd=ctx.cwd,
                    env=ctx.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    start_new_session=True,  # its own process group: killing it reaches its children
                    close_fds=True,
                )
            finally:
                os.close(out_w)
                os.close(err_w)
        except OSError as e:
            pump.close()
            return _not_started(e, args)
        try:
            t1 = time.time()
            try:
                returncode, stop = pump.run(proc, ctx.deadline, ctx.should_stop)
            except BaseException:  # its log could not be written (a full disk): it must not run on, unseen
                kill_group(proc, 0)
                raise
            if stop is not None:
                kill_group(proc, ctx.kill_grace, wait=pump.wait)
                pump.close()
                t2 = time.time()
                phases = [Phase(EXECUTE_SPAN, t1, t2, {"pid": proc.pid})]
                if stop is FailKind.TIMEOUT:
                    return Outcome.failed(
                        stop, f"timed out after {ctx.msg.timeout:g} s; process group killed", phases=phases
                    )
                return Outcome.failed(stop, f"{stop}: process group killed", phases=phases)
            # Reap whatever the command left running in its group: a finished task owns nothing.
            kill_group(proc, 0)
        finally:
            pump.close()  # what is left in the pipes; a no-op once closed
        t2 = time.time()
        phases = [Phase(SETUP_SPAN, t0, t1), Phase(EXECUTE_SPAN, t1, t2, {"pid": proc.pid})]
        if returncode == 0:
            return Outcome.completed(exit_code=0, phases=phases)
        err.finish()
        err_tail = err.tail(2000)
        message = f"{describe_exit(returncode)}" + (f"\n{err_tail}" if err_tail else "")
        return Outcome.failed(FailKind.ERROR, message, exit_code=returncode, phases=phases)

    def close(self) -> None:
        pass


def _not_started(e: OSError, args: list[str]) -> Outcome:
    if isinstance(e, FileNotFoundError):
        return Outcome.failed(FailKind.ERROR, f"command not found: {e.filename or args[0]}", exit_code=127)
    if isinstance(e, PermissionError):
        return Outcome.failed(
            FailKind.ERROR, f"cannot execute {e.filename or args[0]}: permission denied", exit_code=126
        )
    return Outcome.failed(FailKind.ERROR, f"cannot start {args[0]!r}: {e.strerror}")


def resolve_cwd(base_dir: str, cwd: str | None) -> str:
    if not cwd:
        return base_dir
    return cwd if os.path.isabs(cwd) else os.path.join(base_dir, cwd)
