"""The shell executor: a command string (run by /bin/sh -c) or an argv list, in its own
process group, stdout and stderr going to files in the attempt directory."""

from __future__ import annotations

import os
import subprocess
import time

from analyzer.contract import EXECUTE_SPAN, SETUP_SPAN
from spool.atomic import open_for_append
from workers.executors.interface import Executor, Outcome, Phase, TaskContext
from workers.supervise import describe_exit, kill_group, tail, wait_or_stop
from workers.wire import FailKind


class ShellExecutor(Executor):
    """Runs on a slot thread (``inline = False``): `run` waits for the command's process."""

    name = "shell"

    def run(self, ctx: TaskContext) -> Outcome:
        spec = ctx.msg.spec
        args = list(spec["argv"]) if "argv" in spec else ["/bin/sh", "-c", spec["run"]]
        t0 = time.time()
        with (
            os.fdopen(open_for_append(ctx.stdout_path), "ab") as out,
            os.fdopen(open_for_append(ctx.stderr_path), "ab") as err,
        ):
            try:
                proc = subprocess.Popen(
                    args,
                    cwd=ctx.cwd,
                    env=ctx.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # its own process group: killing it reaches its children
                    close_fds=True,
                )
            except FileNotFoundError as e:
                return Outcome.failed(
                    FailKind.ERROR, f"command not found: {e.filename or args[0]}", exit_code=127
                )
            except PermissionError as e:
                return Outcome.failed(
                    FailKind.ERROR,
                    f"cannot execute {e.filename or args[0]}: permission denied",
                    exit_code=126,
                )
            except OSError as e:
                return Outcome.failed(FailKind.ERROR, f"cannot start {args[0]!r}: {e.strerror}")
        t1 = time.time()
        returncode, stop = wait_or_stop(proc, ctx.deadline, ctx.should_stop)
        if stop is not None:
            kill_group(proc, ctx.kill_grace)
            t2 = time.time()
            phases = [Phase(EXECUTE_SPAN, t1, t2, {"pid": proc.pid})]
            if stop is FailKind.TIMEOUT:
                return Outcome.failed(
                    stop, f"timed out after {ctx.msg.timeout:g} s; process group killed", phases=phases
                )
            return Outcome.failed(stop, f"{stop}: process group killed", phases=phases)
        # Reap whatever the command left running in its group: a finished task owns nothing.
        kill_group(proc, 0)
        t2 = time.time()
        phases = [Phase(SETUP_SPAN, t0, t1), Phase(EXECUTE_SPAN, t1, t2, {"pid": proc.pid})]
        if returncode == 0:
            return Outcome.completed(exit_code=0, phases=phases)
        err_tail = tail(ctx.stderr_path, 2000)
        message = f"{describe_exit(returncode)}" + (f"\n{err_tail}" if err_tail else "")
        return Outcome.failed(FailKind.ERROR, message, exit_code=returncode, phases=phases)

    def close(self) -> None:
        pass


def resolve_cwd(base_dir: str, cwd: str | None) -> str:
    if not cwd:
        return base_dir
    return cwd if os.path.isabs(cwd) else os.path.join(base_dir, cwd)
