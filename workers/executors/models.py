"""The model executors (``transformers``: text generation, ``diffusers``: images): each runs
its attempts in the slot's model host, the model kept warm.

Each slot has one model host (`workers.models.host`), a fresh interpreter started with the
attempt's GPUs in ``CUDA_VISIBLE_DEVICES`` and kept for as long as tasks ask for the same
GPUs: the models it loaded stay loaded (`workers.models.residency`), so the second task on
a model pays no load. An attempt given other GPUs than the host was started with gets a
new host (CUDA cannot move a process to other devices). The attempt runs on a slot thread
(``inline = False``): the request goes down the host's pipe and the thread waits for the
reply, the attempt's deadline and its stop checks; a timeout, a cancel or a host that died
ends the host (SIGKILL of its process group), and the next task starts a fresh one.

The reply's output is written as the attempt's ``output.json``; files the host made (the
diffusers executor's PNGs) are written into the attempt's directory by the worker (the host
opens nothing in the home), recorded as asset rows (path, bytes, sha256) and named in the
output by path. The reply's phases (model load on a miss, prompt building, generation with
the OpenTelemetry GenAI attributes) become spans. What the host printed (library warnings,
a traceback) goes to the attempt's stderr log.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, ClassVar, cast

from analyzer import contract as c
from spool import layout
from workers import gpustats, outputs
from workers.executors.interface import Executor, Outcome, Phase, TaskContext
from workers.framing import read_frame, write_frame
from workers.models import imagegen, textgen, vllmgen
from workers.models.residency import GPU_MEMORY_BUDGET_ENV, MODEL_TTL_ENV, MODELS_PER_SLOT_ENV
from workers.supervise import describe_exit, kill_group
from workers.wire import FailKind

log = logging.getLogger("workers.worker")  # the daemon's log, whichever part speaks

#: seconds between checks of the deadline and the stop markers while a reply is awaited
POLL = 0.1
#: ``error.type`` of a task that ran out of GPU memory even alone
CUDA_OOM = "cuda_oom"


class ModelExecutor(Executor):
    """An executor whose attempts its slot's model host runs (see the module docstring);
    the subclasses name the host's backend."""

    name: ClassVar[str]
    #: what two tasks must share to share a loaded model (the backend's `key`)
    model_key: ClassVar[Callable[[dict[str, Any]], tuple[str, ...]]]
    #: True: a host holds one model, and another model gets a fresh host (vLLM cannot give
    #: its GPU memory back in-process)
    one_model_per_host: ClassVar[bool] = False

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.gpus: list[int] | None = None
        self._wfd = self._rfd = -1
        #: the hosts' stdout and stderr: a node-local file, unlinked at once (nothing is left
        #: behind however the worker ends), appended to by each host this executor starts
        self._log_fd = -1
        self.models: set[tuple[str, ...]] = set()  # what the host said it holds
        self._baseline: list[int] | None = None  # NVML's memory used before the host started
        self._baseline_gpus: list[int] = []

    # ------------------------------------------------------------------ the host
    def _start(self, gpus: list[int], base_env: dict[str, str]) -> None:
        to_host_r, to_host_w = os.pipe()
        from_host_r, from_host_w = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(base_env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        for name in (
            MODEL_TTL_ENV,
            MODELS_PER_SLOT_ENV,
            GPU_MEMORY_BUDGET_ENV,
        ):  # the worker's bounds (tasks' env has no TUIFLOW_*)
            if name in os.environ:
                env[name] = os.environ[name]
        if gpus:  # fixed for the host's life; a worker that hands out no GPUs leaves them as they are
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        if gpus:  # what its GPUs use before it: its memory must come back to this when it ends
            self._baseline, self._baseline_gpus = gpustats.memory_used(gpus), list(gpus)
        if self._log_fd < 0:
            self._log_fd = _unlinked_append_file()
        fd = self._log_fd
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.models.host", str(to_host_r), str(from_host_w)],
                pass_fds=(to_host_r, from_host_w),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # its own group: ending it ends whatever it started
            )
        finally:
            os.close(to_host_r)
            os.close(from_host_w)
        self._wfd, self._rfd, self.gpus = to_host_w, from_host_r, list(gpus)

    def _confirm_memory_freed(self) -> None:
        """After a host ended, wait (briefly) until NVML sees its GPUs' memory back at what
        they used before it started; say so in the log if it does not come back."""
        baseline, self._baseline = self._baseline, None
        if baseline is None or not self._baseline_gpus:
            return
        if gpustats.wait_memory_freed(self._baseline_gpus, baseline) is False:
            log.warning(
                "GPU memory of %s did not come back after the model host ended (now %s bytes, was %s)",
                self._baseline_gpus,
                gpustats.memory_used(self._baseline_gpus),
                baseline,
            )

    def _end(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, 0)
        for fd in (self._wfd, self._rfd):
            if fd >= 0:
                os.close(fd)
        self.proc, self.gpus, self._wfd, self._rfd = None, None, -1, -1
        self.models = set()

    def _host_output(self) -> bytes:
        """What the host printed since it was last read (and forget it: the host appends,
        so it writes from the start again)."""
        if self._log_fd < 0:
            return b""
        chunks, at = [], 0
        while chunk := os.pread(self._log_fd, 1 << 20, at):
            chunks.append(chunk)
            at += len(chunk)
        os.ftruncate(self._log_fd, 0)
        return b"".join(chunks)

    def _ensure_host(self, ctx: TaskContext) -> None:
        """A live host bound to `ctx`'s GPUs (and, for a backend that holds one model per
        process, to its model): the one there is, or a fresh one."""
        stale = self.proc is None or self.proc.poll() is not None or self.gpus != ctx.gpus
        if not stale and self.one_model_per_host and self.models and not self.holds(ctx.msg.spec):
            stale = True  # its engine cannot give its memory back in-process: a fresh host
        if stale:
            self._end()
            self._confirm_memory_freed()
            self._start(ctx.gpus, ctx.base_env)

    # ---------------------------------------------------------------- attempts
    def run(self, ctx: TaskContext) -> Outcome:
        return self.run_batch([ctx])[0]

    def run_batch(self, ctxs: list[TaskContext]) -> list[Outcome]:
        """Run the attempts as one call of the host (one task: a batch of one). The shared
        phases (model load, prompts, generation) go to the first attempt's spans."""
        lead = ctxs[0]
        self._ensure_host(lead)
        t0 = time.time()
        try:
            write_frame(
                self._wfd, {"executor": self.name, "batch": [c.msg.spec.get("with", {}) for c in ctxs]}
            )
        except OSError as e:
            self._end()
            return [Outcome.failed(FailKind.ERROR, f"the model host is gone: {e.strerror}") for _ in ctxs]
        sampler = gpustats.GpuSampler(lead.gpus)  # NVML, where there is one
        sampler.start()
        try:
            stop = self._await_reply(ctxs)
        finally:
            telemetry = sampler.stop()
        self._copy_host_output(ctxs)
        if stop is not None:
            self._end()
            if stop is FailKind.TIMEOUT:
                return [Outcome.failed(stop, "timed out; model host ended") for _ in ctxs]
            return [Outcome.failed(ctx.should_stop() or stop, f"{stop}: model host ended") for ctx in ctxs]
        reply = read_frame(self._rfd)
        if reply is None:
            code = self.proc.wait() if self.proc is not None else None
            self._end()
            died = f"the model host died ({describe_exit(code)})"
            return [Outcome.failed(FailKind.ERROR, died) for _ in ctxs]
        if reply["ok"]:
            self.models = {tuple(k) for k in reply.get("models", ())}
            outcomes = [
                self._conclude(ctx, result) for ctx, result in zip(ctxs, reply["results"], strict=True)
            ]
            phases = [
                Phase(n, start, end, dict(a), [tuple(e) for e in ev])
                for n, start, end, a, ev in reply["phases"]
            ]
            for phase in phases:
                if phase.name == c.EXECUTE_SPAN:
                    phase.attributes.update(telemetry)
            outcomes[0].phases = phases or [Phase(c.EXECUTE_SPAN, t0, time.time())]
        else:  # the batch as a whole (its model would not load)
            outcomes = [_failed(reply) for _ in ctxs]
        if any(o.attributes.get(c.ATTR_ERROR_TYPE) == CUDA_OOM for o in outcomes):
            self._end()  # a fresh host takes the next task with the card's memory whole
        return outcomes

    def _conclude(self, ctx: TaskContext, result: dict[str, Any]) -> Outcome:
        """One task's outcome from its result: its output and files written, or its failure."""
        reason = ctx.should_stop()
        if reason is not None:  # cancelled while the rest of its batch ran
            return Outcome.failed(reason, f"{reason} while its batch ran")
        if not result["ok"]:
            return _failed(result)
        assert ctx.files is not None
        output = result["output"]
        for key, files in result.get("files", {}).items():
            output[key] = [self._keep(ctx, name, data) for name, data in files]
        data = json.dumps(output).encode()
        ctx.files.write(layout.OUTPUT_FILE, data)
        ctx.output = data
        return Outcome.completed(attributes=_usage(output))

    def holds(self, spec: dict[str, Any]) -> bool:
        try:
            return type(self).model_key(spec.get("with", {})) in self.models
        except (KeyError, TypeError):
            return False

    def loaded(self) -> list[tuple[str, ...]]:
        return sorted(self.models) if self.proc is not None else []

    @staticmethod
    def _keep(ctx: TaskContext, name: str, data: bytes) -> str:
        """Write a file the host made into the attempt's directory, record it as an asset,
        and return its path."""
        assert ctx.files is not None
        if "/" in name or name.startswith("."):
            raise ValueError(f"the model host named a file {name!r}")  # never a path of its choosing
        ctx.files.write(name, data)
        path = ctx.files.file_path(name)
        outputs.record_asset(ctx.msg, ctx.files, os.path.relpath(path, ctx.home_root), data)
        return path

    def _await_reply(self, ctxs: list[TaskContext]) -> FailKind | None:
        """Wait until the host's reply is readable; or why the attempts must stop first: the
        last of their deadlines passed, or every one of them must stop (one cancelled
        task of a batch does not stop the others: it fails once the call is over)."""
        deadlines = [ctx.deadline for ctx in ctxs]
        deadline = None if None in deadlines else max(cast(list[float], deadlines))
        while True:
            if select.select([self._rfd], [], [], POLL)[0]:
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return FailKind.TIMEOUT
            reasons = [ctx.should_stop() for ctx in ctxs]
            if all(reasons):
                return reasons[0]

    def _copy_host_output(self, ctxs: list[TaskContext]) -> None:
        """What the host printed, into each attempt's stderr log."""
        data = self._host_output()
        for ctx in ctxs if data else ():
            if ctx.files is not None:
                with ctx.files.log(layout.STDERR_FILE) as log:
                    log.write(data)

    def close(self) -> None:
        self._end()
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1


def _unlinked_append_file() -> int:
    """A descriptor of a new temporary file that no name refers to, opened for appending."""
    fd, path = tempfile.mkstemp(prefix="tuiflow-modelhost-", suffix=".log")
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND)
    finally:
        os.close(fd)
        os.unlink(path)


def _failed(result: dict[str, Any]) -> Outcome:
    """The outcome of a task the host could not run; out of memory (even alone) carries
    ``error.type`` cuda_oom."""
    if result.get("kind") == "oom":
        return Outcome.failed(
            FailKind.ERROR,
            f"CUDA out of memory, even alone: {result['error']}",
            attributes={c.ATTR_ERROR_TYPE: CUDA_OOM},
        )
    return Outcome.failed(FailKind.ERROR, result["error"])


def _usage(output: dict[str, Any]) -> dict[str, Any]:
    """What one task's output says of its share of a call, for its root span."""
    usage: dict[str, Any] = {}
    if "output_tokens" in output:
        usage[c.ATTR_GENAI_INPUT_TOKENS] = sum(output["input_tokens"])
        usage[c.ATTR_GENAI_OUTPUT_TOKENS] = sum(output["output_tokens"])
    if "seeds" in output:
        usage[c.ATTR_IMAGES] = len(output["seeds"])
    return usage


class TransformersExecutor(ModelExecutor):
    """Text generation with transformers (`workers.models.textgen`)."""

    name = "transformers"
    model_key = staticmethod(textgen.key)


class VllmExecutor(ModelExecutor):
    """Text generation with vLLM's offline engine (`workers.models.vllmgen`), one engine per
    host: a task of another model ends the host and starts a fresh one, whose memory NVML
    is asked to confirm came back where it can."""

    name = "vllm"
    model_key = staticmethod(vllmgen.key)
    one_model_per_host = True


class DiffusersExecutor(ModelExecutor):
    """Images with diffusers (`workers.models.imagegen`)."""

    name = "diffusers"
    model_key = staticmethod(imagegen.key)
