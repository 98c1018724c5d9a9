"""Slack and what-if: how late each task could have started, and what a faster step buys.

Both come from the spans alone, on the workflow's actual DAG with its actual times.

The model
---------
Each task that ran (its latest attempt) has

- a **duration** ``d``: its root span's length;
- a **wait** ``w``: from when its DAG let it start (the last of its parents to end; the
  workflow's start for a task without parents) to when it started, clamped at 0. The wait
  holds everything but the task's own run: queuing for a worker slot, dispatch, earlier
  attempts that failed.

A forward pass gives each task its earliest finish ``EF = max(EF of parents) + w + d``
(parents: its ``depends_on`` that have spans; every one of them, as for ``dep_policy:
all``) and the **makespan** ``M = max EF`` (with the observed durations and waits it is the
workflow's own span, to rounding). A backward pass gives the latest finish that keeps ``M``:
``LF = M`` for a task nobody depends on, else ``min(LF - d - w)`` over its children.
**Slack** is ``LF - EF``: how much later the task could have ended (and so started)
without delaying the end. The critical path has no slack; a task with less than
`NEAR_CRITICAL` of the makespan is *near-critical*.

**What-if** changes the durations of chosen tasks (a speed-up factor, or a new duration)
and runs the forward pass again: the new makespan and the new critical path (from the
task that ends last, back through the parent that ended last). Waits are kept as they were
observed: worker slots and queues are modelled by the delays they caused in the run, not
re-simulated, so a change that would free a slot for others earlier is not credited (the
gain shown is a floor, not a promise). Tasks without spans (never ran) are not in the DAG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .stats import Frozen
from .trace import Trace

#: slack below this fraction of the makespan marks a task near-critical
NEAR_CRITICAL = 0.1


class TaskSlack(Frozen):
    """One task's place in the schedule; times in seconds from the workflow's start."""

    task: str
    duration: float
    wait: float
    earliest_finish: float
    latest_finish: float
    slack: float
    critical: bool
    near_critical: bool


class SlackReport(Frozen):
    """Every task that ran, least slack first, and the makespan they make."""

    makespan: float
    tasks: list[TaskSlack]


class WhatIf(Frozen):
    """A makespan before and after changing some tasks' durations."""

    changed: dict[str, tuple[float, float]]  # task -> (duration before, after)
    makespan_before: float
    makespan_after: float
    critical_before: list[str]
    critical_after: list[str]

    @property
    def saved(self) -> float:
        return self.makespan_before - self.makespan_after


class _Schedule:
    """The DAG of the tasks that ran, with their durations and waits, in topological order."""

    def __init__(self, trace: Trace):
        tasks = trace.tasks
        origin = trace.start if trace.start is not None else 0.0
        self.parents = {t: [p for p in info.depends_on if p in tasks and p != t] for t, info in tasks.items()}
        self.order = _topological(self.parents)
        self.duration = {t: max(0.0, tasks[t].latest.duration) for t in self.order}
        self.wait = {}
        for t in self.order:
            ready = max((tasks[p].latest.end for p in self.parents[t]), default=origin)
            self.wait[t] = max(0.0, tasks[t].latest.start - ready)

    def forward(self, duration: dict[str, float]) -> dict[str, float]:
        ef: dict[str, float] = {}
        for t in self.order:
            ef[t] = max((ef[p] for p in self.parents[t]), default=0.0) + self.wait[t] + duration[t]
        return ef

    def backward(self, makespan: float) -> dict[str, float]:
        children: dict[str, list[str]] = {t: [] for t in self.order}
        for t in self.order:
            for p in self.parents[t]:
                children[p].append(t)
        lf: dict[str, float] = {}
        for t in reversed(self.order):
            lf[t] = min((lf[c] - self.duration[c] - self.wait[c] for c in children[t]), default=makespan)
        return lf

    def critical(self, ef: dict[str, float]) -> list[str]:
        """From the task that ends last back through the parent that ends last."""
        if not ef:
            return []
        cur = max(ef, key=lambda t: (ef[t], t))
        chain = [cur]
        while self.parents[cur]:
            cur = max(self.parents[cur], key=lambda p: (ef[p], p))
            chain.append(cur)
        return chain[::-1]


def _topological(parents: dict[str, list[str]]) -> list[str]:
    """Parents before children; tasks on a cycle (malformed input) last, their edges into
    the cycle dropped, so that the passes always end."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in sorted(parents):
        if state.get(root):
            continue
        state[root] = 1
        stack = [(root, iter(list(parents[root])))]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            elif state.get(nxt, 0) == 0:
                state[nxt] = 1
                stack.append((nxt, iter(list(parents[nxt]))))
            elif state[nxt] == 1:
                parents[node] = [p for p in parents[node] if p != nxt]  # a cycle: cut the edge
    return order


def slack(trace: Trace, near: float = NEAR_CRITICAL) -> SlackReport:
    """Every task's slack on the actual DAG and times (see the module docstring)."""
    s = _Schedule(trace)
    ef = s.forward(s.duration)
    makespan = max(ef.values(), default=0.0)
    lf = s.backward(makespan)
    eps = 1e-6 * max(1.0, makespan)
    rows = []
    for t in s.order:
        room = max(0.0, lf[t] - ef[t])
        rows.append(
            TaskSlack(
                task=t,
                duration=s.duration[t],
                wait=s.wait[t],
                earliest_finish=ef[t],
                latest_finish=lf[t],
                slack=room,
                critical=room <= eps,
                near_critical=eps < room < near * makespan,
            )
        )
    rows.sort(key=lambda r: (r.slack, r.earliest_finish, r.task))
    return SlackReport(makespan=makespan, tasks=rows)


def select(
    trace: Trace, *, tasks: Iterable[str] = (), prefix: str | None = None, executor: str | None = None
) -> list[str]:
    """The tasks a what-if changes: named, under a name prefix, or run by an executor."""
    names = set(tasks)
    out = []
    for t, info in trace.tasks.items():
        if t in names or (prefix and t.startswith(prefix)) or (executor and info.latest.executor == executor):
            out.append(t)
    return sorted(out)


def what_if(trace: Trace, chosen: Iterable[str], change: Callable[[float], float]) -> WhatIf:
    """The makespan and critical path with `change(duration)` for each chosen task."""
    s = _Schedule(trace)
    before = s.forward(s.duration)
    after_duration = dict(s.duration)
    changed = {}
    for t in chosen:
        if t in after_duration:
            new = max(0.0, change(s.duration[t]))
            changed[t] = (s.duration[t], new)
            after_duration[t] = new
    after = s.forward(after_duration)
    return WhatIf(
        changed=changed,
        makespan_before=max(before.values(), default=0.0),
        makespan_after=max(after.values(), default=0.0),
        critical_before=s.critical(before),
        critical_after=s.critical(after),
    )


__all__ = ["NEAR_CRITICAL", "SlackReport", "TaskSlack", "WhatIf", "select", "slack", "what_if"]
