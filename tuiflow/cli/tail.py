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


def read_from(path: str, offset: int = 0, *, max_bytes: int | None = None, home: str | None = None) -> Chunk:
    """The bytes of `path` from byte `offset` to its end; with `max_bytes`, at most the last
    `max_bytes` of them (a tail). A file that shrank (rewritten) is read from its start.
    A file that does not exist gives an empty chunk; one that cannot be read, StorageError.

    Nothing is read through a link, nor from a FIFO (which would block), a device or a
    file with a second hard link: a colleague may plant one in a shared home (issue 12).
    With `home`, every directory from the home down is opened without following a link
    (`workers.attemptdir.open_under`); without, the file itself (O_NOFOLLOW)."""
    from workers.attemptdir import open_file, open_under
    from workers.errors import UnsafePathError

    try:
        if home is not None:
            fd = open_under(home, path, os.O_RDONLY)
        else:
            parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = open_file(parent, os.path.basename(path), path, os.O_RDONLY)
            finally:
                os.close(parent)
    except FileNotFoundError:
        return Chunk(b"", offset, False)
    except UnsafePathError as e:
        raise StorageError(str(e), path=e.path) from None
    except OSError as e:
        raise StorageError.from_os("read", path, e) from e
    try:
        with open(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = offset if offset <= size else 0
            if max_bytes is not None:
                start = max(start, size - max_bytes)
            f.seek(start)
            data = f.read()
    except OSError as e:
        raise StorageError.from_os("read", path, e) from e
    return Chunk(data, start + len(data), True)


__all__ = ["Chunk", "read_from"]
