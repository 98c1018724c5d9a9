"""Synthetic span files, byte-for-byte in the producers' format: for tests, benchmarks,
demos and screenshots that need a workflow directory without running one.

`otel_line` prints a span exactly as OpenTelemetry's ``ReadableSpan.to_json(indent=None)``
does (same key order, separators and time format); `SyntheticWorkflow` lays out a
workflow directory the way the contract describes (attempt span files, the coordinator's
trace file, lineage and asset rows). Ids are deterministic (a counter), so fixtures are
reproducible.

Example::

    wf = SyntheticWorkflow(tmp_path / "wf-1", "wf-1", "demo")
    wf.workflow(0.0, 10.0)
    wf.attempt("a", start=1.0, end=4.0, ready_at=0.5,
               children=[Child("execute", 1.0, 3.0), Child("write outputs", 3.0, 3.5)])

Times passed to `SyntheticWorkflow` are seconds relative to its ``epoch`` (default
2027-01-15 08:00:00 UTC); values on a microsecond grid survive the round trip exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from spool import layout

from .contract import (
    ATTR_ATTEMPT,
    ATTR_BATCH_ID,
    ATTR_BATCH_SIZE,
    ATTR_BYTES,
    ATTR_DATA_ID,
    ATTR_DEPENDS_ON,
    ATTR_ERROR,
    ATTR_EXECUTOR,
    ATTR_EXIT_CODE,
    ATTR_GENAI_MODEL,
    ATTR_GENAI_OUTPUT_TOKENS,
    ATTR_GPU_MEMORY_USAGE,
    ATTR_GPU_UTILIZATION,
    ATTR_GPUS,
    ATTR_HOST,
    ATTR_IMAGES,
    ATTR_KIND,
    ATTR_MODEL,
    ATTR_OUTCOME,
    ATTR_QUEUE,
    ATTR_READY_AT,
    ATTR_RUN_ID,
    ATTR_TASK,
    ATTR_WORKER,
    ATTR_WORKFLOW_ID,
    ATTR_WORKFLOW_NAME,
    EXECUTE_SPAN,
    MODEL_LOAD_SPAN,
    POSTPROCESS_SPAN,
    PROMPT_SPAN,
    READY_SPAN,
    SPAN_KINDS,
    TASK_SPAN,
    WORKFLOW_SPAN,
    format_trace_id,
    trace_id_for,
)

#: 2027-01-15T08:00:00Z: the default zero of `SyntheticWorkflow` times
DEFAULT_EPOCH = 1_800_000_000.0
RESOURCE = {
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": "1.45.2",
    "service.name": "tuiflow-worker",
}


def iso_time(epoch: float) -> str:
    """Format epoch seconds as OpenTelemetry does (``2027-01-15T08:00:00.000000Z``)."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def otel_line(
    name: str,
    *,
    trace_id: int,
    span_id: int,
    parent_id: int | None,
    start: float,
    end: float,
    status: str = "UNSET",
    description: str | None = None,
    attributes: dict[str, Any] | None = None,
    events: Sequence[dict[str, Any]] = (),
    resource: dict[str, Any] | None = None,
) -> str:
    """One span as ``ReadableSpan.to_json(indent=None)`` prints it (no newline).

    Parameters
    ----------
    name:
        Span name.
    trace_id, span_id, parent_id:
        Ids as ints (``parent_id`` None for a root).
    start, end:
        Epoch seconds.
    status, description:
        ``UNSET`` / ``OK`` / ``ERROR`` and the error's description.
    attributes, events, resource:
        As the SDK would hold them.

    Returns
    -------
    str
    """
    status_obj: dict[str, Any] = {"status_code": status}
    if description is not None:
        status_obj["description"] = description
    return json.dumps(
        {
            "name": name,
            "context": {
                "trace_id": format_trace_id(trace_id),
                "span_id": f"0x{span_id:016x}",
                "trace_state": "[]",
            },
            "kind": "SpanKind.INTERNAL",
            "parent_id": None if parent_id is None else f"0x{parent_id:016x}",
            "start_time": iso_time(start),
            "end_time": iso_time(end),
            "status": status_obj,
            "attributes": attributes or {},
            "events": list(events),
            "links": [],
            "resource": {"attributes": resource if resource is not None else RESOURCE, "schema_url": ""},
        }
    )


@dataclass
class Child:
    """A child span of an attempt (times relative to the workflow's epoch)."""

    name: str
    start: float
    end: float
    kind: str | None = None  # default: the contract's kind for a standard name
    nbytes: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = "UNSET"
    children: Sequence[Child] = ()


def model_call(
    start: float,
    *,
    load: float = 0.0,
    prompts: float = 0.0,
    execute: float,
    model: str | None = None,
    output_tokens: int | None = None,
    images: int | None = None,
    post: float = 0.0,
    write: float = 0.0,
    utilization: Sequence[float] | None = None,
    memory: Sequence[int] | None = None,
) -> list[Child]:
    """The children of a model executor's call, one after the other from `start` (all
    durations in seconds, 0 leaves the span out): ``model load``, ``build prompts``, ``execute`` (with the
    output tokens or images and the NVML samples given), ``post-process``, ``write
    outputs``. For a merged batch, give these to its first member and only a ``write
    outputs`` `Child` to the others (the producers write the shared spans once)."""
    children: list[Child] = []
    at = start
    if load > 0:
        children.append(
            Child(MODEL_LOAD_SPAN, at, at + load, attributes={ATTR_MODEL: model} if model else {})
        )
        at += load
    if prompts > 0:
        children.append(Child(PROMPT_SPAN, at, at + prompts))
        at += prompts
    attrs: dict[str, Any] = {}
    for key, value in (
        (ATTR_GENAI_MODEL, model),
        (ATTR_GENAI_OUTPUT_TOKENS, output_tokens),
        (ATTR_IMAGES, images),
        (ATTR_GPU_UTILIZATION, None if utilization is None else list(utilization)),
        (ATTR_GPU_MEMORY_USAGE, None if memory is None else list(memory)),
    ):
        if value is not None:
            attrs[key] = value
    children.append(Child(EXECUTE_SPAN, at, at + execute, attributes=attrs))
    at += execute
    for name, seconds in ((POSTPROCESS_SPAN, post), (READY_SPAN, write)):
        if seconds > 0:
            children.append(Child(name, at, at + seconds))
            at += seconds
    return children


def task_dir_name(task: str) -> str:
    """A task name as one safe path component (``/`` and ``.`` percent-encoded)."""
    return quote(task, safe="").replace(".", "%2E")


class SyntheticWorkflow:
    """Writes a workflow directory in the producers' layout and format.

    Parameters
    ----------
    wf_dir:
        Directory to create (``<home>/workflows/<wf_id>``).
    workflow_id, name:
        The workflow id (its trace id derives from it) and name.
    epoch:
        Epoch seconds that time 0 stands for.
    first_id:
        First span id handed out (ids count up from there).
    """

    def __init__(
        self,
        wf_dir: str | os.PathLike[str],
        workflow_id: str = "wf-test",
        name: str = "demo",
        *,
        epoch: float = DEFAULT_EPOCH,
        first_id: int = 1,
    ) -> None:
        self.dir = Path(wf_dir)
        self.workflow_id = workflow_id
        self.name = name
        self.epoch = epoch
        self.trace_id = trace_id_for(workflow_id)
        self._next_id = first_id
        self.workflow_span_id = self.new_id()
        self.dir.mkdir(parents=True, exist_ok=True)

    def new_id(self) -> int:
        """A fresh span id."""
        sid = self._next_id
        self._next_id += 1
        return sid

    def attempt_dir(self, task: str, attempt: int) -> Path:
        """``<wf_dir>/tasks/<task>/<attempt>``."""
        return Path(layout.tasks_dir(str(self.dir))) / task_dir_name(task) / str(attempt)

    def spans_path(self, task: str | None = None, attempt: int = 0) -> Path:
        """An attempt's span file, or the coordinator's when `task` is None."""
        if task is None:
            return self.dir / layout.TRACE_DIR / layout.SPANS_FILE
        return self.attempt_dir(task, attempt) / layout.LOGS_DIR / layout.SPANS_FILE

    def line(
        self,
        name: str,
        start: float,
        end: float,
        *,
        span_id: int | None = None,
        parent_id: int | None = None,
        **kwargs: Any,
    ) -> str:
        """One span line with times relative to the epoch (see `otel_line`)."""
        return otel_line(
            name,
            trace_id=self.trace_id,
            span_id=span_id if span_id is not None else self.new_id(),
            parent_id=parent_id,
            start=self.epoch + start,
            end=self.epoch + end,
            **kwargs,
        )

    def write(self, path: Path, lines: Iterable[str], *, newline_at_end: bool = True) -> None:
        """Append lines to a file, creating its directory."""
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text + ("\n" if newline_at_end and text else ""))

    def workflow(
        self, start: float, end: float, *, status: str = "UNSET", outcome: str | None = None
    ) -> None:
        """Write the coordinator's ``workflow`` span (submit -> end)."""
        attrs: dict[str, Any] = {ATTR_WORKFLOW_ID: self.workflow_id, ATTR_WORKFLOW_NAME: self.name}
        if outcome is not None:
            attrs[ATTR_OUTCOME] = outcome
        line = self.line(
            WORKFLOW_SPAN, start, end, span_id=self.workflow_span_id, status=status, attributes=attrs
        )
        self.write(self.spans_path(None), [line])

    def attempt(
        self,
        task: str,
        attempt: int = 0,
        *,
        start: float,
        end: float,
        depends_on: Sequence[str] = (),
        ready_at: float | None = None,
        worker: str = "w1",
        host: str = "host1",
        queue: str = "default",
        executor: str = "shell",
        gpus: Sequence[int] = (),
        outcome: str = "completed",
        error: str | None = None,
        exit_code: int | None = None,
        batch_id: str | None = None,
        batch_size: int | None = None,
        data_id: str | None = None,
        model: str | None = None,
        children: Sequence[Child] = (),
        coordinator: bool = False,
        children_first: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Write one attempt's spans: the ``task`` root and its children.

        Parameters
        ----------
        task, attempt:
            Task name and attempt number.
        start, end:
            Root span times, relative to the epoch.
        ready_at:
            ``tuiflow.task.ready_at``, relative to the epoch.
        outcome:
            ``completed`` gives an UNSET status, anything else ERROR.
        coordinator:
            Write into the coordinator's ``trace/spans.jsonl`` (a lost attempt).
        children_first:
            Write the children before the root (as an exporter flushing on end does).
        extra:
            More root attributes.

        Returns
        -------
        int
            The root span's id.
        """
        root_id = self.new_id()
        attrs: dict[str, Any] = {
            ATTR_WORKFLOW_ID: self.workflow_id,
            ATTR_WORKFLOW_NAME: self.name,
            ATTR_RUN_ID: self.workflow_id,
            ATTR_TASK: task,
            ATTR_ATTEMPT: attempt,
            ATTR_DEPENDS_ON: list(depends_on),
            ATTR_WORKER: worker,
            ATTR_HOST: host,
            ATTR_QUEUE: queue,
            ATTR_GPUS: list(gpus),
            ATTR_EXECUTOR: executor,
            ATTR_OUTCOME: outcome,
        }
        if ready_at is not None:
            attrs[ATTR_READY_AT] = self.epoch + ready_at
        for key, value in (
            (ATTR_ERROR, error),
            (ATTR_EXIT_CODE, exit_code),
            (ATTR_BATCH_ID, batch_id),
            (ATTR_BATCH_SIZE, batch_size),
            (ATTR_DATA_ID, data_id),
            (ATTR_MODEL, model),
        ):
            if value is not None:
                attrs[key] = value
        attrs.update(extra or {})
        failed = outcome != "completed"
        root = self.line(
            TASK_SPAN,
            start,
            end,
            span_id=root_id,
            parent_id=self.workflow_span_id,
            status="ERROR" if failed else "UNSET",
            description=(error or outcome) if failed else None,
            attributes=attrs,
        )
        lines = self._children(children, root_id)
        lines = [*lines, root] if children_first else [root, *lines]
        self.write(self.spans_path(None) if coordinator else self.spans_path(task, attempt), lines)
        return root_id

    def _children(self, children: Sequence[Child], parent_id: int) -> list[str]:
        out: list[str] = []
        for child in children:
            sid = self.new_id()
            attrs = dict(child.attributes)
            kind = child.kind if child.kind is not None else SPAN_KINDS.get(child.name)
            if kind is not None:
                attrs[ATTR_KIND] = str(kind)
            if child.nbytes is not None:
                attrs[ATTR_BYTES] = child.nbytes
            out.append(
                self.line(
                    child.name,
                    child.start,
                    child.end,
                    span_id=sid,
                    parent_id=parent_id,
                    status=child.status,
                    attributes=attrs,
                )
            )
            out.extend(self._children(child.children, sid))
        return out

    def lineage(self, task: str, attempt: int, data_id: str, sources: Sequence[str] = ()) -> None:
        """Append a lineage row to an attempt's ``logs/lineage.jsonl``."""
        row = {"data_id": data_id, "sources": list(sources), "task": task, "attempt": attempt}
        self.write(self.attempt_dir(task, attempt) / layout.LOGS_DIR / layout.LINEAGE_FILE, [json.dumps(row)])

    def asset(self, task: str, attempt: int, path: str, nbytes: int, data_id: str | None = None) -> None:
        """Append an asset row to an attempt's ``logs/assets.jsonl``."""
        row = {
            "path": path,
            "bytes": nbytes,
            "sha256": "0" * 64,
            "owner": "tester",
            "task": task,
            "attempt": attempt,
            "data_id": data_id,
        }
        self.write(self.attempt_dir(task, attempt) / layout.LOGS_DIR / layout.ASSETS_FILE, [json.dumps(row)])
