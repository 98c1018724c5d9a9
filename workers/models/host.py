"""A model host: one long-lived process per worker slot that keeps models loaded.

    python -m workers.models.host READ_FD WRITE_FD

The worker starts it (`workers.executors.models`) with the slot's GPUs fixed in
``CUDA_VISIBLE_DEVICES`` for its whole life: a fresh interpreter, never forked from a
process that touched CUDA, so a model loaded on GPU 1 stays on GPU 1. It reads one
request frame at a time (`workers.framing`) and answers each with one frame:

    request   {"executor": "transformers", "with": {...}}
    reply     {"ok": true, "output": {...}, "phases": [[name, start, end, attrs], ...],
               "files": {"images": [[name, bytes], ...]},   # files the worker writes
               "models": [[key...], ...]}                   # the models it holds now
              {"ok": false, "error": "...", "kind": "missing" | "oom" | "error"}

A failure of one request (a bad model path, out of memory) is answered and the host
serves the next; the worker ends the host (SIGKILL of its group) when an attempt times
out or is cancelled, and starts a fresh one for the next task.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any

from analyzer import contract as c
from workers.framing import read_frame, write_frame
from workers.models import imagegen, textgen
from workers.models.libraries import MissingDependency
from workers.models.residency import (
    DEFAULT_MODELS_PER_SLOT,
    DEFAULT_TTL,
    MODEL_TTL_ENV,
    MODELS_PER_SLOT_ENV,
    Residency,
)

BACKENDS = {"transformers": textgen, "diffusers": imagegen}


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
    spec = request["with"]
    try:
        t0 = time.time()
        model, load_seconds = residency.get(backend.key(spec), lambda: backend.load(spec))
        output, phases = backend.generate(model, spec)
    except MissingDependency as e:
        return {"ok": False, "kind": "missing", "error": str(e)}
    except Exception as e:  # the task's failure (a bad path, bad parameters, OOM), answered
        kind = "oom" if type(e).__name__ == "OutOfMemoryError" else "error"
        traceback.print_exc()
        return {"ok": False, "kind": kind, "error": f"{type(e).__name__}: {e}"}
    if load_seconds:
        phases.insert(0, (c.MODEL_LOAD_SPAN, t0, t0 + load_seconds, {c.ATTR_MODEL: str(spec["model"])}))
    for _, _, _, attrs in phases:
        if c.ATTR_GENAI_MODEL in attrs:
            attrs[c.ATTR_MODEL_LOAD_SECONDS] = load_seconds
            attrs[c.ATTR_WARM_HIT] = not load_seconds
    files = output.pop("files", {})  # the worker writes them into the attempt's directory
    return {
        "ok": True,
        "output": output,
        "files": files,
        "phases": [list(p) for p in phases],
        "models": [list(k) for k in residency.loaded()],  # what the worker may route here
    }


def main() -> None:
    rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
    ttl = float(os.environ.get(MODEL_TTL_ENV, DEFAULT_TTL))
    max_models = int(os.environ.get(MODELS_PER_SLOT_ENV, DEFAULT_MODELS_PER_SLOT))
    serve(rfd, wfd, Residency(max_models=max_models, ttl=ttl))


if __name__ == "__main__":
    main()
