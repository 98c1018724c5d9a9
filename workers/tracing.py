"""Tracing on the producer side: one TracerProvider per process, spans as JSONL files.

* `WorkflowIds` derives the trace id (and the workflow span's id) from the workflow id,
  so one workflow is one trace across processes and hosts.
* `AttemptTrace` is how a worker traces an attempt: the root span and its phases, built as
  finished spans and appended, as exactly ``ReadableSpan.to_json(indent=None)`` one per
  line, to the attempt's ``logs/spans.jsonl`` in one write when the attempt ends (through
  the descriptor the worker opened when the attempt started, `workers.attemptdir`).
* `AttemptFiles` is the span processor that does the same for spans made through the SDK
  (the coordinator's): each goes to the ``logs/spans.jsonl`` of the attempt it belongs to. An attempt's root span names its workflow, task and attempt; its
  descendants follow their parent. The write is synchronous, so a span is on disk when
  `end()` returns: the root span is on disk before the completion is reported. Export
  errors are counted, never raised into the task. Files are reached from the home without
  following a link (`attemptdir.append_under`), in task processes too (`CurrentTaskFile`).
* When ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the OTLP exporter is installed
  (``pip install tuiflow[otlp]``), spans are also sent there, batched; the files do not change.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from analyzer.contract import (
    ATTR_ATTEMPT,
    ATTR_KIND,
    ATTR_TASK,
    ATTR_WORKFLOW_ID,
    EXECUTE_SPAN,
    SPAN_KINDS,
    TASK_SPAN,
    WORKFLOW_SPAN,
    trace_id_for,
)
from spool import layout
from workers.attemptdir import append_under
from workers.traceparent import context_from_traceparent, span_context_from_traceparent, traceparent

__all__ = ["context_from_traceparent", "span_context_from_traceparent", "traceparent"]  # and the rest

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
        return layout.attempt_log(layout.attempt_dir(self.home_root, wf, task, attempt), layout.SPANS_FILE)

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
                route = layout.trace_file(layout.workflow_dir(self.home_root, wf))
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
            # One write(2) with O_APPEND: lines from several processes never interleave.
            append_under(self.home_root, route, text.encode())
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
# json.dumps(obj) for the attribute dicts of our own spans (plain values, never cyclic), by
# the C encoder built once: json.dumps builds an encoder per call, which costs more than
# encoding a span's dozen attributes.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_attributes = (
    _c_make_encoder(
        None,  # no cycle check: these dicts are built here from plain values, never cyclic
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,  # indent
        ": ",
        ", ",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    if _c_make_encoder is not None
    else None
)


def _attributes_json(attributes: dict[str, Any]) -> str:
    if _encode_attributes is None:
        return _dumps(attributes)
    return "".join(_encode_attributes(attributes, 0))


# what json.dumps does with a str (ensure_ascii), without its per-call set-up
_dumps_str = json.encoder.encode_basestring_ascii


def _resource_json(resource: Resource) -> str:
    cached = _RESOURCE_JSON.get(id(resource))
    if cached is None or cached[0] is not resource:
        cached = (resource, json.dumps(json.loads(resource.to_json())))
        _RESOURCE_JSON[id(resource)] = cached
    return cached[1]


_iso_second = (-1, "")  # (whole second, its "YYYY-MM-DDTHH:MM:SS" text): spans come in runs


def iso_time(nanoseconds: int) -> str:
    """Exactly what the SDK's ``ns_to_iso_str`` prints, at a fraction of its cost.

    The SDK goes through ``datetime.fromtimestamp(ns / 1e9)``, which splits the float
    into seconds and microseconds rounded half-to-even; the same split is done here, and
    the date and time text of the second is reused while it does not change."""
    global _iso_second
    frac, whole = math.modf(nanoseconds / 1e9)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1
    elif micros < 0:
        micros += 1_000_000
        whole -= 1
    second = int(whole)
    cached = _iso_second  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _iso_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{micros:06d}Z"


def _line(
    name: str,
    context: str,
    kind: str,
    parent_id: int | None,
    start_ns: int | None,
    end_ns: int | None,
    status: Status,
    attributes: str,
    events: str,
    links: str,
    resource: str,
) -> str:
    """One span as ``ReadableSpan.to_json(indent=None)`` prints it, from parts that are
    already text where they need encoding (context, attributes, events, links, resource)."""
    parent = f'"0x{parent_id:016x}"' if parent_id is not None else "null"
    status_text = f'{{"status_code": "{status.status_code.name}"'
    if status.description:
        status_text += f', "description": {_dumps_str(status.description)}'
    start = f'"{iso_time(start_ns)}"' if start_ns else "null"
    end = f'"{iso_time(end_ns)}"' if end_ns else "null"
    return (
        f'{{"name": {_dumps_str(name)}, "context": {context}, "kind": "{kind}", "parent_id": {parent}, '
        f'"start_time": {start}, "end_time": {end}, "status": {status_text}}}, '
        f'"attributes": {attributes}, "events": {events}, "links": {links}, "resource": {resource}}}'
    )


def _context_json(trace_id: int, span_id: int, trace_state: TraceState | None) -> str:
    state = _dumps(repr(trace_state)) if trace_state else _EMPTY_TRACE_STATE_JSON
    return f'{{"trace_id": "0x{trace_id:032x}", "span_id": "0x{span_id:016x}", "trace_state": {state}}}'


def span_json(span: ReadableSpan) -> str:
    """Exactly what ``span.to_json(indent=None)`` prints (a test compares them span by
    span), at a fraction of the cost: the SDK builds a dict of dicts, encodes the resource
    to JSON, parses it back and encodes everything again for every span. Here the fixed
    parts are a template, ids and times are formatted directly (they never need
    escaping), only free text goes through the encoder, and the resource's text is cached."""
    ctx = span.context
    attributes, events, links = span.attributes, span.events, span.links
    return _line(
        span.name,
        _context_json(ctx.trace_id, ctx.span_id, ctx.trace_state) if ctx is not None else "null",
        str(span.kind),
        span.parent.span_id if span.parent is not None else None,
        span.start_time,
        span.end_time,
        span.status,
        _dumps(ReadableSpan._format_attributes(attributes)) if attributes is not None else "null",
        _dumps(ReadableSpan._format_events(events)) if events else "[]",
        _dumps(ReadableSpan._format_links(links)) if links else "[]",
        _resource_json(span.resource),
    )


_INTERNAL = str(SpanKind.INTERNAL)


class AttemptTrace:
    """The spans of one attempt in a worker: its root span and its phases.

    Everything about an attempt is known by the time it ends, so nothing here goes through
    the SDK's live-span machinery: the root's ids are made when the attempt starts (the
    task process needs them as its parent), the phases are kept as plain values, and `end`
    renders all of them, root last, with one append to the attempt's ``spans.jsonl``
    (before the completion is reported). Only when other exporters are configured (OTLP)
    are ReadableSpans built, for them.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        path: str,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start: float,
        fd: int = -1,
    ):
        self.telemetry = telemetry
        self.path = path
        self.fd = fd
        self.parent = parent
        self.attributes = attributes
        self.start = start
        self.trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        self.span_id = random.getrandbits(64) or 1
        #: the id of the `execute` phase, known before it runs: the task's own spans are its
        #: children (`task_traceparent`), so that work inside execute is not counted twice
        self.execute_id = random.getrandbits(64) or 1
        self._execute_since: float | None = None  # when the task was given `task_traceparent`
        self._execute_written = False
        self.trace_state = parent.trace_state if parent is not None else None
        self.phases: list[tuple[str, int, float, float, dict[str, Any]]] = []
        #: span events of the phases that have some, by the phase's span id
        self.events: dict[int, tuple[Event, ...]] = {}
        self.status = _UNSET

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"

    @property
    def task_traceparent(self) -> str:
        """The parent of the spans the task makes itself: its `execute` phase (written when
        the executor reports it; at `end` of a failed attempt, if it never did, from now
        to the end)."""
        if self._execute_since is None:
            self._execute_since = time.time()
        return f"00-{self.trace_id:032x}-{self.execute_id:016x}-01"

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_error(self, message: str) -> None:
        self.status = Status(StatusCode.ERROR, message[:500])

    def phase(
        self,
        name: str,
        start: float,
        end: float,
        events: Sequence[tuple[str, float, dict[str, Any]]] = (),
        **attrs: Any,
    ) -> None:
        """A finished child span (epoch seconds) with its kind (see SPAN_KINDS) and its
        events (name, epoch seconds, attributes)."""
        kind = SPAN_KINDS.get(name)
        attributes = {ATTR_KIND: str(kind) if kind else str(attrs.pop("kind", "compute")), **attrs}
        if name == EXECUTE_SPAN and not self._execute_written:
            span_id, self._execute_written = self.execute_id, True
        else:
            span_id = random.getrandbits(64) or 1
        self.phases.append((name, span_id, start, max(end, start), attributes))
        if events:
            self.events[span_id] = tuple(Event(n, a or None, ns(at)) for n, at, a in events)

    def end(self, end: float) -> None:
        """Write every span of the attempt (and hand them to the other exporters)."""
        if self._execute_since is not None and not self._execute_written and self.status is not _UNSET:
            # the task ran (it was given its spans' parent) and failed with no execute phase
            # reported (killed, timed out): its spans still get their parent. (A member of
            # a merged batch completes without one: the batch's is written once, elsewhere.)
            self.phase(EXECUTE_SPAN, self._execute_since, end)
        telemetry = self.telemetry
        try:
            text = self._render(max(end, self.start), _resource_json(telemetry.resource))
        except Exception as e:  # telemetry must never break the task it describes
            telemetry.files.errors += 1
            log.warning("could not serialise the spans for %s: %s", self.path, e)
        else:
            if self.fd >= 0:
                try:
                    _write_all(self.fd, text.encode())  # one write(2), O_APPEND
                except Exception as e:  # telemetry must never break the task it describes
                    telemetry.files.errors += 1
                    log.warning("could not write the spans to %s: %s", self.path, e)
            else:
                telemetry.files.append(self.path, text, TASK_SPAN)
        if len(telemetry.processors) > 1:
            spans = self.readable_spans(end)
            for processor in telemetry.processors[1:]:
                for span in spans:
                    processor.on_end(span)

    def close(self) -> None:
        """Close the spans file's descriptor, if it was given one (idempotent)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _render(self, end: float, resource: str) -> str:
        """The lines `_line` would make, phases first and root last, with what they share
        (trace id, trace state, root id, the closing fields) formatted once: an attempt's
        spans are rendered on the worker's loop, once per task."""
        state = _dumps(repr(self.trace_state)) if self.trace_state else _EMPTY_TRACE_STATE_JSON
        head = f'", "context": {{"trace_id": "0x{self.trace_id:032x}", "span_id": "0x'
        mid = f'", "trace_state": {state}}}, "kind": "{_INTERNAL}", "parent_id": '
        tail = f', "events": [], "links": [], "resource": {resource}}}\n'
        unset = '", "status": {"status_code": "UNSET"}, "attributes": '
        child_of_root = f'"0x{self.span_id:016x}", "start_time": "'
        lines = [
            f'{{"name": {_dumps_str(name)}{head[1:]}{span_id:016x}{mid}{child_of_root}'
            f'{iso_time(ns(start))}", "end_time": "{iso_time(ns(stop))}{unset}'
            f"{_attributes_json(attributes)}{self._events_tail(span_id, tail)}"
            for name, span_id, start, stop, attributes in self.phases
        ]
        parent = f'"0x{self.parent.span_id:016x}"' if self.parent is not None else "null"
        status = f'{{"status_code": "{self.status.status_code.name}"'
        if self.status.description:
            status += f', "description": {_dumps_str(self.status.description)}'
        lines.append(
            f'{{"name": "{TASK_SPAN}{head}{self.span_id:016x}{mid}{parent}, "start_time": '
            f'"{iso_time(ns(self.start))}", "end_time": "{iso_time(ns(end))}", "status": {status}}}, '
            f'"attributes": {_attributes_json(self.attributes)}{tail}'
        )
        return "".join(lines)

    def _events_tail(self, span_id: int, tail: str) -> str:
        events = self.events.get(span_id)
        if not events:
            return tail
        return tail.replace('"events": []', f'"events": {_dumps(ReadableSpan._format_events(events))}', 1)

    def readable_spans(self, end: float) -> list[ReadableSpan]:
        """The attempt's spans as the SDK's ReadableSpans (phases first, root last)."""
        flags = TraceFlags(TraceFlags.SAMPLED)
        root_ctx = SpanContext(self.trace_id, self.span_id, False, flags, self.trace_state)
        spans = [
            self.telemetry.finished_span(
                name,
                SpanContext(self.trace_id, span_id, False, flags, self.trace_state),
                root_ctx,
                attrs,
                start,
                stop,
                events=self.events.get(span_id, ()),
            )
            for name, span_id, start, stop, attrs in self.phases
        ]
        spans.append(
            self.telemetry.finished_span(
                TASK_SPAN, root_ctx, self.parent, self.attributes, self.start, end, self.status
            )
        )
        return spans


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
        self,
        path: str,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start: float,
        fd: int = -1,
    ) -> AttemptTrace:
        """The trace of one attempt, written to `path` (its spans.jsonl) when it ends:
        through `fd` (open for appending; closed by `AttemptTrace.close`) if given."""
        return AttemptTrace(self, path, parent, attributes, start, fd)

    def finished_span(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start: float,
        end: float,
        status: Status | None = None,
        events: Sequence[Event] = (),
    ) -> ReadableSpan:
        return ReadableSpan(
            name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            events=events,
            start_time=ns(start),
            end_time=ns(max(end, start)),
            status=status or _UNSET,
            instrumentation_scope=self.scope,
        )


class CurrentTaskFile(SpanProcessor):
    """For processes that run one task at a time (the python executor, a task's own
    subprocesses): every span goes to the spans.jsonl of the task named by the environment
    (``$TUIFLOW_TASK_DIR``) when it ends."""

    def on_end(self, span: ReadableSpan) -> None:
        task_dir = os.environ.get("TUIFLOW_TASK_DIR")
        if not task_dir:
            return
        path = layout.attempt_log(task_dir, layout.SPANS_FILE)
        try:
            home = os.environ.get("TUIFLOW_HOME") or os.path.dirname(path)
            append_under(home, path, (span_json(span) + "\n").encode())
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def set_error(span: trace.Span, message: str) -> None:
    span.set_status(Status(StatusCode.ERROR, message[:500]))
