"""Reading a file that grows, by byte offset: the one tail of `tuiflow logs` (and its
`--follow`) and of the dashboard's log view.

Logs are appended by another process, possibly on another host (NFS), so they are read by
offset and polled: inotify events do not cross machines. A missing file is not an error
(an attempt that has not written it yet).
"""

from __future__ import annotations

import dataclasses
import os

from spool.errors import StorageError


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes
    #: where the next read starts (the file's size when this one was made)
    offset: int
    exists: bool

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def read_from(path: str, offset: int = 0, *, max_bytes: int | None = None) -> Chunk:
    """The bytes of `path` from byte `offset` to its end; with `max_bytes`, at most the last
    `max_bytes` of them (a tail). A file that shrank (rewritten) is read from its start.
    A file that does not exist gives an empty chunk; one that cannot be read, StorageError."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = offset if offset <= size else 0
            if max_bytes is not None:
                start = max(start, size - max_bytes)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return Chunk(b"", offset, False)
    except OSError as e:
        raise StorageError.from_os("read", path, e) from e
    return Chunk(data, start + len(data), True)


__all__ = ["Chunk", "read_from"]
