"""A finished attempt's output: its output file read, and the asset and lineage rows that
record it.

A task writes its output (JSON) to ``$TUIFLOW_OUTPUT`` (`layout.OUTPUT_FILE` in its attempt
directory), or writes nothing. Up to `wire.INLINE_OUTPUT_MAX` bytes it travels inline in the
completion event; a larger one stays in the file and the event names it (`ref`: its
home-relative path and size). Every output also gets a row in the attempt's assets file
(path, bytes, sha256) and one in its lineage file (the data it was made from: the
dependencies that produced some). Every file is reached through the attempt's open
directory (`workers.attemptdir.AttemptDir`): an output file that is a link, a FIFO or a
hard link is refused (`UnsafePathError`), never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import msgpack

from spool import layout
from workers.attemptdir import AttemptDir
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
    """The output file is not valid JSON, or holds a value tuiflow cannot pass on (the
    attempt fails with this message)."""


def collect(task: TaskMessage, files: AttemptDir, home_root: str, raw: bytes | None = None) -> Output:
    """Read the attempt's output file, if any, and record its asset and lineage rows.

    Parameters:
        raw: the output file's content, where the executor wrote it and holds it (it is
            not read back).

    Raises:
        BadOutput: the file is not valid JSON.
        UnsafePathError: the output file (or a logs file) is a link, or not a plain file.
    """
    path = files.file_path(layout.OUTPUT_FILE)
    if raw is None:
        # The task may have renamed it into place just now: on NFS this client may still
        # answer "no such file" from its cache; a listing settles it.
        raw = files.read(layout.OUTPUT_FILE, wait_visible=OUTPUT_VISIBLE_WAIT)
        if raw is None:
            return NO_OUTPUT
    try:
        value = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadOutput(f"{path} is not valid JSON: {e}") from None
    check_encodable(value, path)
    rel = os.path.relpath(path, home_root)
    ref = None
    if len(raw) > INLINE_OUTPUT_MAX:
        ref, value = (rel, len(raw)), None
    record(task, files, rel, raw)
    return Output(value, ref, len(raw))


def check_encodable(value: Any, path: str) -> None:
    """Refuse a value that JSON holds but the home's messages (msgpack) cannot carry: an
    integer beyond 64 bits, a string with a lone surrogate (``"\\ud800"``). Checked here, on the
    worker, so that the attempt fails with a reason, rather than the event that reports it
    failing to publish (and every event of the worker behind it), or a downstream task's
    message failing on the coordinator. A large output, sent by reference, is checked too:
    its value becomes its dependents' inputs."""
    if value is None or isinstance(value, bool | float):
        return  # always encodable (a string may hold a lone surrogate, which UTF-8 cannot)
    try:
        msgpack.packb(value)
    except OverflowError:
        raise BadOutput(
            f"{path} holds an integer beyond 64 bits, which tuiflow cannot pass on (write it as a string)"
        ) from None
    except (TypeError, ValueError) as e:
        raise BadOutput(f"{path} holds a value tuiflow cannot pass on: {e}") from None


def record_asset(task: TaskMessage, files: AttemptDir, rel: str, raw: bytes) -> None:
    """Append the asset row of file `raw` (at home-relative `rel`), made by the attempt."""
    files.append(layout.ASSETS_FILE, (json.dumps(_asset(task, rel, raw)) + "\n").encode())


def _asset(task: TaskMessage, rel: str, raw: bytes) -> dict[str, Any]:
    return {
        "path": rel,
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "owner": task.owner,
        "task": task.task,
        "attempt": task.attempt,
        "data_id": f"{task.wf}/{task.task}",
    }


def record(task: TaskMessage, files: AttemptDir, rel: str, raw: bytes) -> None:
    """Append the asset row of output `raw` (at home-relative `rel`) and its lineage row."""
    data_id = f"{task.wf}/{task.task}"
    asset = _asset(task, rel, raw)
    lineage = {
        "data_id": data_id,
        # the data it was made from: the dependencies that produced some
        "sources": [f"{task.wf}/{d}" for d, v in (task.inputs or {}).items() if v is not None],
        "task": task.task,
        "attempt": task.attempt,
    }
    for name, row in ((layout.ASSETS_FILE, asset), (layout.LINEAGE_FILE, lineage)):
        files.append(name, (json.dumps(row) + "\n").encode())
