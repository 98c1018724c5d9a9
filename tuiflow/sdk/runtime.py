"""Helpers for code running *inside* a task (python or shell tasks calling Python).

    import tuiflow
    features = tuiflow.get_upstream_output("prep/featurize")
    tuiflow.set_output({"mae": 0.08, "model_path": "models/rf.pkl"})

They read the environment the worker sets up: ``TUIFLOW_INPUTS`` (a JSON file of the
direct dependencies' outputs), ``TUIFLOW_OUTPUT`` (where this task's output goes),
``TUIFLOW_WORKFLOW_ID``, ``TUIFLOW_TASK``, ``TUIFLOW_ATTEMPT``, ``TUIFLOW_TASK_DIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from tuiflow.errors import TuiflowError


class NotInTask(TuiflowError, RuntimeError):
    """The helper was called outside a tuiflow task."""


def _env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise NotInTask(f"${name} is not set: this code is not running as a tuiflow task")
    return value


def set_output(value: Any) -> None:
    """Make `value` (JSON-serializable) this task's output, visible to its dependents.

    A python task's non-None return value does the same (and wins over this call).
    """
    from spool.atomic import atomic_write  # survives the NFS faults the home may show

    atomic_write(_env("TUIFLOW_OUTPUT"), json.dumps(value).encode())


def _load(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$ref"}:
        return json.loads(_read(value["$ref"]))
    return value


def _read(path: str) -> bytes:
    from spool.atomic import read_bytes  # ESTALE retried, and an NFS negative cache waited out

    return read_bytes(path, wait_visible=10.0)


def upstream_outputs() -> dict[str, Any]:
    """All direct dependencies' outputs, by task name (large ones loaded from their files).

    A dependency that produced no output maps to None. (When none did, the worker writes no
    inputs file and lists the dependencies in ``TUIFLOW_UPSTREAM`` instead.)
    """
    path = os.environ.get("TUIFLOW_INPUTS")
    if path is None:
        if "TUIFLOW_TASK" not in os.environ:
            raise NotInTask("$TUIFLOW_TASK is not set: this code is not running as a tuiflow task")
        return dict.fromkeys(json.loads(os.environ.get("TUIFLOW_UPSTREAM") or "[]"))
    return {name: _load(v) for name, v in json.loads(_read(path)).items()}


def get_upstream_output(name: str) -> Any:
    """The output of direct dependency `name` (None if it produced none)."""
    outputs = upstream_outputs()
    if name not in outputs:
        known = ", ".join(sorted(outputs)) or "none"
        raise KeyError(f"{name!r} is not a direct dependency of this task (dependencies: {known})")
    return outputs[name]


def task_info() -> dict[str, Any]:
    """Workflow id, task name, attempt number and attempt directory of the running task."""
    return {
        "workflow_id": _env("TUIFLOW_WORKFLOW_ID"),
        "task": _env("TUIFLOW_TASK"),
        "attempt": int(_env("TUIFLOW_ATTEMPT")),
        "task_dir": _env("TUIFLOW_TASK_DIR"),
    }


def record_asset(path: str, *, data_id: str | None = None) -> dict[str, Any]:
    """Note a file this task wrote (path, bytes, sha256) in its attempt's assets.jsonl."""
    info = task_info()
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    row = {
        "path": os.path.abspath(path),
        "bytes": size,
        "sha256": digest.hexdigest(),
        "owner": os.environ.get("USER"),
        "task": info["task"],
        "attempt": info["attempt"],
        "data_id": data_id or f"{info['workflow_id']}/{info['task']}",
        "at": time.time(),
    }
    from spool import layout
    from spool.atomic import append

    append(layout.attempt_log(info["task_dir"], layout.ASSETS_FILE), (json.dumps(row) + "\n").encode())
    return row


_TRACER = None


@contextlib.contextmanager
def span(name: str, kind: str = "compute", **attributes: Any) -> Iterator[Any]:
    """Time a phase of this task as a child span in its trace (kind: compute, network, marker).

        with tuiflow.span("load model", kind="compute", model="sdxl"):
            pipe = load()

    Works in the python executor, in shell tasks' Python, in subprocesses (they inherit
    ``$TRACEPARENT``) and in threads (pass the context along, e.g. with
    ``contextvars.copy_context().run``): the parent is the current span if there is one,
    else the attempt's span named by ``$TRACEPARENT``.
    """
    global _TRACER
    from opentelemetry import trace

    from analyzer.contract import ATTR_KIND
    from workers.tracing import context_from_traceparent, task_process_provider

    if _TRACER is None:
        provider = trace.get_tracer_provider()
        if not hasattr(provider, "add_span_processor"):  # the API's no-op provider: make ours
            provider = task_process_provider("tuiflow-task")
        _TRACER = provider.get_tracer("tuiflow.task")
    parent = None
    if not trace.get_current_span().get_span_context().is_valid:
        parent = context_from_traceparent(os.environ.get("TRACEPARENT"))
    with _TRACER.start_as_current_span(name, context=parent, attributes={ATTR_KIND: kind, **attributes}) as s:
        yield s
