"""Tracing on the producer side: one TracerProvider per process, spans as JSONL files.

* `WorkflowIds` derives the trace id (and the workflow span's id) from the workflow id,
  so one workflow is one trace across processes and hosts.
* `AttemptFiles` is a span processor that appends every finished span, as exactly
  ``ReadableSpan.to_json(indent=None)`` on one line, to the ``logs/spans.jsonl`` of the
  attempt it belongs to. An attempt's root span names its workflow, task and attempt; its
  descendants follow their parent. The write is synchronous, so a span is on disk when
  `end()` returns: the root span is on disk before the completion is reported. Export
  errors are counted, never raised into the task.
* When ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the OTLP exporter is installed
  (``pip install tuiflow[otlp]``), spans are also sent there, batched; the files do not change.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util import ns_to_iso_str
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from analyzer.contract import (
    ATTR_ATTEMPT,
    ATTR_KIND,
    ATTR_TASK,
    ATTR_WORKFLOW_ID,
    LOGS_DIR,
    SPAN_KINDS,
    SPANS_FILE,
    TASK_SPAN,
    WORKFLOW_SPAN,
    trace_id_for,
)
from spool.names import encode_component

log = logging.getLogger("workers.tracing")

_forced_trace: contextvars.ContextVar[int | None] = contextvars.ContextVar("tuiflow_trace", default=None)
_forced_span: contextvars.ContextVar[int | None] = contextvars.ContextVar("tuiflow_span", default=None)


def workflow_span_id(wf_id: str) -> int:
    """The span id of a workflow's root span (derived, so every task can name it as parent)."""
    return (trace_id_for(wf_id + "#workflow") & 0xFFFF_FFFF_FFFF_FFFF) or 1


class WorkflowIds(IdGenerator):
    """Random ids, except where `forced_ids` pins the trace id (and a span id)."""

    def generate_span_id(self) -> int:
        forced = _forced_span.get()
        if forced is not None:
            _forced_span.set(None)  # only the next span
            return forced
        return random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        forced = _forced_trace.get()
        return forced if forced is not None else (random.getrandbits(128) or 1)


@contextlib.contextmanager
def forced_ids(wf_id: str, *, workflow_span: bool = False) -> Iterator[None]:
    """Spans started inside get the workflow's trace id (and, once, the workflow span id)."""
    t1 = _forced_trace.set(trace_id_for(wf_id))
    t2 = _forced_span.set(workflow_span_id(wf_id) if workflow_span else None)
    try:
        yield
    finally:
        _forced_trace.reset(t1)
        _forced_span.reset(t2)


def workflow_context(wf_id: str) -> otel_context.Context:
    """A context whose current span is the workflow's root span (a remote parent)."""
    ctx = SpanContext(
        trace_id=trace_id_for(wf_id),
        span_id=workflow_span_id(wf_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def traceparent(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def context_from_traceparent(value: str | None) -> otel_context.Context | None:
    """Parse a W3C traceparent (as carried in task messages and executor requests)."""
    if not value:
        return None
    try:
        _, trace_id, span_id, flags = value.split("-")
        ctx = SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16))
        )
    except ValueError:
        return None
    return trace.set_span_in_context(NonRecordingSpan(ctx))


class AttemptFiles(SpanProcessor):
    """Routes each finished span to the spans.jsonl of its attempt (see module docstring).

    Parameters:
        home_root: the home directory (attempt directories are under it).
        fallback: file for spans that belong to no attempt (the coordinator's trace file).
    """

    def __init__(self, home_root: str, fallback: str | None = None):
        self.home_root = home_root
        self.fallback = fallback
        self.errors = 0
        self._routes: dict[int, str] = {}
        self._held: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def _root_route(self, attrs: Any) -> str | None:
        wf, task, attempt = attrs.get(ATTR_WORKFLOW_ID), attrs.get(ATTR_TASK), attrs.get(ATTR_ATTEMPT)
        if wf is None or task is None or attempt is None:
            return None
        return f"{self.home_root}/workflows/{wf}/tasks/{encode_component(task)}/{attempt}/{LOGS_DIR}/{SPANS_FILE}"

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        route = None
        if span.name == TASK_SPAN:
            route = self._root_route(span.attributes or {})
        if route is None and span.parent is not None:
            with self._lock:
                route = self._routes.get(span.parent.span_id)
        if route is None and span.name == WORKFLOW_SPAN and span.attributes:
            wf = span.attributes.get(ATTR_WORKFLOW_ID)
            if wf is not None:
                route = f"{self.home_root}/workflows/{wf}/trace/{SPANS_FILE}"
        if route is not None:
            with self._lock:
                self._routes[span.context.span_id] = route

    def adopt(self, span_id: int, parent_id: int) -> None:
        """Route a span that never went through on_start (a finished phase) like its parent."""
        with self._lock:
            route = self._routes.get(parent_id)
            if route is not None:
                self._routes[span_id] = route

    def on_end(self, span: ReadableSpan) -> None:
        span_id = span.context.span_id
        with self._lock:
            route = self._routes.pop(span_id, None)
            if route is None:
                route = self.fallback
            if route is None:
                return
            try:
                line = span_json(span) + "\n"
            except Exception as e:  # telemetry must never break the task it describes
                self.errors += 1
                log.warning("could not serialise span %s: %s", span.name, e)
                return
            # Children end before their attempt's root: hold their lines and write them with
            # the root's in one append when the root ends (still before the completion is sent).
            parent = span.parent.span_id if span.parent is not None else None
            if parent is not None and self._routes.get(parent) == route:
                self._held.setdefault(parent, []).extend(self._held.pop(span_id, ()))
                self._held[parent].append(line)
                return
            lines = self._held.pop(span_id, [])
            lines.append(line)
        self._append(route, "".join(lines), span.name)

    def _append(self, route: str, text: str, what: str) -> None:
        try:
            try:
                fd = os.open(route, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(route), exist_ok=True)
                fd = os.open(route, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                # One write(2) with O_APPEND: lines from several processes never interleave.
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except Exception as e:  # telemetry must never break the task it describes
            self.errors += 1
            log.warning("could not write span %s to %s: %s", what, route, e)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_RESOURCE_DICTS: dict[int, tuple[Resource, dict[str, Any]]] = {}


def _resource_dict(resource: Resource) -> dict[str, Any]:
    cached = _RESOURCE_DICTS.get(id(resource))
    if cached is None or cached[0] is not resource:
        cached = (resource, json.loads(resource.to_json()))
        _RESOURCE_DICTS[id(resource)] = cached
    return cached[1]


def span_json(span: ReadableSpan) -> str:
    """Exactly what ``span.to_json(indent=None)`` prints (a test compares them span by
    span), built with the SDK's own formatters but without re-encoding and re-parsing the
    resource's JSON for every span, which the SDK does and which is a third of the cost."""
    parent_id = f"0x{trace.format_span_id(span.parent.span_id)}" if span.parent is not None else None
    status = {"status_code": str(span.status.status_code.name)}
    if span.status.description:
        status["description"] = span.status.description
    f_span = {
        "name": span.name,
        "context": ReadableSpan._format_context(span.context) if span.context else None,
        "kind": str(span.kind),
        "parent_id": parent_id,
        "start_time": ns_to_iso_str(span.start_time) if span.start_time else None,
        "end_time": ns_to_iso_str(span.end_time) if span.end_time else None,
        "status": status,
        "attributes": ReadableSpan._format_attributes(span.attributes),
        "events": ReadableSpan._format_events(span.events),
        "links": ReadableSpan._format_links(span.links),
        "resource": _resource_dict(span.resource),
    }
    return json.dumps(f_span, indent=None)


class Telemetry:
    """This process's tracing: one TracerProvider (attempt files, plus OTLP when
    configured), and a fast path for phases that are already over."""

    def __init__(self, home_root: str, service: str, fallback: str | None = None):
        self.resource = Resource.create(
            {"service.name": service, "host.name": socket.gethostname(), "process.pid": os.getpid()}
        )
        self.provider = TracerProvider(
            resource=self.resource, id_generator=WorkflowIds(), shutdown_on_exit=False
        )
        self.files = AttemptFiles(home_root, fallback)
        self.processors: list[SpanProcessor] = [self.files]
        self.provider.add_span_processor(self.files)
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                otlp = BatchSpanProcessor(OTLPSpanExporter())
                self.provider.add_span_processor(otlp)
                self.processors.append(otlp)
            except ImportError:
                log.warning(
                    "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is missing: pip install 'tuiflow[otlp]'"
                )
        self.tracer = self.provider.get_tracer("tuiflow")

    def flush_exports(self, timeout: float = 10.0) -> None:
        """Send what the exporters beside the span files still hold (OTLP batches); called
        when the process stops, else the last few seconds of spans never reach the
        collector. The files need nothing: every span is on disk when it ends."""
        for processor in self.processors[1:]:
            try:
                processor.force_flush(int(timeout * 1000))
            except Exception as e:  # telemetry must never break a clean stop
                log.warning("could not flush spans to %s: %s", type(processor).__name__, e)

    def phase(self, parent: trace.Span, name: str, start: float, end: float, **attrs: Any) -> None:
        """A finished child span with explicit times (epoch seconds) and its kind.

        Phases are measured after the fact, so they are built as finished ReadableSpans and
        handed to the processors directly, skipping the SDK's live-span machinery.
        """
        kind = SPAN_KINDS.get(name)
        attributes = {ATTR_KIND: str(kind) if kind else str(attrs.pop("kind", "compute")), **attrs}
        parent_ctx = parent.get_span_context()
        ctx = SpanContext(
            trace_id=parent_ctx.trace_id,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=parent_ctx.trace_flags,
            trace_state=parent_ctx.trace_state,
        )
        span = ReadableSpan(
            name,
            context=ctx,
            parent=parent_ctx,
            resource=self.resource,
            attributes=attributes,
            start_time=ns(start),
            end_time=ns(max(end, start)),
        )
        self.files.adopt(ctx.span_id, parent_ctx.span_id)
        for processor in self.processors:
            processor.on_end(span)


class CurrentTaskFile(SpanProcessor):
    """For processes that run one task at a time (the python executor, a task's own
    subprocesses): every span goes to the spans.jsonl of the task named by the environment
    (``$TUIFLOW_TASK_DIR``) when it ends."""

    def on_end(self, span: ReadableSpan) -> None:
        task_dir = os.environ.get("TUIFLOW_TASK_DIR")
        if not task_dir:
            return
        try:
            fd = os.open(
                f"{task_dir}/{LOGS_DIR}/{SPANS_FILE}",
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o644,
            )
            try:
                os.write(fd, (span_json(span) + "\n").encode())
            finally:
                os.close(fd)
        except Exception as e:  # telemetry must never break the task it describes
            log.warning("could not write span %s: %s", span.name, e)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def task_process_provider(service: str) -> TracerProvider:
    """A TracerProvider for code running inside a task (see `CurrentTaskFile`)."""
    resource = Resource.create(
        {"service.name": service, "host.name": socket.gethostname(), "process.pid": os.getpid()}
    )
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(CurrentTaskFile())
    return provider


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def set_error(span: trace.Span, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message[:500]))
