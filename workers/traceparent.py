"""W3C traceparent headers to and from OpenTelemetry span contexts, with the API alone.

Kept apart from `workers.tracing` (which needs the SDK) so the python executor process,
which parents every task's spans on ``$TRACEPARENT``, starts without importing the SDK.
"""

from __future__ import annotations

import functools

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags


def traceparent(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


@functools.lru_cache(maxsize=256)
def span_context_from_traceparent(value: str | None) -> SpanContext | None:
    """Parse a W3C traceparent (as carried in task messages and executor requests).
    Cached: every task of a workflow names the same parent (the workflow's span), and a
    SpanContext is immutable."""
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
