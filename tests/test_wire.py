"""The typed wire protocol (workers/wire.py): what goes out comes back equal, the wire form
is the one protocol 1 always had, and anything malformed is one error type."""

from __future__ import annotations

import msgpack
import pytest

from workers.errors import WireError
from workers.wire import (
    PROTOCOL,
    AttemptKey,
    Bundle,
    ControlOp,
    ControlRequest,
    Event,
    EventKind,
    EventMessage,
    FailKind,
    TaskMessage,
    decode_task_payload,
    is_bundle_id,
)

TASK = TaskMessage(
    wf="abcd1234",
    idx=3,
    task="train/rf",
    attempt=1,
    executor="python",
    spec={"call": "m:f", "kwargs": {"n": 1}},
    queue="gpu",
    wf_name="ml",
    base_dir="/work",
    timeout=60.0,
    gpus=2,
    deps=("prep",),
    inputs={"prep": {"$ref": "/h/workflows/abcd1234/tasks/prep/0/output.json"}},
    ready_at=1_700_000_000.5,
    owner="ada",
    traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
)


def _roundtrip(value):
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True))


def test_a_task_message_round_trips_through_msgpack_in_protocol_1s_form():
    wire = TASK.to_wire()
    assert set(wire) == {
        "v", "wf", "wf_name", "idx", "task", "attempt", "executor", "spec", "base_dir", "timeout",
        "gpus", "queue", "deps", "inputs", "ready_at", "owner", "trace",
    }  # fmt: skip
    assert wire["v"] == PROTOCOL and wire["trace"] == {"traceparent": TASK.traceparent}
    back = TaskMessage.from_wire(_roundtrip(wire))
    assert back == TASK
    assert back.key == AttemptKey("abcd1234", 3, 1) and back.message_id == "abcd1234~3~1"


def test_a_task_message_of_an_older_coordinator_still_decodes():
    old = {"v": 1, "wf": "w", "idx": 0, "task": "t", "attempt": 0, "executor": "shell", "spec": {"run": "x"}}
    m = TaskMessage.from_wire(old)
    assert (m.queue, m.gpus, m.deps, m.inputs, m.traceparent) == ("default", 0, (), None, None)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"v": 2}, "not a task message of protocol 1"),
        ({"idx": "3"}, "field 'idx' is str, not int"),
        ({"attempt": True}, "field 'attempt' is bool"),
        ({"spec": ["run"]}, "field 'spec' is list"),
        ({"deps": ["a", 1]}, "'deps' is not a list of names"),
        ({"timeout": "1h"}, "field 'timeout' is str"),
        ({"trace": "x"}, "field 'trace'"),
    ],
)
def test_a_malformed_task_message_is_one_error_naming_the_field(change, complaint):
    with pytest.raises(WireError, match=complaint):
        TaskMessage.from_wire({**TASK.to_wire(), **change})


def test_a_bundle_decodes_to_its_members_and_counts_as_n_items():
    other = TaskMessage("abcd1234", 4, "train/gnn", 0, "python", {"call": "m:g"})
    bundle = Bundle((TASK, other))
    assert bundle.message_id == "abcd1234~3~1+2" and is_bundle_id(bundle.message_id)
    decoded = decode_task_payload(_roundtrip(bundle.to_wire()))
    assert isinstance(decoded, Bundle) and decoded.members == (TASK, other)
    assert decode_task_payload(_roundtrip(TASK.to_wire())) == TASK
    with pytest.raises(WireError):
        decode_task_payload({"v": 1, "bundle": []})
    with pytest.raises(WireError):
        decode_task_payload([1, 2])


def test_events_round_trip_and_carry_only_what_their_kind_needs():
    key = AttemptKey("w", 1, 0)
    done = Event(EventKind.COMPLETED, key, at=10.0, started_at=9.0, output={"x": 1}, output_ref=("a/b", 5))
    failed = Event(EventKind.FAILED, key, at=10.0, error="boom", reason=FailKind.TIMEOUT, exit_code=-9)
    started = Event(EventKind.STARTED, key, at=9.0)
    assert "output" not in started.to_wire() and "error" not in done.to_wire()
    for ev in (done, failed, started):
        assert Event.from_wire(_roundtrip(ev.to_wire())) == ev
    assert failed.to_wire()["reason"] == "timeout"
    message = EventMessage("w-1", 12.0, tuple(e.to_wire() for e in (started, done)))
    back = EventMessage.from_wire(_roundtrip(message.to_wire()))
    assert (back.worker, back.sent_at, len(back.events)) == ("w-1", 12.0, 2)


def test_an_event_with_an_unknown_kind_or_reason_is_refused():
    base = Event(EventKind.FAILED, AttemptKey("w", 1, 0), at=1.0, error="e").to_wire()
    with pytest.raises(WireError, match="unknown kind"):
        Event.from_wire({**base, "kind": "exploded"})
    with pytest.raises(WireError, match="unknown failure kind"):
        Event.from_wire({**base, "reason": "gremlins"})
    with pytest.raises(WireError, match="output_ref"):
        Event.from_wire({**base, "output_ref": ["only-a-path"]})
    with pytest.raises(WireError, match="without a list of events"):
        EventMessage.from_wire({"v": 1, "worker": "w"})


def test_control_requests_round_trip_and_unknown_operations_are_refused():
    req = ControlRequest(ControlOp.RETRY, "w", by="ada", request="r1", tasks=("a", "b"))
    assert ControlRequest.from_wire(_roundtrip(req.to_wire())) == req
    assert ControlRequest.from_wire({"v": 1, "op": "cancel", "wf": "w"}).tasks is None
    with pytest.raises(WireError, match="unknown operation"):
        ControlRequest.from_wire({"v": 1, "op": "explode", "wf": "w"})
    with pytest.raises(WireError, match="not a list of task names"):
        ControlRequest.from_wire({"v": 1, "op": "retry", "wf": "w", "tasks": "a"})


def test_failure_kinds_are_the_strings_the_states_and_spans_have_always_used():
    assert {str(k) for k in FailKind} == {
        "error", "timeout", "cancelled", "lost", "setup", "worker stopped", "condition", "internal",
        "storage",
    }  # fmt: skip
    assert FailKind.WORKER_STOPPED == "worker stopped"  # a StrEnum compares equal to its string
