"""The DAG state machine: (state, event) -> (new state, actions), with no I/O.

One `RunState` holds the mutable state of one workflow. Its methods apply one event each
(a task started, completed or failed; a worker was lost; cancel; retry; a timeout sweep)
and return the actions the caller must carry out (dispatch a task, kill one, note a
change). The coordinator daemon and ``tuiflow run-local`` share this code; the time is
always passed in, and the only outside access, loading a large upstream output for a
condition, goes through the `load_ref` function the caller provides.

Times: every `now`, `started_at` and timestamp column (`ready_at`, `started`, `ended`) is
the coordinator's wall clock in epoch seconds; `grace` and timeouts are seconds.

Semantics (docs/semantics.md has the full table):

* ``all`` (default): ready when every dependency completed; upstream_failed as soon as one
  failed, was upstream_failed or cancelled; skipped when every dependency is terminal, one
  was skipped and none failed.
* ``any``: ready as soon as one dependency completed (later ones change nothing);
  upstream_failed or skipped only once no dependency can complete any more (upstream_failed
  if one of them failed, skipped otherwise).
* The condition is evaluated when the task becomes ready: false (or a missing key) means
  skipped, with the reason kept; an error in it (a type error) fails the task.
* A failed attempt with retries left goes back to ready (the dispatch is delayed by
  ``retry_backoff``) with attempt + 1. A lost worker and a timeout are failed attempts.
  Every event names its attempt; an event for any other attempt than the current one, or
  for a task no longer waiting for it, is a duplicate or a late result and changes nothing.
  So a completion is applied exactly once, however many times the task ran.
* Cancel: pending and ready tasks become cancelled at once, running ones are killed and
  end as cancelled. The workflow is completed when all tasks are terminal and none failed or
  upstream_failed; failed otherwise; cancelled if it was cancelled.
* Retry: failed, upstream_failed and cancelled tasks (or the named ones, plus their
  upstream_failed/cancelled descendants) go back to pending with a fresh retry budget.
"""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from tuiflow.engine.expr import ExpressionError, MissingValue, evaluate_condition
from tuiflow.engine.model import Definition, _expression
from tuiflow.errors import TuiflowError
from workers.wire import FailKind

PENDING, READY, RUNNING, COMPLETED, FAILED, SKIPPED, UPSTREAM_FAILED, CANCELLED = range(8)
STATE_NAMES = (
    "pending",
    "ready",
    "running",
    "completed",
    "failed",
    "skipped",
    "upstream_failed",
    "cancelled",
)
STATE_CODES = {name: code for code, name in enumerate(STATE_NAMES)}
TERMINAL = frozenset({COMPLETED, FAILED, SKIPPED, UPSTREAM_FAILED, CANCELLED})
_BAD = frozenset({FAILED, UPSTREAM_FAILED, CANCELLED})

WF_PENDING, WF_RUNNING, WF_COMPLETED, WF_FAILED, WF_CANCELLED = (
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
)
WF_STATES = (WF_PENDING, WF_RUNNING, WF_COMPLETED, WF_FAILED, WF_CANCELLED)
WF_TERMINAL = frozenset({WF_COMPLETED, WF_FAILED, WF_CANCELLED})
RUN_FORMAT = 1
#: seconds before an attempt the home could not take (a full disk) runs again
STORAGE_BACKOFF = 2.0


# ---------------------------------------------------------------------------- actions
@dataclasses.dataclass(frozen=True, slots=True)
class Dispatch:
    """Queue attempt `attempt` of task `idx`, after `delay` seconds."""

    idx: int
    attempt: int
    delay: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Kill:
    """Stop the running attempt (cancel, timeout)."""

    idx: int
    attempt: int
    worker: str | None
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Changed:
    """Task `idx` reached `state` (a terminal state, or "retrying")."""

    idx: int
    state: str
    reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Finished:
    """The workflow reached a terminal state."""

    state: str


Action = Dispatch | Kill | Changed | Finished


class NotRetryable(TuiflowError, ValueError):
    """`retry` named a task that is not failed, upstream_failed or cancelled."""


def _no_refs(path: str) -> Any:
    raise MissingValue(f"output stored at {path}")


class Inputs(Mapping[str, Any]):
    """Outputs of a task's direct dependencies, by name; large outputs load on first use.

    A foreach group a task depends on appears under its group name as the list of its
    members' outputs, in order.
    """

    def __init__(self, run: RunState, idx: int):
        self._run = run
        self._deps = run.definition.deps[idx]
        self._names = {run.definition.tasks[d].name: d for d in self._deps}
        groups: dict[str, list[int]] = {}
        for d in self._deps:
            g = run.definition.tasks[d].group
            if g is not None:
                groups.setdefault(g, []).append(d)
        self._groups = groups

    def __getitem__(self, key: str) -> Any:
        if key in self._names:
            return self._run.output(self._names[key])
        if key in self._groups:
            return [self._run.output(d) for d in self._groups[key]]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from self._names
        yield from self._groups

    def __len__(self) -> int:
        return len(self._names) + len(self._groups)


class RunState:
    """The state of one workflow run. Columns are arrays indexed by task number.

    One class with many methods, on purpose: every transition updates the same columns
    and counters together, and splitting them apart would spread one invariant (the
    counts always match the columns) over several classes. The methods come in groups:
    queries (`state_of`, `output`, `env_for`, `running_on`...), one transition per event
    (`start`, `on_started`, `on_completed`, `on_failed`, `on_worker_lost`,
    `check_timeouts`, `cancel`, `retry`) with their helpers, and the wire form
    (`to_wire`, `from_wire`).

    Parameters:
        load_ref: loads an output stored in a file (path relative to the home).
    """

    def __init__(
        self,
        definition: Definition,
        wf_id: str,
        created_at: float,
        *,
        load_ref: Callable[[str], Any] = _no_refs,
    ):
        n = len(definition)
        self.definition = definition
        self.wf_id = wf_id
        self.load_ref = load_ref
        self.state = WF_PENDING
        self.created_at = created_at
        self.started_at = 0.0
        self.ended_at = 0.0
        self.cancel_requested = False
        self.st = bytearray(n)
        self.attempt = array.array("I", bytes(4 * n))
        self.retry_base: dict[int, int] = {}
        self.ready_at = array.array("d", bytes(8 * n))
        self.started = array.array("d", bytes(8 * n))
        self.ended = array.array("d", bytes(8 * n))
        self.worker: dict[int, str] = {}
        self.outputs: dict[int, Any] = {}
        self.output_refs: dict[int, tuple[str, int]] = {}
        self.reason: dict[int, str] = {}
        self.exit_code: dict[int, int] = {}
        self.fail_kind: dict[int, str] = {}
        self.counts = [0] * len(STATE_NAMES)
        self.counts[PENDING] = n
        self.stats = {"completions_applied": 0, "duplicates_ignored": 0, "retries": 0}
        #: ids of control requests already applied (a redelivered request changes nothing)
        self.requests: list[str] = []
        #: why the workflow itself failed, when no task's failure explains it
        self.error: str | None = None
        self._done = array.array("I", bytes(4 * n))
        self._term = array.array("I", bytes(4 * n))
        self._bad = array.array("I", bytes(4 * n))
        self._finished_reported = False

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.st)

    def state_of(self, idx: int) -> str:
        return STATE_NAMES[self.st[idx]]

    def output(self, idx: int) -> Any:
        if idx in self.outputs:
            return self.outputs[idx]
        if idx in self.output_refs:
            return self.load_ref(self.output_refs[idx][0])
        return None

    @property
    def terminal(self) -> bool:
        return self.state in WF_TERMINAL

    def count_dict(self) -> dict[str, int]:
        return dict(zip(STATE_NAMES, self.counts, strict=True))

    def env_for(self, idx: int) -> dict[str, Any]:
        """Names a condition or template of task `idx` can use."""
        t = self.definition.tasks[idx]
        env: dict[str, Any] = {"inputs": Inputs(self, idx), "params": self.definition.params}
        if t.group is not None:
            env["item"], env["index"] = t.item, t.index
        return env

    # -------------------------------------------------------------- transitions
    def _set(self, idx: int, code: int) -> None:
        self.counts[self.st[idx]] -= 1
        self.counts[code] += 1
        self.st[idx] = code

    def start(self, now: float) -> list[Action]:
        """Admit the workflow: roots become ready (or skipped by their condition)."""
        if self.state != WF_PENDING:
            return []
        self.state = WF_RUNNING
        self.started_at = now
        actions: list[Action] = []
        for idx, deps in enumerate(self.definition.deps):
            if not deps and self.st[idx] == PENDING:
                self._make_ready(idx, now, actions)
        self._check_finished(now, actions)
        return actions

    def _make_ready(self, idx: int, now: float, actions: list[Action]) -> None:
        cond = self.definition.tasks[idx].condition
        if cond is not None:
            try:
                ok, why = evaluate_condition(_expression(cond), self.env_for(idx))
            except ExpressionError as e:
                self._finish(idx, FAILED, now, actions, f"condition error: {e}", kind="condition")
                return
            if not ok:
                self._finish(idx, SKIPPED, now, actions, why)
                return
        self._set(idx, READY)
        self.ready_at[idx] = now
        actions.append(Dispatch(idx, self.attempt[idx]))

    def _finish(
        self,
        idx: int,
        code: int,
        now: float,
        actions: list[Action],
        reason: str | None = None,
        kind: str | None = None,
    ) -> None:
        """Make task `idx` terminal and propagate to its descendants (iteratively)."""
        work = [(idx, code, reason, kind)]
        while work:
            i, c, why, k = work.pop()
            if self.st[i] in TERMINAL:
                continue
            self._set(i, c)
            self.ended[i] = now
            if why is not None:
                self.reason[i] = why
            if k is not None:
                self.fail_kind[i] = k
            actions.append(Changed(i, STATE_NAMES[c], why))
            name = self.definition.tasks[i].name
            for child in self.definition.children[i]:
                self._term[child] += 1
                if c == COMPLETED:
                    self._done[child] += 1
                elif c in _BAD:
                    self._bad[child] += 1
                if self.st[child] != PENDING or self.cancel_requested:
                    continue
                t = self.definition.tasks[child]
                ndeps = len(self.definition.deps[child])
                if t.dep_policy == "all":
                    if self._bad[child]:
                        work.append((child, UPSTREAM_FAILED, f"upstream {name} {STATE_NAMES[c]}", None))
                    elif self._done[child] == ndeps:
                        self._make_ready(child, now, actions)
                    elif self._term[child] == ndeps:
                        work.append((child, SKIPPED, f"upstream {name} skipped", None))
                elif self._done[child]:
                    self._make_ready(child, now, actions)
                elif self._term[child] == ndeps:
                    if self._bad[child]:
                        work.append((child, UPSTREAM_FAILED, "no dependency completed (some failed)", None))
                    else:
                        work.append((child, SKIPPED, "no dependency completed (all skipped)", None))

    def _check_finished(self, now: float, actions: list[Action]) -> None:
        if self._finished_reported or sum(self.counts[c] for c in TERMINAL) != len(self.st):
            return
        if self.cancel_requested:
            state = WF_CANCELLED
        elif self.counts[FAILED] or self.counts[UPSTREAM_FAILED] or self.counts[CANCELLED]:
            state = WF_FAILED
        else:
            state = WF_COMPLETED
        self.state = state
        self.ended_at = now
        self._finished_reported = True
        actions.append(Finished(state))

    def _current(self, idx: int, attempt: int, states: Iterable[int]) -> bool:
        if idx < 0 or idx >= len(self.st) or self.attempt[idx] != attempt or self.st[idx] not in states:
            self.stats["duplicates_ignored"] += 1
            return False
        return True

    # ------------------------------------------------------------------- events
    def on_started(self, idx: int, attempt: int, worker: str, now: float) -> list[Action]:
        if not self._current(idx, attempt, (READY,)):
            return []
        self._set(idx, RUNNING)
        self.started[idx] = now
        self.worker[idx] = worker
        return []

    def on_completed(
        self,
        idx: int,
        attempt: int,
        worker: str,
        now: float,
        *,
        output: Any = None,
        output_ref: tuple[str, int] | None = None,
        started_at: float | None = None,
    ) -> list[Action]:
        if not self._current(idx, attempt, (READY, RUNNING)):
            return []
        if self.st[idx] == READY:  # its "started" event was folded into this one
            self.started[idx] = started_at or now
        self.worker[idx] = worker
        if output_ref is not None:
            self.output_refs[idx] = (output_ref[0], int(output_ref[1]))
        elif output is not None:
            self.outputs[idx] = output
        self.stats["completions_applied"] += 1
        actions: list[Action] = []
        self._finish(idx, COMPLETED, now, actions)
        self._check_finished(now, actions)
        return actions

    def on_failed(
        self,
        idx: int,
        attempt: int,
        worker: str | None,
        now: float,
        *,
        error: str,
        kind: str = "error",
        exit_code: int | None = None,
        started_at: float | None = None,
    ) -> list[Action]:
        """An attempt ended badly. `kind`: error, timeout, lost, cancelled, setup, worker stopped,
        storage."""
        if not self._current(idx, attempt, (READY, RUNNING)):
            return []
        actions: list[Action] = []
        if self.st[idx] == READY and started_at:
            self.started[idx] = started_at
        if exit_code is not None:
            self.exit_code[idx] = exit_code
        if worker is not None:
            self.worker[idx] = worker
        t = self.definition.tasks[idx]
        if self.cancel_requested or kind == "cancelled":
            self._finish(idx, CANCELLED, now, actions, error, kind="cancelled")
        elif kind in ("worker stopped", "storage"):
            # An operator stopped the worker, or the home could not take the attempt's files
            # (a full disk): the task is not to blame, so it runs again without spending a retry.
            self.attempt[idx] = attempt + 1
            self.retry_base[idx] = self.retry_base.get(idx, 0) + 1
            self._set(idx, READY)
            self.ready_at[idx] = now
            self.reason[idx] = (
                f"attempt {attempt}: worker {worker} stopped"
                if kind == "worker stopped"
                else f"attempt {attempt}: {error}"
            )
            actions.append(Changed(idx, "retrying", self.reason[idx]))
            actions.append(Dispatch(idx, attempt + 1, delay=STORAGE_BACKOFF if kind == "storage" else 0.0))
        elif kind != "setup" and attempt - self.retry_base.get(idx, 0) < t.num_retries:
            self.attempt[idx] = attempt + 1
            self._set(idx, READY)
            self.ready_at[idx] = now
            self.reason[idx] = f"attempt {attempt} {kind}: {error}"
            self.fail_kind[idx] = kind
            self.stats["retries"] += 1
            actions.append(Changed(idx, "retrying", self.reason[idx]))
            actions.append(Dispatch(idx, attempt + 1, delay=t.retry_backoff))
        else:
            self._finish(idx, FAILED, now, actions, error, kind=kind)
        self._check_finished(now, actions)
        return actions

    def on_worker_lost(self, worker: str, now: float) -> list[Action]:
        """Every attempt running on `worker` failed (kind "lost")."""
        actions: list[Action] = []
        for idx in self.running_on(worker):
            actions += self.on_failed(
                idx, self.attempt[idx], worker, now, error=f"worker {worker} lost", kind="lost"
            )
        return actions

    def running_on(self, worker: str) -> list[int]:
        return [i for i, w in self.worker.items() if w == worker and self.st[i] == RUNNING]

    def check_timeouts(self, now: float, grace: float) -> list[Action]:
        """Fail (and kill) running attempts past their timeout + `grace` seconds."""
        actions: list[Action] = []
        for idx in list(self.worker):
            timeout = self.definition.tasks[idx].timeout
            if timeout is not None and self.st[idx] == RUNNING and now - self.started[idx] > timeout + grace:
                attempt, worker = self.attempt[idx], self.worker.get(idx)
                actions.append(Kill(idx, attempt, worker, "timeout"))
                actions += self.on_failed(
                    idx,
                    attempt,
                    worker,
                    now,
                    error=f"timed out after {timeout:g} s (coordinator sweep)",
                    kind="timeout",
                )
        return actions

    def seen_request(self, request_id: str | None) -> bool:
        """True if this request was applied before; otherwise remember it."""
        if not request_id:
            return False
        if request_id in self.requests:
            return True
        self.requests = [*self.requests[-63:], request_id]
        return False

    def fail(self, error: str, now: float) -> list[Action]:
        """End the workflow as failed because it cannot go on (the coordinator could not
        apply one of its events, say): every task not yet ended fails with `error`. Safe
        to call on a state a transition left half-changed: it sets columns directly."""
        actions: list[Action] = []
        for idx, code in enumerate(self.st):
            if code == RUNNING:
                actions.append(Kill(idx, self.attempt[idx], self.worker.get(idx), "failed"))
            if code not in TERMINAL:
                self._set(idx, FAILED)
                self.ended[idx] = now
                self.reason[idx] = error
                self.fail_kind[idx] = FailKind.INTERNAL
        self.counts = [0] * len(STATE_NAMES)
        for code in self.st:
            self.counts[code] += 1
        self._recount()
        self.error = error
        self.state = WF_FAILED
        self.ended_at = now
        self._finished_reported = True
        actions.append(Finished(WF_FAILED))
        return actions

    def cancel(self, now: float) -> list[Action]:
        if self.terminal and not any(self.st[i] == RUNNING for i in self.worker):
            return []
        self.cancel_requested = True
        self.state = WF_CANCELLED
        actions: list[Action] = []
        for idx, code in enumerate(self.st):
            if code in (PENDING, READY):
                self._finish(idx, CANCELLED, now, actions, "workflow cancelled", kind="cancelled")
            elif code == RUNNING:
                actions.append(Kill(idx, self.attempt[idx], self.worker.get(idx), "cancelled"))
        self._check_finished(now, actions)
        return actions

    def _retryable(self, names: Iterable[str] | None) -> set[int]:
        """The tasks a retry of `names` (None: every failed one) runs again; NotRetryable
        names one that cannot be."""
        if not names:
            return {i for i, code in enumerate(self.st) if code in _BAD}
        index = self.definition.index
        chosen = set()
        for name in names:
            if name not in index:
                raise NotRetryable(f"no task named {name!r}")
            i = index[name]
            if self.st[i] not in _BAD:
                raise NotRetryable(
                    f"task {name!r} is {STATE_NAMES[self.st[i]]}; only failed, "
                    "upstream_failed and cancelled tasks can be retried"
                )
            chosen.add(i)
        # descendants that failed only because of the chosen ones come along
        stack = list(chosen)
        while stack:
            for child in self.definition.children[stack.pop()]:
                if child not in chosen and self.st[child] in (UPSTREAM_FAILED, CANCELLED):
                    chosen.add(child)
                    stack.append(child)
        return chosen

    def retry(self, names: Iterable[str] | None, now: float) -> list[Action]:
        """Run failed, upstream_failed and cancelled tasks again (all, or the named ones
        and the descendants that failed only because of them). `now`: wall clock."""
        chosen = self._retryable(names)
        if not chosen:
            return []
        for i in chosen:
            self._set(i, PENDING)
            self.attempt[i] += 1
            self.retry_base[i] = self.attempt[i]
            for col in (self.ready_at, self.started, self.ended):
                col[i] = 0.0
            for d in (
                self.reason,
                self.exit_code,
                self.fail_kind,
                self.outputs,
                self.output_refs,
                self.worker,
            ):
                d.pop(i, None)
        self.cancel_requested = False
        self.state = WF_RUNNING
        self.ended_at = 0.0
        self._finished_reported = False
        self._recount()
        actions: list[Action] = []
        for i in self._topological(chosen):
            if self.st[i] != PENDING:
                continue
            deps = self.definition.deps[i]
            if not deps:
                self._make_ready(i, now, actions)
                continue
            t = self.definition.tasks[i]
            if (t.dep_policy == "all" and self._done[i] == len(deps)) or (
                t.dep_policy == "any" and self._done[i]
            ):
                self._make_ready(i, now, actions)
        self._check_finished(now, actions)
        return actions

    def _topological(self, subset: set[int]) -> list[int]:
        indegree = {i: sum(1 for d in self.definition.deps[i] if d in subset) for i in subset}
        order = [i for i, n in indegree.items() if n == 0]
        for i in order:
            for c in self.definition.children[i]:
                if c in indegree:
                    indegree[c] -= 1
                    if indegree[c] == 0:
                        order.append(c)
        return order

    def _recount(self) -> None:
        n = len(self.st)
        self._done = array.array("I", bytes(4 * n))
        self._term = array.array("I", bytes(4 * n))
        self._bad = array.array("I", bytes(4 * n))
        for i, code in enumerate(self.st):
            if code in TERMINAL:
                for c in self.definition.children[i]:
                    self._term[c] += 1
                    if code == COMPLETED:
                        self._done[c] += 1
                    elif code in _BAD:
                        self._bad[c] += 1
        self.counts = [0] * len(STATE_NAMES)
        for code in self.st:
            self.counts[code] += 1

    # --------------------------------------------------------------- persistence
    def to_wire(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "wf": self.wf_id,
            "state": self.state,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "cancel": self.cancel_requested,
            "stats": self.stats,
            "st": bytes(self.st),
            "attempt": self.attempt.tobytes(),
            "retry_base": self.retry_base,
            "ready_at": self.ready_at.tobytes(),
            "started": self.started.tobytes(),
            "ended": self.ended.tobytes(),
            "worker": self.worker,
            "outputs": self.outputs,
            "output_refs": {k: list(v) for k, v in self.output_refs.items()},
            "reason": self.reason,
            "exit_code": self.exit_code,
            "fail_kind": self.fail_kind,
            "requests": self.requests,
            "error": self.error,
        }

    @classmethod
    def from_wire(
        cls, definition: Definition, wire: dict[str, Any], *, load_ref: Callable[[str], Any] = _no_refs
    ) -> RunState:
        if wire.get("format") != RUN_FORMAT:
            raise ValueError(f"unknown run-state format {wire.get('format')!r}")
        run = cls(definition, wire["wf"], wire["created_at"], load_ref=load_ref)
        if len(wire["st"]) != len(definition):
            raise ValueError(f"state has {len(wire['st'])} tasks, the definition {len(definition)}")
        run.state = wire["state"]
        run.started_at, run.ended_at = wire["started_at"], wire["ended_at"]
        run.cancel_requested = wire["cancel"]
        run.stats = dict(wire["stats"])
        run.st = bytearray(wire["st"])
        run.attempt = array.array("I", wire["attempt"])
        run.retry_base = {int(k): v for k, v in wire["retry_base"].items()}
        run.ready_at = array.array("d", wire["ready_at"])
        run.started = array.array("d", wire["started"])
        run.ended = array.array("d", wire["ended"])
        run.worker = {int(k): v for k, v in wire["worker"].items()}
        run.outputs = {int(k): v for k, v in wire["outputs"].items()}
        run.output_refs = {int(k): (v[0], v[1]) for k, v in wire["output_refs"].items()}
        run.reason = {int(k): v for k, v in wire["reason"].items()}
        run.exit_code = {int(k): v for k, v in wire["exit_code"].items()}
        run.fail_kind = {int(k): v for k, v in wire.get("fail_kind", {}).items()}
        run.requests = list(wire.get("requests", []))
        run.error = wire.get("error")
        run._recount()
        run._finished_reported = run.state in WF_TERMINAL and sum(run.counts[c] for c in TERMINAL) == len(
            run.st
        )
        return run
