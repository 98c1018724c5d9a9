"""What the coordinator and the workers say to each other, and where attempts keep files.

Task messages (coordinator -> task queue ``<home>/queues/<queue>``), one per attempt,
message id ``<wf_id>~<task index>~<attempt>``::

    {"v": 1, "wf": id, "wf_name": name, "idx": i, "task": name, "attempt": a,
     "executor": "shell" | "python", "spec": {rendered run/argv/call/kwargs/with/env/cwd},
     "base_dir": dir of the workflow file, "timeout": s | None, "gpus": n, "queue": q,
     "deps": [dependency names], "inputs": {name: value | {"$ref": path}} | None,
     "ready_at": coordinator time it was queued, "trace": {"traceparent": ...}}

Bundles: tasks that became ready together in one queue may travel as one message, id
``<first member's id>+<n>``, so that a fan-out of short tasks costs a few message files
rather than one per task::

    {"v": 1, "bundle": [task message, ...]}

A worker runs the members as if each had been claimed alone; it acks the bundle once every
member's final event is published, and puts unstarted members back as messages of their
own when it stops or when a member runs long. A coordinator that finds a bundle held by a
dead worker queues each member still waiting for it alone.

Events (worker -> ``<home>/completions``), batched: one message carries a list::

    {"v": 1, "worker": id, "events": [
        {"kind": "started", "wf", "idx", "attempt", "at"},
        {"kind": "completed", "wf", "idx", "attempt", "at", "started_at",
         "output": value | None, "output_ref": [path, bytes] | None},
        {"kind": "failed", "wf", "idx", "attempt", "at", "started_at",
         "error": text, "reason": error | timeout | cancelled | worker stopped, "exit_code": n | None}]}

Control requests (client -> ``<home>/control``)::

    {"v": 1, "op": "submit" | "cancel" | "retry", "wf": id, "tasks": [names] | None, "by": who}

Attempt directories: ``<home>/workflows/<wf>/tasks/<encoded task>/<attempt>/`` hold
``stdout.log``, ``stderr.log``, ``output.json``, ``inputs.json`` and ``logs/`` (spans,
assets, lineage). Paths inside messages and states are relative to the home, so a home
mounted at different paths on different hosts still works.
"""

from __future__ import annotations

import os
from typing import Any

from spool.names import encode_component

PROTOCOL = 1
#: outputs up to this size travel inline (in events and in the state); larger stay in files
INLINE_OUTPUT_MAX = 64 * 1024

CANCEL_MARKER = "cancelled"
KILL_DIR = "kill"


#: most task messages in one bundle
BUNDLE_MAX = 16
#: bundles are only made where they leave at least this many messages (so as many slots start at once)
BUNDLE_SPREAD = 64
#: a worker puts a bundle's unstarted tasks back once one of its tasks has run this long (s)
BUNDLE_HOLD = 0.5


def message_id(wf_id: str, idx: int, attempt: int) -> str:
    return f"{wf_id}~{idx}~{attempt}"


def bundle_size(n: int, most: int = BUNDLE_MAX) -> int:
    """How many of `n` tasks that became ready together travel in one message."""
    return max(1, min(most, n // BUNDLE_SPREAD))


def bundle(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"v": PROTOCOL, "bundle": messages}


def bundle_id(first_id: str, n: int) -> str:
    """A bundle's message id: the spool counts a message whose id ends in "+<n>" as n items."""
    return f"{first_id}+{n}"


def is_bundle_id(msg_id: str) -> bool:
    return "+" in msg_id  # task message ids are <wf>~<idx>~<attempt>: never a "+"


def members(payload: Any) -> list[Any] | None:
    """The task messages of a bundle payload; None if it is not one."""
    if isinstance(payload, dict) and isinstance(payload.get("bundle"), list):
        return payload["bundle"]
    return None


def workflow_dir(home_root: str, wf_id: str) -> str:
    return f"{home_root}/workflows/{wf_id}"


def task_dir_rel(wf_id: str, task: str) -> str:
    return f"workflows/{wf_id}/tasks/{encode_component(task)}"


def attempt_dir_rel(wf_id: str, task: str, attempt: int) -> str:
    return f"{task_dir_rel(wf_id, task)}/{attempt}"


def cancel_marker(home_root: str, wf_id: str) -> str:
    """Exists once the workflow is cancelled: workers stop its tasks."""
    return f"{home_root}/workflows/{wf_id}/{CANCEL_MARKER}"


def kill_marker(home_root: str, wf_id: str, idx: int, attempt: int) -> str:
    """Exists once this attempt must stop (coordinator timeout sweep)."""
    return f"{home_root}/workflows/{wf_id}/{KILL_DIR}/{idx}.{attempt}"


def resolve(home_root: str, rel: str) -> str:
    """A home-relative path from a message, refusing anything that would leave the home."""
    if os.path.isabs(rel) or ".." in rel.split("/"):
        raise ValueError(f"path {rel!r} in a message escapes the home")
    return f"{home_root}/{rel}"


def event(kind: str, msg: dict[str, Any], at: float, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "wf": msg["wf"], "idx": msg["idx"], "attempt": msg["attempt"], "at": at, **fields}
