"""Tracing on the producer side: one TracerProvider per process, spans as JSONL files.

* `WorkflowIds` derives the trace id (and the workflow span's id) from the workflow id,
  so one workflow is one trace across processes and hosts.
* `AttemptTrace` is how a worker traces an attempt: the root span and its phases, built as
  finished spans and appended, as exactly ``ReadableSpan.to_json(indent=None)`` one per
  line, to the attempt's ``logs/spans.jsonl`` in one write when the attempt ends.
* `AttemptFiles` is the span processor that does the same for spans made through the SDK
  (the coordinator's): each goes to the ``logs/spans.jsonl`` of the attempt it belongs to. An attempt's root span names its workflow, task and attempt; its
  descendants follow their parent. The write is synchronous, so a span is on disk when
  `end()` returns: the root span is on disk before the completion is reported. Export
  errors are counted, never raised into the task.
* When ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the OTLP exporter is installed
  (``pip install tuiflow[otlp]``), spans are also sent there, batched; the files do not change.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
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
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags, TraceState

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
_UNSET = Status(StatusCode.UNSET)

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


def span_context_from_traceparent(value: str | None) -> SpanContext | None:
    """Parse a W3C traceparent (as carried in task messages and executor requests)."""
    if not value:
        return None
    try:
        _, trace_id, span_id, flags = value.split("-")
        return SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16))
        )
    except ValueError:
        return None


def context_from_traceparent(value: str | None) -> otel_context.Context | None:
    """A context whose current span is the one a traceparent names (a remote parent)."""
    ctx = span_context_from_traceparent(value)
    return None if ctx is None else trace.set_span_in_context(NonRecordingSpan(ctx))


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
        self.append(route, "".join(lines), span.name)

    def append(self, route: str, text: str, what: str) -> None:
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


_RESOURCE_JSON: dict[int, tuple[Resource, str]] = {}
_EMPTY_TRACE_STATE_JSON = json.dumps(repr(TraceState()))
_dumps = json.dumps


def _resource_json(resource: Resource) -> str:
    cached = _RESOURCE_JSON.get(id(resource))
    if cached is None or cached[0] is not resource:
        cached = (resource, json.dumps(json.loads(resource.to_json())))
        _RESOURCE_JSON[id(resource)] = cached
    return cached[1]


def iso_time(nanoseconds: int) -> str:
    """What the SDK's ``ns_to_iso_str`` prints, without strftime (a quarter of its cost)."""
    dt = datetime.datetime.fromtimestamp(nanoseconds / 1e9, tz=datetime.UTC)
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"


def span_json(span: ReadableSpan) -> str:
    """Exactly what ``span.to_json(indent=None)`` prints (a test compares them span by
    span), at a third of the cost: the SDK builds a dict of dicts, encodes the resource to
    JSON, parses it back and encodes everything again for every span. Here the fixed parts
    are a template, ids and times are formatted directly (they never need escaping), only
    free text goes through the encoder, and the resource's text is cached."""
    ctx = span.context
    if ctx is None:
        context = "null"
    else:
        state = ctx.trace_state
        state_text = _dumps(repr(state)) if state else _EMPTY_TRACE_STATE_JSON
        context = f'{{"trace_id": "0x{ctx.trace_id:032x}", "span_id": "0x{ctx.span_id:016x}", "trace_state": {state_text}}}'
    parent = f'"0x{span.parent.span_id:016x}"' if span.parent is not None else "null"
    status = span.status
    status_text = f'{{"status_code": "{status.status_code.name}"'
    if status.description:
        status_text += f', "description": {_dumps(status.description)}'
    start = f'"{iso_time(span.start_time)}"' if span.start_time else "null"
    end = f'"{iso_time(span.end_time)}"' if span.end_time else "null"
    attributes = span.attributes
    events, links = span.events, span.links
    return (
        f'{{"name": {_dumps(span.name)}, "context": {context}, "kind": "{span.kind}", '
        f'"parent_id": {parent}, '
        f'"start_time": {start}, "end_time": {end}, '
        f'"status": {status_text}}}, '
        f'"attributes": {_dumps(ReadableSpan._format_attributes(attributes)) if attributes is not None else "null"}, '
        f'"events": {_dumps(ReadableSpan._format_events(events)) if events else "[]"}, '
        f'"links": {_dumps(ReadableSpan._format_links(links)) if links else "[]"}, '
        f'"resource": {_resource_json(span.resource)}}}'
    )


class AttemptTrace:
    """The spans of one attempt in a worker: its root span and its phases.

    Everything about an attempt is known by the time it ends, so nothing here goes through
    the SDK's live-span machinery: the root's context is made when the attempt starts (the
    task process needs it as its parent), the phases are collected as finished spans, and
    `end` builds the root and writes all of them with one append to the attempt's
    ``spans.jsonl`` (before the completion is reported), and hands them to the other
    exporters (OTLP) as ReadableSpans.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        path: str,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start: float,
    ):
        self.telemetry = telemetry
        self.path = path
        self.parent = parent
        self.attributes = attributes
        self.start = start
        self.context = SpanContext(
            trace_id=parent.trace_id if parent is not None else random.getrandbits(128) or 1,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=parent.trace_state if parent is not None else None,
        )
        self.spans: list[ReadableSpan] = []
        self.status = Status(StatusCode.UNSET)

    @property
    def traceparent(self) -> str:
        return traceparent(self.context)

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_error(self, message: str) -> None:
        self.status = Status(StatusCode.ERROR, message[:500])

    def phase(self, name: str, start: float, end: float, **attrs: Any) -> None:
        """A finished child span (epoch seconds) with its kind (see SPAN_KINDS)."""
        kind = SPAN_KINDS.get(name)
        attributes = {ATTR_KIND: str(kind) if kind else str(attrs.pop("kind", "compute")), **attrs}
        ctx = SpanContext(
            trace_id=self.context.trace_id,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=self.context.trace_flags,
            trace_state=self.context.trace_state,
        )
        self.spans.append(self.telemetry.finished_span(name, ctx, self.context, attributes, start, end))

    def end(self, end: float) -> None:
        root = self.telemetry.finished_span(
            TASK_SPAN, self.context, self.parent, self.attributes, self.start, end, self.status
        )
        self.spans.append(root)
        self.telemetry.write_spans(self.path, self.spans)


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
        self.scope = InstrumentationScope("tuiflow")

    def flush_exports(self, timeout: float = 10.0) -> None:
        """Send what the exporters beside the span files still hold (OTLP batches); called
        when the process stops, else the last few seconds of spans never reach the
        collector. The files need nothing: every span is on disk when it ends."""
        for processor in self.processors[1:]:
            try:
                processor.force_flush(int(timeout * 1000))
            except Exception as e:  # telemetry must never break a clean stop
                log.warning("could not flush spans to %s: %s", type(processor).__name__, e)

    def attempt(
        self, path: str, parent: SpanContext | None, attributes: dict[str, Any], start: float
    ) -> AttemptTrace:
        """The trace of one attempt, written to `path` (its spans.jsonl) when it ends."""
        return AttemptTrace(self, path, parent, attributes, start)

    def finished_span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start: float,
        end: float,
        status: Status | None = None,
    ) -> ReadableSpan:
        return ReadableSpan(
            name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            start_time=ns(start),
            end_time=ns(max(end, start)),
            status=status or _UNSET,
            instrumentation_scope=self.scope,
        )

    def write_spans(self, path: str, spans: list[ReadableSpan]) -> None:
        """Append `spans` to `path` in one write, and hand them to the other exporters."""
        try:
            text = "".join([span_json(span) + "\n" for span in spans])
        except Exception as e:  # telemetry must never break the task it describes
            self.files.errors += 1
            log.warning("could not serialise the spans for %s: %s", path, e)
        else:
            self.files.append(path, text, spans[-1].name)
        for processor in self.processors[1:]:
            for span in spans:
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
