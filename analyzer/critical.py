"""The critical path: the chain of tasks that decided when the workflow ended.

Definition (latest attempt of each task)
----------------------------------------
1. Start from the task whose latest attempt ended last (ties: the greater name).
2. Step to its *gating parent*: the parent whose data became ready last (end of its READY
   span, see `Trace.data_ready`). When no parent has a READY span (dep_policy "any", or a
   failed parent), the parent that ended last stands in. Parents without spans are
   skipped; when none is left the walk stops there.
3. Repeat until a task without (known) parents. A ``depends_on`` cycle stops the walk at
   the first task seen twice (``cycle`` is set): malformed input never hangs it.

Per node, root first:

- ``active_seconds`` = the latest attempt's root span duration.
- ``wait_seconds`` = its start - the gating parent's data-ready time, clamped at 0
  (``clock_skew`` set when negative). For the first node: start - the earliest
  ``ready_at`` of its attempts (when it was first queued), else start - the workflow
  span's start, else 0.
- ``retry_seconds``: the part of the wait spent on earlier attempts: from the first
  attempt's start to when the latest attempt was queued (its ``ready_at``, else its
  start), clamped to [0, wait]. ``wait_seconds - retry_seconds`` is plain queuing.

The compute / network breakdown restricted to the path counts the descendants of each
path node's latest attempt; for a node in a merged batch (``tuiflow.batch.id``) it also
counts the spans of every other attempt of that batch (shared work such as a model load
or the merged generation is recorded once, on one member), each span once.
"""

from __future__ import annotations

from .dag import gate
from .records import SpanRecord
from .stats import DurationSummary, Frozen, NetworkSummary, breakdown
from .trace import Attempt, Trace

VIA_READY = "ready"
VIA_END = "parent end"
VIA_READY_AT = "ready_at"
VIA_WORKFLOW = "workflow start"


class PathNode(Frozen):
    """One task on the critical path (its latest attempt). Times in (epoch) seconds."""

    task: str
    attempt: int
    attempts: int
    worker: str | None
    outcome: str
    start: float
    end: float
    active_seconds: float
    wait_seconds: float
    retry_seconds: float
    gated_by: str | None  # the parent this node waited for (None for the first node)
    gate_time: float | None  # when the wait began, epoch seconds
    gate_via: str | None  # "ready" | "parent end" | "ready_at" | "workflow start" | None
    clock_skew: bool
    batch_id: str | None


class CriticalPath(Frozen):
    """The critical path, first task first, with totals and the restricted breakdown."""

    nodes: list[PathNode]
    end_task: str | None
    start: float | None  # when the first node's wait began
    end: float | None  # end of the last node
    active_seconds: float
    wait_seconds: float
    retry_seconds: float
    total_seconds: float  # active + wait
    cycle: bool
    stopped_at_missing: list[str]  # parents of the first node that have no spans
    compute: dict[str, DurationSummary]
    network: NetworkSummary
    batch_spans: int  # spans counted because another member of their batch is on the path

    @property
    def tasks(self) -> list[str]:
        """Task names on the path, first to last."""
        return [n.task for n in self.nodes]


def critical_path(trace: Trace) -> CriticalPath:
    """Walk the critical path back from the last task to finish.

    Parameters
    ----------
    trace:
        The workflow's trace.

    Returns
    -------
    CriticalPath
        Empty (no nodes, zero totals) for a trace without attempts.
    """
    if not trace.tasks:
        return _empty()
    # the last task to end of those that ran (a skipped task's record is a decision, not work)
    ran = [t for t, info in trace.tasks.items() if info.latest.ran] or list(trace.tasks)
    end_task = max(ran, key=lambda t: (trace.tasks[t].latest.end, t))
    chain, gates, cycle, stopped_missing = _walk_back(trace, end_task)
    nodes = [_node(trace, name, gates.get(name)) for name in chain]
    spans, via_batch = _path_spans(trace, chain)
    compute, network = breakdown(spans)
    active = sum(n.active_seconds for n in nodes)
    wait = sum(n.wait_seconds for n in nodes)
    first = nodes[0]
    return CriticalPath(
        nodes=nodes,
        end_task=end_task,
        start=first.gate_time if first.gate_time is not None else first.start,
        end=nodes[-1].end,
        active_seconds=active,
        wait_seconds=wait,
        retry_seconds=sum(n.retry_seconds for n in nodes),
        total_seconds=active + wait,
        cycle=cycle,
        stopped_at_missing=stopped_missing,
        compute=compute,
        network=network,
        batch_spans=via_batch,
    )


def _walk_back(
    trace: Trace, end_task: str
) -> tuple[list[str], dict[str, tuple[str, float, str]], bool, list[str]]:
    """The chain of gating parents back from `end_task`, first task first; each task's gate
    (parent, time, via); whether a cycle stopped the walk; the first task's missing parents."""
    chain: list[str] = [end_task]
    gates: dict[str, tuple[str, float, str]] = {}
    seen = {end_task}
    cycle = False
    stopped_missing: list[str] = []
    cur = end_task
    while True:
        step = _gating_parent(trace, cur)
        if step is None:
            stopped_missing = [p for p in trace.tasks[cur].depends_on if p not in trace.tasks]
            break
        parent, time, via = step
        if parent in seen:
            cycle = True
            break
        gates[cur] = (parent, time, via)
        chain.append(parent)
        seen.add(parent)
        cur = parent
    chain.reverse()
    return chain, gates, cycle, stopped_missing


def _node(trace: Trace, name: str, gate_info: tuple[str, float, str] | None) -> PathNode:
    """Task `name` on the path: its latest attempt, its wait since its gate, the retries in it."""
    info = trace.tasks[name]
    latest = info.latest
    if gate_info is not None:
        gated_by, gate_time, via = gate_info
    else:
        gated_by = None
        gate_time, via = _first_gate(trace, info.attempts)
    raw = latest.start - gate_time if gate_time is not None else 0.0
    wait = max(0.0, raw)
    retry = 0.0
    if len(info.attempts) > 1:
        first_start = info.attempts[0].start
        if gate_time is not None:
            first_start = max(first_start, gate_time)
        requeued = latest.ready_at if latest.ready_at is not None else latest.start
        retry = min(wait, max(0.0, requeued - first_start))
    return PathNode(
        task=name,
        attempt=latest.attempt,
        attempts=len(info.attempts),
        worker=latest.worker,
        outcome=latest.outcome,
        start=latest.start,
        end=latest.end,
        active_seconds=latest.duration,
        wait_seconds=wait,
        retry_seconds=retry,
        gated_by=gated_by,
        gate_time=gate_time,
        gate_via=via,
        clock_skew=raw < 0.0,
        batch_id=latest.batch_id,
    )


def _gating_parent(trace: Trace, task: str) -> tuple[str, float, str] | None:
    g = gate(trace, task)
    if g.parent is not None and g.time is not None:
        return g.parent, g.time, VIA_READY
    # No parent wrote a READY span: the one that ended last is the best evidence left.
    present = [p for p in g.unready if p in trace.tasks]
    if not present:
        return None
    best = max(present, key=lambda p: trace.tasks[p].latest.end)
    return best, trace.tasks[best].latest.end, VIA_END


def _first_gate(trace: Trace, attempts: list[Attempt]) -> tuple[float | None, str | None]:
    queued = [a.ready_at for a in attempts if a.ready_at is not None]
    if queued:
        return min(queued), VIA_READY_AT
    if trace.workflow is not None:
        return trace.workflow.start, VIA_WORKFLOW
    return None, None


def _path_spans(trace: Trace, chain: list[str]) -> tuple[list[SpanRecord], int]:
    """Descendants of the path's latest attempts, plus their batches' spans, each once."""
    picked: dict[int, SpanRecord] = {}
    on_path: set[int] = set()
    batches: list[str] = []
    for name in chain:
        latest = trace.tasks[name].latest
        on_path.add(id(latest))
        for rec in latest.children:
            picked[id(rec)] = rec
        if latest.batch_id is not None and latest.batch_id not in batches:
            batches.append(latest.batch_id)
    via_batch = 0
    for batch in batches:
        for member in trace.batches.get(batch, ()):
            if id(member) in on_path:
                continue
            for rec in member.children:
                if id(rec) not in picked:
                    picked[id(rec)] = rec
                    via_batch += 1
    return list(picked.values()), via_batch


def _empty() -> CriticalPath:
    compute, network = breakdown(())
    return CriticalPath(
        nodes=[],
        end_task=None,
        start=None,
        end=None,
        active_seconds=0.0,
        wait_seconds=0.0,
        retry_seconds=0.0,
        total_seconds=0.0,
        cycle=False,
        stopped_at_missing=[],
        compute=compute,
        network=network,
        batch_spans=0,
    )
