"""Directories held open, so that a file in one costs a lookup of its name alone.

A call by path walks every component of it. On NFS each component whose attributes the
client does not hold (``noac``, ``lookupcache=none``, or a cache that expired) is a LOOKUP
round trip to the server: ``<home>/queues/<q>/ready/<shard>/<message>`` is five of them
before the operation itself. Through the descriptor of the directory (``openat``,
``renameat``, ``unlinkat``, ``fstatat``) only the last name is looked up.

A held descriptor keeps naming the directory it opened, even after that directory is
removed (a sweeper removes a claim directory of a claimant it judged dead) or, on NFS,
after its handle went stale. `DirFds.gone` tells that case from a plain missing file
(only on the path where an operation failed), and `forget` drops the descriptor so that
the next use opens the directory again by path.

A `DirFds` belongs to one object used by one thread (a `SpoolQueue`): it is not locked.
"""

from __future__ import annotations

import contextlib
import errno
import os

from .fsops import listdir

_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class DirFds:
    """Descriptors of directories, opened on first use and kept until `close`."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._inos: dict[str, int] = {}

    def fd(self, directory: str) -> int | None:
        """The descriptor of `directory` (opened now if it is not held); None if it cannot
        be opened (the caller then goes by path, and meets the error there)."""
        fd = self._fds.get(directory)
        if fd is None:
            try:
                fd = os.open(directory, _FLAGS)
            except OSError:
                return None
            self._fds[directory] = fd
            self._inos[directory] = os.fstat(fd).st_ino
        return fd

    def holds(self, directory: str, st: os.stat_result) -> bool:
        """Whether the descriptor held for `directory` (if any) is of the directory `st`
        describes (a stat of the path made by the caller); else it is dropped."""
        ino = self._inos.get(directory)
        if ino is None or ino == st.st_ino:
            return True
        self.forget(directory)
        return False

    def gone(self, directory: str) -> bool:
        """Whether the directory at `directory` is missing, or is no longer the one whose
        descriptor is held (removed, replaced, or its handle went stale)."""
        fd = self._fds.get(directory)
        if fd is None:
            return not os.path.isdir(directory)
        try:
            held = os.fstat(fd)
        except OSError as e:
            if e.errno == errno.ESTALE:
                return True
            raise
        if held.st_nlink == 0:
            return True
        try:
            st = os.stat(directory)
        except (FileNotFoundError, NotADirectoryError):
            return True
        return (st.st_ino, st.st_dev) != (held.st_ino, held.st_dev)

    def forget(self, directory: str) -> None:
        self._inos.pop(directory, None)
        fd = self._fds.pop(directory, None)
        if fd is not None:
            os.close(fd)

    def forget_all(self) -> None:
        for directory in list(self._fds):
            self.forget(directory)

    close = forget_all

    def __del__(self) -> None:
        # also at interpreter exit, when `os` itself may be gone: never a complaint then
        for fd in getattr(self, "_fds", {}).values():
            with contextlib.suppress(Exception):
                os.close(fd)


def stat_and_list(dirs: DirFds, directory: str) -> tuple[os.stat_result, list[str]]:
    """The attributes, then the names (but dot files), of `directory`: through its held
    descriptor (no walk of its path) while that is still the directory there, else by path.
    Stat first: a change racing the listing then shows as a change next time.

    Raises FileNotFoundError if there is no such directory."""
    fd = dirs.fd(directory)
    if fd is not None:
        try:
            st = os.fstat(fd)
            if st.st_nlink:
                return st, [n for n in os.listdir(fd) if n[0] != "."]
        except OSError as e:
            if e.errno != errno.ESTALE:
                raise
        dirs.forget(directory)  # removed since it was opened, or its handle is stale
    st = os.stat(directory)
    return st, [n for n in listdir(directory) if n[0] != "."]


__all__ = ["DirFds", "stat_and_list"]
