"""A model host: one long-lived process per worker slot that keeps models loaded.

    python -m workers.models.host READ_FD WRITE_FD

The worker starts it (`workers.executors.models`) with the slot's GPUs fixed in
``CUDA_VISIBLE_DEVICES`` for its whole life: a fresh interpreter, never forked from a
process that touched CUDA, so a model loaded on GPU 1 stays on GPU 1. It reads one
request frame at a time (`workers.framing`) and answers each with one frame:

    request   {"executor": "transformers", "batch": [{...with...}, ...]}   # one or more tasks
    reply     {"ok": true,
               "results": [{"ok": true, "output": {...},
                            "files": {"images": [[name, bytes], ...]}},   # files the worker writes
                           {"ok": false, "kind": "oom" | "error", "error": "..."}, ...],
               "phases": [[name, start, end, attrs, events], ...],        # shared by the batch
               "models": [[key...], ...]}                                 # what it holds now
              {"ok": false, "error": "...", "kind": "missing" | "error"}  # the whole batch

The tasks of a batch share the model and one generation call. When that call fails, the
batch is cut in halves and each half tried again, down to single tasks: CUDA running out of
memory on a batch too large for the card costs a few calls, not the batch, and a task
with bad parameters fails alone. A single task that still runs out of memory fails as
``oom`` (the worker then ends this host, so the next task gets the card's memory whole).
A failure to load the model fails the whole batch; the host serves the next request
either way, and the worker ends it (SIGKILL of its group) when an attempt times out or is
cancelled.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from typing import Any

from analyzer import contract as c
from workers.framing import read_frame, write_frame
from workers.models import imagegen, textgen, vllmgen
from workers.models.libraries import MissingDependency
from workers.models.residency import (
    DEFAULT_MODELS_PER_SLOT,
    DEFAULT_TTL,
    GPU_MEMORY_BUDGET_ENV,
    MODEL_TTL_ENV,
    MODELS_PER_SLOT_ENV,
    Residency,
)

BACKENDS = {"transformers": textgen, "diffusers": imagegen, "vllm": vllmgen}


def serve(rfd: int, wfd: int, residency: Residency) -> None:
    while True:
        request = read_frame(rfd)
        if request is None:
            return  # the worker closed the pipe: it is stopping
        write_frame(wfd, answer(request, residency))


def answer(request: dict[str, Any], residency: Residency) -> dict[str, Any]:
    backend = BACKENDS.get(request.get("executor"))
    if backend is None:
        return {"ok": False, "kind": "error", "error": f"no model executor {request.get('executor')!r}"}
    specs = request["batch"]
    try:
        t0 = time.time()
        model, load_seconds = residency.get(backend.key(specs[0]), lambda: backend.load(specs[0]))
    except MissingDependency as e:
        return {"ok": False, "kind": "missing", "error": str(e)}
    except Exception as e:  # the tasks' failure (a bad path, a model that does not fit)
        traceback.print_exc()
        return {"ok": False, "kind": _kind(e), "error": f"{type(e).__name__}: {e}"}
    results, phases = _generate(backend, model, specs)
    if load_seconds:
        phases.insert(0, (c.MODEL_LOAD_SPAN, t0, t0 + load_seconds, {c.ATTR_MODEL: str(specs[0]["model"])}))
    for phase in phases:
        if c.ATTR_GENAI_MODEL in phase[3]:
            phase[3][c.ATTR_MODEL_LOAD_SECONDS] = load_seconds
            phase[3][c.ATTR_WARM_HIT] = not load_seconds
    return {
        "ok": True,
        "results": results,
        "phases": [[*p[:4], p[4] if len(p) > 4 else []] for p in phases],  # events: none
        "models": [list(k) for k in residency.loaded()],  # what the worker may route here
    }


def _generate(backend: Any, model: Any, specs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list]:
    """Each spec's result and the phases of the calls made: the batch in one call, or, when
    that fails, each half of it the same way (see the module docstring)."""
    try:
        outputs, phases = backend.generate_batch(model, specs)
    except MissingDependency as e:
        return [{"ok": False, "kind": "missing", "error": str(e)} for _ in specs], []
    except Exception as e:
        kind = _kind(e)
        if kind == "oom":
            _free_cuda_memory()
        if len(specs) == 1:
            traceback.print_exc()
            return [{"ok": False, "kind": kind, "error": f"{type(e).__name__}: {e}"}], []
        print(f"a batch of {len(specs)} failed ({type(e).__name__}): trying each half", file=sys.stderr)
        half = len(specs) // 2
        first, first_phases = _generate(backend, model, specs[:half])
        second, second_phases = _generate(backend, model, specs[half:])
        return first + second, first_phases + second_phases
    results = []
    for output in outputs:
        files = output.pop("files", {})  # the worker writes them into the attempt's directory
        results.append({"ok": True, "output": output, "files": files})
    return results, list(phases)


def _kind(e: BaseException) -> str:
    """ "oom" for CUDA running out of memory (torch's OutOfMemoryError, or the RuntimeError
    older code raises), else "error"."""
    if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
        return "oom"
    return "error"


def _free_cuda_memory() -> None:
    gc.collect()  # the failed call's tensors go once nothing refers to them
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
    ttl = float(os.environ.get(MODEL_TTL_ENV, DEFAULT_TTL))
    max_models = int(os.environ.get(MODELS_PER_SLOT_ENV, DEFAULT_MODELS_PER_SLOT))
    budget = os.environ.get(GPU_MEMORY_BUDGET_ENV)
    residency = Residency(max_models=max_models, ttl=ttl, budget=int(budget) if budget else None)
    serve(rfd, wfd, residency)


if __name__ == "__main__":
    main()
