"""Length-prefixed msgpack frames over pipes (worker <-> python executor process)."""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

_LEN = struct.Struct("<I")
MAX_FRAME = 256 << 20


def write_frame(fd: int, obj: Any) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any:
    """The next frame, or None at end of file."""
    head = _read_exactly(fd, _LEN.size)
    if head is None:
        return None
    (length,) = _LEN.unpack(head)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    body = _read_exactly(fd, length)
    if body is None:
        return None
    return msgpack.unpackb(body)
