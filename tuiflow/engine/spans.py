"""The coordinator's spans: each workflow's root span, closed error spans for attempts
that never ran on a worker (a setup failure, a lost worker, a cancel), and zero-length
spans for tasks decided never to run (skipped, upstream_failed), so that no task and no
attempt is silently missing from a trace (`analyzer.contract`).
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
        worker: str | None = None,
    ) -> None:
        """A closed error span for an attempt that never ran (or whose worker vanished),
        from `start` (default: `at`) to `at` (wall clock, epoch seconds). `worker`: the
        worker it ran on, if it did (a lost one): the attempt belongs on its lane, not on
        the coordinator's, which only recorded it (`tuiflow.recorded_by`)."""
        attrs = self._attempt_attrs(wf_id, run, idx, attempt)
        if worker is not None:
            attrs[c.ATTR_WORKER] = worker
            attrs["tuiflow.recorded_by"] = self.coordinator
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
        """A task cancelled before it started: queued (its attempt is recorded as never run)
        or still pending (recorded all the same, so that every task is in the trace)."""
        if run.started[idx]:
            return
        why = (
            "workflow cancelled while queued"
            if run.ready_at[idx]
            else "workflow cancelled before it was queued"
        )
        self.attempt_never_ran(wf_id, run, idx, run.attempt[idx], now, "cancelled", why)

    def not_run(
        self, wf_id: str, run: RunState, idx: int, now: float, outcome: str, reason: str | None
    ) -> None:
        """A zero-length task span for a task decided never to run (`c.NOT_RUN_OUTCOMES`):
        skipped by its condition, or upstream_failed."""
        attrs = self._attempt_attrs(wf_id, run, idx, run.attempt[idx])
        attrs[c.ATTR_OUTCOME] = outcome
        if reason:
            attrs[c.ATTR_ERROR] = reason[:500]
        span = self.tracer.start_span(
            c.TASK_SPAN, context=workflow_context(wf_id), attributes=attrs, start_time=ns(now)
        )
        if outcome != "skipped":  # a false condition is no error
            set_error(span, reason or outcome)
        span.end(end_time=ns(now))

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
