"""A finished attempt's output: its output file read, and the asset and lineage rows that
record it.

A task writes its output (JSON) to ``$TUIFLOW_OUTPUT`` (`layout.OUTPUT_FILE` in its attempt
directory), or writes nothing. Up to `wire.INLINE_OUTPUT_MAX` bytes it travels inline in the
completion event; a larger one stays in the file and the event names it (`ref`: its
home-relative path and size). Every output also gets a row in the attempt's assets file
(path, bytes, sha256) and one in its lineage file (the data it was made from: the
dependencies that produced some), appended with ESTALE retried (`spool.atomic.append`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from spool import layout
from spool.atomic import append, read_bytes
from workers.wire import INLINE_OUTPUT_MAX, TaskMessage

#: seconds a task's output file may stay listed but unreadable (an NFS client's negative cache)
OUTPUT_VISIBLE_WAIT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    """What an attempt produced: `value` inline, or `ref` = (home-relative path, bytes) for a
    large one; `size` in bytes (0: it wrote nothing)."""

    value: Any = None
    ref: tuple[str, int] | None = None
    size: int = 0


#: what an attempt that wrote no output file produced
NO_OUTPUT = Output()


class BadOutput(ValueError):
    """The output file is not valid JSON (the attempt fails with this message)."""


def collect(task: TaskMessage, attempt_dir: str, home_root: str) -> Output:
    """Read the attempt's output file, if any, and record its asset and lineage rows.

    Raises:
        BadOutput: the file is not valid JSON.
    """
    path = layout.attempt_file(attempt_dir, layout.OUTPUT_FILE)
    try:
        # The task may have renamed it into place just now: on NFS this client may still
        # answer "no such file" from its cache; a listing settles it.
        raw = read_bytes(path, wait_visible=OUTPUT_VISIBLE_WAIT)
    except FileNotFoundError:
        return NO_OUTPUT
    try:
        value = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadOutput(f"{path} is not valid JSON: {e}") from None
    rel = os.path.relpath(path, home_root)
    ref = None
    if len(raw) > INLINE_OUTPUT_MAX:
        ref, value = (rel, len(raw)), None
    record(task, attempt_dir, rel, raw)
    return Output(value, ref, len(raw))


def record(task: TaskMessage, attempt_dir: str, rel: str, raw: bytes) -> None:
    """Append the asset row of output `raw` (at home-relative `rel`) and its lineage row."""
    data_id = f"{task.wf}/{task.task}"
    asset = {
        "path": rel,
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "owner": task.owner,
        "task": task.task,
        "attempt": task.attempt,
        "data_id": data_id,
    }
    lineage = {
        "data_id": data_id,
        # the data it was made from: the dependencies that produced some
        "sources": [f"{task.wf}/{d}" for d, v in (task.inputs or {}).items() if v is not None],
        "task": task.task,
        "attempt": task.attempt,
    }
    for name, row in ((layout.ASSETS_FILE, asset), (layout.LINEAGE_FILE, lineage)):
        append(layout.attempt_log(attempt_dir, name), (json.dumps(row) + "\n").encode())
