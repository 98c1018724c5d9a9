"""What the coordinator, the workers and the clients say to each other: typed messages and
their wire form (msgpack maps, unchanged since protocol 1).

    AttemptKey(wf, idx, attempt)     one attempt of one task; message id <wf>~<idx>~<attempt>
    TaskMessage                      coordinator -> a task queue: run this attempt
    Bundle(members)                  several task messages in one spool message, id <first id>+<n>
    Event                            worker -> completions: an attempt started, completed or failed
    EventMessage(worker, sent_at, ...) the events a worker publishes at once
    ControlRequest                   client -> control: submit, cancel or retry a workflow
    FailKind                         why an attempt failed

Wire form of each (a map with ``"v": PROTOCOL`` where a message starts)::

    task:    {"v", "wf", "wf_name", "idx", "task", "attempt", "executor", "spec", "base_dir",
              "timeout", "gpus", "queue", "deps", "inputs", "ready_at", "owner",
              "trace": {"traceparent"}}
    bundle:  {"v", "bundle": [task, ...]}
    events:  {"v", "worker", "sent_at", "events": [event, ...]}
    event:   {"kind", "wf", "idx", "attempt", "at", "started_at"?, "output"?, "output_ref"?,
              "error"?, "reason"?, "exit_code"?}
    control: {"v", "op", "wf", "by", "request", "tasks"?}

Every `from_wire` checks the types of what it decodes and raises `WireError` for anything
else: a receiver quarantines a malformed message, or skips (and logs) a malformed event in
a message. Times are wall-clock epoch seconds of the host that wrote them: `ready_at` the
coordinator's; `at`, `started_at` and `sent_at` the worker's, of which the coordinator uses
only differences (docs/protocols.md, "Times on one clock").

Bundles: tasks that became ready together in one queue may travel as one message, so that
a fan-out of short tasks costs a few message files rather than one per task. A worker runs
the members as if each had been claimed alone; it acks the bundle once every member's final
event is published, and puts unstarted members back as messages of their own when it stops
or when a member runs long. A coordinator that finds a bundle held by a dead worker queues
each member still waiting for it alone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from .errors import WireError

PROTOCOL = 1
#: outputs up to this size travel inline (in events and in the state); larger stay in files
INLINE_OUTPUT_MAX = 64 * 1024
#: most task messages in one bundle
BUNDLE_MAX = 16
#: bundles are only made where they leave at least this many messages (so as many slots start at once)
BUNDLE_SPREAD = 64
#: a worker puts a bundle's unstarted tasks back once one of its tasks has run this long (s)
BUNDLE_HOLD = 0.5


class FailKind(enum.StrEnum):
    """Why an attempt failed (or, for `CONDITION`, why a task failed before any attempt)."""

    ERROR = "error"  # the task itself failed (exit code, exception)
    TIMEOUT = "timeout"  # past its `timeout`
    CANCELLED = "cancelled"  # its workflow was cancelled
    LOST = "lost"  # its worker died
    SETUP = "setup"  # it could not be queued or started (a bad template, a message too large)
    WORKER_STOPPED = "worker stopped"  # an operator stopped its worker: runs again, no retry spent
    STORAGE = "storage"  # the home took none of its files (full, read-only): runs again, no retry spent
    CONDITION = "condition"  # its condition could not be evaluated
    INTERNAL = "internal"  # the coordinator could not apply an event of its workflow

    @classmethod
    def parse(cls, value: Any) -> FailKind:
        try:
            return cls(value)
        except ValueError:
            raise WireError(f"unknown failure kind {value!r}") from None


class EventKind(enum.StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


def _need(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):  # no field of the protocol is a bool
        raise WireError(f"{what}: field {key!r} is {type(value).__name__}, not {_names(kind)}")
    return value


def _maybe(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    return None if d.get(key) is None else _need(d, key, kind, what)


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _map(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireError(f"{what} is {type(value).__name__}, not a map")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptKey:
    """One attempt of one task of one workflow (`idx`: the task's index in its definition)."""

    wf: str
    idx: int
    attempt: int

    @property
    def message_id(self) -> str:
        return f"{self.wf}~{self.idx}~{self.attempt}"


def message_id(wf_id: str, idx: int, attempt: int) -> str:
    """The spool message id of an attempt's task message: ``<wf>~<idx>~<attempt>``."""
    return f"{wf_id}~{idx}~{attempt}"


@dataclasses.dataclass(frozen=True, slots=True)
class TaskMessage:
    """Run attempt `attempt` of task `task` (index `idx`) of workflow `wf`.

    `spec` is the task's executor spec with its templates rendered; `inputs` the outputs
    of its direct dependencies by name (large ones as ``{"$ref": path}``), or None when it
    has none; `timeout` in seconds; `ready_at` when the coordinator queued it (its wall clock).
    """

    wf: str
    idx: int
    task: str
    attempt: int
    executor: str
    spec: dict[str, Any]
    queue: str = "default"
    wf_name: str = ""
    base_dir: str | None = None
    timeout: float | None = None
    gpus: int = 0
    deps: tuple[str, ...] = ()
    inputs: dict[str, Any] | None = None
    ready_at: float = 0.0
    owner: str | None = None
    traceparent: str | None = None

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.wf, self.idx, self.attempt)

    @property
    def message_id(self) -> str:
        return message_id(self.wf, self.idx, self.attempt)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL,
            "wf": self.wf,
            "wf_name": self.wf_name,
            "idx": self.idx,
            "task": self.task,
            "attempt": self.attempt,
            "executor": self.executor,
            "spec": self.spec,
            "base_dir": self.base_dir,
            "timeout": self.timeout,
            "gpus": self.gpus,
            "queue": self.queue,
            "deps": list(self.deps),
            "inputs": self.inputs,
            "ready_at": self.ready_at,
            "owner": self.owner,
            "trace": {"traceparent": self.traceparent},
        }

    @classmethod
    def from_wire(cls, value: Any) -> TaskMessage:
        """The message `value` holds (WireError naming the field if it is malformed)."""
        # The common case, checked in one expression (a worker decodes one per task); any
        # doubt goes to the field-by-field check, which names what is wrong.
        try:
            d = value
            trace = d.get("trace")
            m = cls(
                d["wf"],
                d["idx"],
                d["task"],
                d["attempt"],
                d.get("executor") or "shell",
                d["spec"],
                d.get("queue") or "default",
                d.get("wf_name") or "",
                d.get("base_dir"),
                d.get("timeout"),
                d.get("gpus") or 0,
                tuple(d.get("deps") or ()),
                d.get("inputs"),
                d.get("ready_at") or 0.0,
                d.get("owner"),
                trace.get("traceparent") if trace else None,
            )
        except Exception:
            return cls._checked(value)
        if (
            d.get("v") == PROTOCOL
            and type(m.wf) is str
            and type(m.idx) is int
            and type(m.task) is str
            and type(m.attempt) is int
            and type(m.executor) is str
            and type(m.spec) is dict
            and type(m.queue) is str
            and type(m.wf_name) is str
            and type(m.gpus) is int
            and (m.base_dir is None or type(m.base_dir) is str)
            and (m.timeout is None or type(m.timeout) in (int, float))
            and (m.inputs is None or type(m.inputs) is dict)
            and type(m.ready_at) in (int, float)
            and (m.owner is None or type(m.owner) is str)
            and (m.traceparent is None or type(m.traceparent) is str)
            and all(type(x) is str for x in m.deps)
        ):
            return m
        return cls._checked(value)

    @classmethod
    def _checked(cls, value: Any) -> TaskMessage:
        d = _map(value, "a task message")
        if d.get("v") != PROTOCOL:
            raise WireError(f"not a task message of protocol {PROTOCOL} (v={d.get('v')!r})")
        what = f"task message {d.get('wf')}/{d.get('task')}"
        deps = d.get("deps") or ()
        if not isinstance(deps, list | tuple) or not all(isinstance(x, str) for x in deps):
            raise WireError(f"{what}: field 'deps' is not a list of names")
        trace = d.get("trace") or {}
        return cls(
            wf=_need(d, "wf", str, what),
            idx=_need(d, "idx", int, what),
            task=_need(d, "task", str, what),
            attempt=_need(d, "attempt", int, what),
            executor=_maybe(d, "executor", str, what) or "shell",
            spec=_need(d, "spec", dict, what),
            queue=_maybe(d, "queue", str, what) or "default",
            wf_name=_maybe(d, "wf_name", str, what) or "",
            base_dir=_maybe(d, "base_dir", str, what),
            timeout=_maybe(d, "timeout", (int, float), what),
            gpus=_maybe(d, "gpus", int, what) or 0,
            deps=tuple(deps),
            inputs=_maybe(d, "inputs", dict, what),
            ready_at=float(_maybe(d, "ready_at", (int, float), what) or 0.0),
            owner=_maybe(d, "owner", str, what),
            traceparent=_maybe(_map(trace, f"{what}: field 'trace'"), "traceparent", str, what),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Bundle:
    """Task messages that travel as one spool message (see the module docstring)."""

    members: tuple[TaskMessage, ...]

    @property
    def message_id(self) -> str:
        return bundle_id(self.members[0].message_id, len(self.members))

    def to_wire(self) -> dict[str, Any]:
        return {"v": PROTOCOL, "bundle": [m.to_wire() for m in self.members]}


def bundle_size(n: int, most: int = BUNDLE_MAX) -> int:
    """How many of `n` tasks that became ready together travel in one message."""
    return max(1, min(most, n // BUNDLE_SPREAD))


def bundle_id(first_id: str, n: int) -> str:
    """A bundle's message id: the spool counts a message whose id ends in "+<n>" as n items."""
    return f"{first_id}+{n}"


def is_bundle_id(msg_id: str) -> bool:
    return "+" in msg_id  # task message ids are <wf>~<idx>~<attempt>: never a "+"


def decode_task_payload(value: Any) -> TaskMessage | Bundle:
    """A claimed task queue message: one task, or a bundle of them (WireError otherwise)."""
    d = _map(value, "a task queue message")
    members = d.get("bundle")
    if members is None:
        return TaskMessage.from_wire(d)
    if d.get("v") != PROTOCOL or not isinstance(members, list) or not members:
        raise WireError(f"not a bundle of task messages of protocol {PROTOCOL}")
    return Bundle(tuple(TaskMessage.from_wire(m) for m in members))


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """What happened to an attempt, on its worker: it started, completed (with its output
    inline or as `output_ref` = [home-relative path, bytes]) or failed (`error`, `reason`)."""

    kind: EventKind
    key: AttemptKey
    at: float
    started_at: float | None = None
    output: Any = None
    output_ref: tuple[str, int] | None = None
    error: str | None = None
    reason: FailKind | None = None
    exit_code: int | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": str(self.kind),
            "wf": self.key.wf,
            "idx": self.key.idx,
            "attempt": self.key.attempt,
            "at": self.at,
        }
        if self.started_at is not None:
            d["started_at"] = self.started_at
        if self.kind is EventKind.COMPLETED:
            d["output"] = self.output
            d["output_ref"] = list(self.output_ref) if self.output_ref else None
        elif self.kind is EventKind.FAILED:
            d["error"] = self.error
            d["reason"] = str(self.reason or FailKind.ERROR)
            d["exit_code"] = self.exit_code
        return d

    @classmethod
    def from_wire(cls, value: Any) -> Event:
        d = _map(value, "an event")
        what = f"event {d.get('kind')!r} of {d.get('wf')}/{d.get('idx')}"
        try:
            kind = EventKind(d.get("kind"))
        except ValueError:
            raise WireError(f"{what}: unknown kind") from None
        ref = d.get("output_ref")
        if ref is not None and not (
            isinstance(ref, list | tuple)
            and len(ref) == 2
            and isinstance(ref[0], str)
            and isinstance(ref[1], int)
        ):
            raise WireError(f"{what}: field 'output_ref' is not [path, bytes]")
        reason = d.get("reason")
        return cls(
            kind=kind,
            key=AttemptKey(
                _need(d, "wf", str, what), _need(d, "idx", int, what), _need(d, "attempt", int, what)
            ),
            at=float(_need(d, "at", (int, float), what)),
            started_at=_maybe(d, "started_at", (int, float), what),
            output=d.get("output"),
            output_ref=(ref[0], ref[1]) if ref is not None else None,
            error=None if d.get("error") is None else str(d.get("error")),
            reason=FailKind.parse(reason) if reason is not None else None,
            exit_code=_maybe(d, "exit_code", int, what),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class EventMessage:
    """The events one worker publishes in one message; `sent_at` is its clock at sending."""

    worker: str
    sent_at: float | None
    events: tuple[dict[str, Any], ...]

    def to_wire(self) -> dict[str, Any]:
        return {"v": PROTOCOL, "worker": self.worker, "sent_at": self.sent_at, "events": list(self.events)}

    @classmethod
    def from_wire(cls, value: Any) -> EventMessage:
        """The message; its events stay in wire form (decode each with `Event.from_wire`, so
        one malformed event does not cost the others)."""
        d = _map(value, "a completion message")
        events = d.get("events")
        if not isinstance(events, list):
            raise WireError("a completion message without a list of events")
        sent = d.get("sent_at")
        return cls(
            worker=str(d.get("worker") or "?"),
            sent_at=float(sent) if isinstance(sent, int | float) and not isinstance(sent, bool) else None,
            events=tuple(events),
        )


class ControlOp(enum.StrEnum):
    SUBMIT = "submit"
    CANCEL = "cancel"
    RETRY = "retry"


@dataclasses.dataclass(frozen=True, slots=True)
class ControlRequest:
    """A request to the coordinator about workflow `wf`, made by `by`. `request` is a unique
    id, so that one redelivered changes nothing; `tasks`, for a retry, limits it to these."""

    op: ControlOp
    wf: str
    by: str = "?"
    request: str | None = None
    tasks: tuple[str, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": PROTOCOL, "op": str(self.op), "wf": self.wf, "by": self.by}
        if self.request is not None:
            d["request"] = self.request
        if self.tasks is not None:
            d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_wire(cls, value: Any) -> ControlRequest:
        d = _map(value, "a control request")
        what = f"control request {d.get('op')!r}"
        try:
            op = ControlOp(d.get("op"))
        except ValueError:
            raise WireError(f"{what}: unknown operation") from None
        tasks = d.get("tasks")
        if tasks is not None and not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
            raise WireError(f"{what}: field 'tasks' is not a list of task names")
        return cls(
            op=op,
            wf=_need(d, "wf", str, what),
            by=str(d.get("by") or "?"),
            request=_maybe(d, "request", str, what),
            tasks=tuple(tasks) if tasks else None,
        )
