"""The python executor process: imports and calls task functions, one at a time, for as
long as it lives (so imports and loaded models stay warm between tasks).

Started by `workers.executors.python` with two pipe descriptors; reads requests and
writes replies as msgpack frames (`workers.framing`). For each task it swaps in the
task's environment, working directory and sys.path entry, calls
``module:function(**kwargs)``, writes a non-None return value as JSON to the output file,
and puts everything back. A task that crashes or hangs takes this process down; the
worker starts a new one.

The task's stdout and stderr (file descriptors 1 and 2) are two scratch files of this
process (node-local: ``<scratch>/stdout.<pid>``, ``<scratch>/stderr.<pid>``); the reply
says how many bytes the task wrote to each (``out``), and the worker copies them, capped,
into the attempt's ``stdout.log`` / ``stderr.log`` through the attempt directory it opened
(`workers.attemptdir`), so a task that prints nothing costs no files. The scratch files are
emptied when the next task starts. A non-None return value comes back as JSON text in the
reply (``value``; above `VALUE_INLINE_MAX` bytes, in the scratch file
``<scratch>/output.<pid>``, ``value_file``), and the worker writes the output file: this
process opens nothing in the home.

    python -m workers.pyrunner READ_FD WRITE_FD SCRATCH_DIR [WORKER_PID]

Given its worker's pid, on Linux it asks the kernel to SIGKILL it when the worker dies: a
worker that is SIGKILLed cannot stop its executors itself, and one left running would
finish (or hang on to a GPU for) a task whose attempt has already been given up.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from workers.framing import read_frame, write_frame
from workers.traceparent import context_from_traceparent


class LazyTaskProvider(trace.TracerProvider):
    """This process's tracer provider, built the first time a task asks for a tracer: the
    SDK's ~50 ms of imports are paid by a process whose tasks make spans, not by every
    executor start. Spans go to the running task's ``spans.jsonl``
    (`workers.tracing.task_process_provider`)."""

    def __init__(self) -> None:
        self._real: Any = None

    def _provider(self) -> Any:
        if self._real is None:
            from workers.tracing import task_process_provider

            self._real = task_process_provider("tuiflow-python-executor")
        return self._real

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return self._provider().get_tracer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # add_span_processor, force_flush, shutdown...
        return getattr(self._provider(), name)


#: a return value's JSON up to this many bytes travels in the reply, a larger one in a scratch file
VALUE_INLINE_MAX = 8 << 20


class Runner:
    def __init__(self, scratch_dir: str):
        os.makedirs(scratch_dir, exist_ok=True)
        # fds 1 and 2 point at scratch files for the life of the process
        for fd, name in ((1, "stdout"), (2, "stderr")):
            scratch = os.open(
                f"{scratch_dir}/{name}.{os.getpid()}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600
            )
            os.dup2(scratch, fd)
            os.close(scratch)
        self.scratch_dir = scratch_dir
        self._printed = False  # the scratch files hold the last task's output
        self.base_env = dict(os.environ)
        self.env = dict(self.base_env)
        self.base_path = list(sys.path)

    def _set_env(self, req: dict[str, Any]) -> None:
        """The task's environment: whole (a first task), or what changed since the last one.
        Only what differs is put: putenv for every variable of every task is the bulk of a
        no-op task's cost otherwise."""
        if "env" in req:
            env = req["env"]
            unset = [k for k in self.env if k not in env]
            changed = {k: v for k, v in env.items() if self.env.get(k) != v}
        else:
            unset, changed = req["env_unset"], req["env_set"]
        for key in unset:
            os.environ.pop(key, None)
            self.env.pop(key, None)
        for key, value in changed.items():
            os.environ[key] = value
            self.env[key] = value

    def run_one(self, req: dict[str, Any]) -> dict[str, Any]:
        if self._printed:  # the worker copied the last task's output before sending this one
            for fd in (1, 2):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            self._printed = False
        self._set_env(req)
        if os.getcwd() != req["cwd"]:
            os.chdir(req["cwd"])
        sys.path[:] = [p for p in (req["cwd"], req["base_dir"]) if p not in self.base_path] + self.base_path
        # Spans the task makes (tuiflow.span, or any OpenTelemetry instrumentation) are
        # children of the worker's span for this attempt, carried over in $TRACEPARENT.
        token = None
        parent = context_from_traceparent(self.env.get("TRACEPARENT"))
        if parent is not None:
            token = otel_context.attach(parent)
        try:
            reply = self._call(req)
        except SystemExit as e:
            if e.code in (0, None):
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"the task called sys.exit({e.code!r})"}
        except BaseException as e:  # the task's own failure, whatever it is, is reported, not fatal here
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        finally:
            if token is not None:
                otel_context.detach(token)
        reply["out"] = self._printed_sizes()
        return reply

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        module_name, _, func_name = req["call"].partition(":")
        t0 = time.time()
        module = importlib.import_module(module_name)
        func = getattr(module, func_name, None)
        if not callable(func):
            raise AttributeError(f"{module_name} has no function {func_name!r}")
        t1 = time.time()
        value = func(**req["kwargs"])
        t2 = time.time()
        reply: dict[str, Any] = {"ok": True, "import": [t0, t1], "execute": [t1, t2]}
        if value is not None:
            try:
                data = json.dumps(value)
            except (TypeError, ValueError) as e:
                raise TypeError(f"return value of {req['call']} is not JSON-serializable: {e}") from None
            if len(data) <= VALUE_INLINE_MAX:
                reply["value"] = data
            else:
                path = f"{self.scratch_dir}/output.{os.getpid()}"
                with open(path, "w") as f:
                    f.write(data)
                reply["value_file"] = path
        return reply

    def _printed_sizes(self) -> list[int]:
        """Bytes the task wrote to its stdout and its stderr (left in the scratch files)."""
        sys.stdout.flush()
        sys.stderr.flush()
        sizes = [os.fstat(1).st_size, os.fstat(2).st_size]
        self._printed = any(sizes)
        return sizes


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def serve(rfd: int, wfd: int, scratch: str, parent: int | None = None) -> None:
    """Run the requests read from `rfd` one by one, replying on `wfd`, until EOF."""
    if parent is not None:
        _die_with(parent)
    trace.set_tracer_provider(LazyTaskProvider())
    runner = Runner(scratch)
    while (req := read_frame(rfd)) is not None:
        write_frame(wfd, runner.run_one(req))


def main() -> None:
    rfd, wfd, scratch = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    serve(rfd, wfd, scratch, int(sys.argv[4]) if len(sys.argv) > 4 else None)


def fork_serving(rfd: int, wfd: int, scratch: str, pythonpath: str) -> int:
    """Fork this process into an executor process that serves on `rfd`/`wfd`; its pid.

    A worker forks its executors when it has a single thread (fork is unsafe otherwise):
    the child starts in milliseconds with this process's imports, where a fresh interpreter
    takes ~0.1 s before it can run the first task. The child then drops what it inherited
    and a fresh one would not have: its own session, default signal handlers, no logging
    handlers, no descriptors but its pipes, stdin and stdout on /dev/null (like the spawned
    executor's), and a frozen heap, so that no finalizer of an inherited object closes a
    descriptor number a task has reused.
    """
    parent = os.getpid()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # else the child would write our buffered output into a task's log
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _forget_the_parent(rfd, wfd, pythonpath)
        serve(rfd, wfd, scratch, parent)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)  # never return into the worker's code (nor run its exit handlers)


def _forget_the_parent(rfd: int, wfd: int, pythonpath: str) -> None:
    import gc
    import logging
    import signal

    gc.freeze()
    os.setsid()
    signal.set_wakeup_fd(-1)
    for sig in (
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    keep = sorted({0, 1, 2, rfd, wfd})
    for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
        os.closerange(low + 1, high)
    root = logging.getLogger()
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()  # not closed: their descriptors were the parent's
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
            logger.disabled = False
    root.setLevel(logging.WARNING)
    os.environ["PYTHONPATH"] = pythonpath
    sys.argv = [os.path.abspath(__file__)]
    sys.path[0] = os.getcwd()  # as `python -m` would have it


if __name__ == "__main__":
    main()
