"""The coordinator's spans: each workflow's root span, and closed error spans for
attempts that never ran on a worker (a setup failure, a lost worker, a cancel while
queued), so that no attempt is silently missing from a trace (`analyzer.contract`).
"""

from __future__ import annotations

import functools
import socket
from typing import Any

from opentelemetry import trace as otel_trace

from analyzer import contract as c
from tuiflow.engine.runstate import RunState
from workers.tracing import Telemetry, forced_ids, ns, set_error, traceparent, workflow_context


class CoordinatorSpans:
    """Writes the coordinator's spans (`workers.tracing.Telemetry`) as `coordinator`."""

    def __init__(self, telemetry: Telemetry, coordinator: str):
        self.tracer = telemetry.tracer
        self.coordinator = coordinator

    def workflow_ended(self, wf_id: str, run: RunState, state: str, end: float) -> None:
        """The workflow's root span, from its creation to `end` (wall clock, epoch s)."""
        with forced_ids(wf_id, workflow_span=True):
            span = self.tracer.start_span(
                c.WORKFLOW_SPAN,
                attributes={
                    c.ATTR_WORKFLOW_ID: wf_id,
                    c.ATTR_WORKFLOW_NAME: run.definition.name,
                    c.ATTR_RUN_ID: wf_id,
                    c.ATTR_OUTCOME: state,
                    "tuiflow.tasks": len(run),
                    **{f"tuiflow.count.{k}": v for k, v in run.count_dict().items() if v},
                },
                start_time=ns(run.created_at),
            )
        if state != "completed":
            set_error(span, f"workflow {state}")
        span.end(end_time=ns(end))

    def attempt_never_ran(
        self,
        wf_id: str,
        run: RunState,
        idx: int,
        attempt: int,
        at: float,
        outcome: str,
        error: str,
        start: float | None = None,
    ) -> None:
        """A closed error span for an attempt that never ran (or whose worker vanished),
        from `start` (default: `at`) to `at` (wall clock, epoch seconds)."""
        attrs = self._attempt_attrs(wf_id, run, idx, attempt)
        attrs[c.ATTR_OUTCOME] = outcome
        attrs[c.ATTR_ERROR] = error[:500]
        span = self.tracer.start_span(
            c.TASK_SPAN,
            context=workflow_context(wf_id),
            attributes=attrs,
            start_time=ns(start if start else at),
        )
        set_error(span, error)
        span.end(end_time=ns(at))

    def cancelled_while_queued(self, wf_id: str, run: RunState, idx: int, now: float) -> None:
        # Only attempts that had been queued exist in the trace; pending tasks never had one.
        if run.ready_at[idx] and not run.started[idx]:
            self.attempt_never_ran(
                wf_id, run, idx, run.attempt[idx], now, "cancelled", "workflow cancelled while queued"
            )

    def _attempt_attrs(self, wf_id: str, run: RunState, idx: int, attempt: int) -> dict[str, Any]:
        t = run.definition.tasks[idx]
        return {
            c.ATTR_WORKFLOW_ID: wf_id,
            c.ATTR_WORKFLOW_NAME: run.definition.name,
            c.ATTR_RUN_ID: wf_id,
            c.ATTR_TASK: t.name,
            c.ATTR_ATTEMPT: attempt,
            c.ATTR_DEPENDS_ON: list(t.depends_on),
            c.ATTR_READY_AT: run.ready_at[idx] or 0.0,
            c.ATTR_QUEUE: t.queue,
            c.ATTR_EXECUTOR: t.executor,
            c.ATTR_WORKER: self.coordinator,
            c.ATTR_HOST: socket.gethostname(),
        }


@functools.lru_cache(maxsize=1024)
def workflow_traceparent(wf_id: str) -> str:
    """W3C traceparent naming the workflow's root span (every task span's parent)."""
    return traceparent(otel_trace.get_current_span(workflow_context(wf_id)).get_span_context())
