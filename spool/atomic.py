"""Atomic publication of files, and the durability setting.

Publishing a file = write it under a temporary name in the *same directory*, optionally
fsync it, `rename(2)` it over the final name, optionally fsync the directory. Readers see
the old file or the new one, never a torn one.

Temporary names start with ``.tmp.`` and carry host, pid, a per-process random token and
a counter, so no two writers anywhere share one (R3 in SHARED_FS.md). Every listing in
`spool` skips names starting with a dot, which also hides NFS's ``.nfsXXXX`` files.

Durability:
    ``process``: survives kill -9 of any process (no fsync; the page cache survives).
    ``machine``: fsync file and directory, so a published file survives power loss.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
import secrets
import socket
import time
from collections.abc import Callable

from . import perms
from .errors import CorruptRecordError, StorageError
from .fsops import link_new, listed, place, retry_stale

TEMP_PREFIX = ".tmp."
_SMALL = 16384


class Durability(enum.StrEnum):
    PROCESS = "process"
    MACHINE = "machine"

    @classmethod
    def parse(cls, value: str | Durability) -> Durability:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"durability must be 'process' or 'machine', not {value!r}") from None


def _safe_host() -> str:
    host = socket.gethostname() or "host"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in host)[:40]


HOST = _safe_host()


class _Identity:
    """Per-process unique token; renewed in a forked child so parent and child never collide."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pid = os.getpid()
        self.token = secrets.token_hex(4)
        self.counter = itertools.count()
        self.prefix = f"{TEMP_PREFIX}{HOST}.{self.pid}.{self.token}."
        self.short = f"{self.pid:x}{self.token}"


_ID = _Identity()
os.register_at_fork(after_in_child=_ID.reset)


def temp_path(directory: str) -> str:
    """A fresh temporary path in `directory`, unique across hosts, processes and calls."""
    return f"{directory}/{_ID.prefix}{next(_ID.counter)}"


def process_token() -> str:
    """A short token unique to this process (host, pid, random), for names this process mints."""
    return _ID.short


def fsync_dir(directory: str) -> None:
    """fsync a directory so that entries created or renamed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Buffers = bytes | memoryview | list[bytes]


def _write_all(fd: int, data: Buffers) -> None:
    if type(data) is bytes and os.write(fd, data) == len(data):
        return
    if isinstance(data, list):
        # writev: header and body go out in one syscall without concatenating (no copy of big bodies).
        total = sum(len(b) for b in data)
        written = os.writev(fd, data)
        if written == total:
            return
        data = b"".join(data)[written:]
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_temp(directory: str, data: Buffers, durability: Durability) -> str:
    """Write `data` (bytes, or a list of buffers written in order) to a new temporary file in
    `directory`; return its path.

    On failure the temporary file is removed and `StorageError` names the directory.
    """
    tmp = temp_path(directory)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, perms.FILE_MODE)
    except OSError as e:
        raise StorageError.from_os("create a file in", directory, e) from e
    try:
        try:
            perms.fix(fd)
            _write_all(fd, data)
            if durability is Durability.MACHINE:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        _unlink_quietly(tmp)
        raise StorageError.from_os("write", tmp, e) from e
    return tmp


Fence = Callable[[], None] | None


def publish(tmp: str, path: str, durability: Durability, fence: Fence = None) -> None:
    """Rename a temporary file over `path` (replacing it) and, for `machine`, fsync the directory.

    A reply lost on NFS (ENOENT although the rename happened) is recognised (`fsops.place`).

    Parameters:
        fence: called right before the rename; if it raises, nothing is published (the
            temporary file is removed) and its exception propagates. Writers that may be
            deposed check their right to write here, as late as it can be checked.
    """
    try:
        if fence is not None:
            fence()
        place(tmp, path)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise StorageError.from_os("publish", path, e) from e
        raise
    if durability is Durability.MACHINE:
        try:
            fsync_dir(os.path.dirname(path) or ".")
        except OSError as e:
            raise StorageError.from_os("fsync the directory of", path, e) from e


def publish_in(
    directory: str,
    name: str,
    data: bytes,
    durability: Durability,
    fence: Fence = None,
    dir_fd: int | None = None,
) -> None:
    """`atomic_write` of `directory`/`name`, in as few steps as possible (the spool's hot path).

    Parameters:
        dir_fd: a held descriptor of `directory` (`spool.dirfds`): the files are then
            created and renamed relative to it, so that only their names are looked up.
    """
    if durability is not Durability.PROCESS:
        publish(write_temp(directory, data, durability), f"{directory}/{name}", durability, fence)
        return
    temp_name = f"{_ID.prefix}{next(_ID.counter)}"
    tmp = f"{directory}/{temp_name}"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(tmp if dir_fd is None else temp_name, flags, perms.FILE_MODE, dir_fd=dir_fd)
    except OSError as e:
        raise StorageError.from_os("create a file in", directory, e) from e
    try:
        try:
            perms.fix(fd)
            if os.write(fd, data) != len(data):
                _write_all(fd, memoryview(data)[os.lseek(fd, 0, os.SEEK_CUR) :])
        finally:
            os.close(fd)
        if fence is not None:
            fence()
        place(tmp, f"{directory}/{name}", dir_fd)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise StorageError.from_os("write", f"{directory}/{name}", e) from e
        raise


def atomic_write(
    path: str, data: Buffers, durability: Durability = Durability.PROCESS, fence: Fence = None
) -> None:
    """Publish `data` at `path` atomically: readers see the old content or the new, never a mix.

    Raises:
        StorageError: naming `path`; no partial file is left visible and the previous
            content of `path` is untouched.
    """
    publish(write_temp(os.path.dirname(path) or ".", data, durability), path, durability, fence)


def create_exclusive(path: str, data: bytes, durability: Durability = Durability.PROCESS) -> bool:
    """Publish `data` at `path` only if nothing is there yet (put-if-absent, via link(2)).

    Returns True if this call created the file, False if `path` already existed. A link
    whose reply was lost on NFS (EEXIST although it happened) counts as created (`fsops.link_new`).
    """
    tmp = write_temp(os.path.dirname(path) or ".", data, durability)
    try:
        created = link_new(tmp, path)
    except OSError as e:
        raise StorageError.from_os("create", path, e) from e
    finally:
        _unlink_quietly(tmp)
    if created and durability is Durability.MACHINE:
        fsync_dir(os.path.dirname(path) or ".")
    return created


def read_bytes(
    path: str, max_bytes: int | None = None, *, wait_visible: float = 0.0, dir_fd: int | None = None
) -> bytes:
    """Read a whole file; refuse (CorruptRecordError) one larger than `max_bytes`.

    An ESTALE open or read is retried by path (`fsops.retry_stale`); one that keeps failing
    is a StorageError naming the path. FileNotFoundError is raised untouched (callers decide
    what absence means).

    Parameters:
        wait_visible: for files that should be there (an output a task wrote, a record
            just renamed into place). An NFS client may answer "no such file" from a
            negative lookup cache for a while after the file appeared; with this > 0, a
            FileNotFoundError is only raised once a listing of the directory (which asks
            the server) agrees, or after this many seconds of retrying.
        dir_fd: a held descriptor of the file's directory: the file is opened relative to it.
    """
    try:
        return retry_stale(lambda: _read_once(path, max_bytes, dir_fd), "read", path)
    except FileNotFoundError:
        if wait_visible <= 0:
            raise
    deadline = time.monotonic() + wait_visible
    delay = 0.01
    while listed(path):
        if time.monotonic() >= deadline:
            why = f"listed in its directory, but not readable for {wait_visible:g} s"
            raise FileNotFoundError(errno.ENOENT, why, path)
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
        try:
            return retry_stale(lambda: _read_once(path, max_bytes), "read", path)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _read_once(path: str, max_bytes: int | None, dir_fd: int | None = None) -> bytes:
    # O_NONBLOCK: a FIFO planted where a record should be must not block the reader (a
    # regular file ignores the flag)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags) if dir_fd is None else os.open(os.path.basename(path), flags, dir_fd=dir_fd)
    try:
        # Most records are small: one read of up to 16 KiB that comes back short proves EOF
        # without an fstat. Larger files are sized first so the limit is checked before reading.
        first = os.read(fd, _SMALL)
        if len(first) < _SMALL:
            if max_bytes is not None and len(first) > max_bytes:
                raise CorruptRecordError(
                    f"{path}: {len(first)} bytes exceeds the limit of {max_bytes}", path=path
                )
            return first
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise CorruptRecordError(f"{path}: {size} bytes exceeds the limit of {max_bytes}", path=path)
        rest = os.read(fd, size - len(first) + 1)
        chunks = [first, rest]
        if len(first) + len(rest) <= size:
            return b"".join(chunks)
        total = len(first) + len(rest)
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise CorruptRecordError(f"{path}: grew past the limit of {max_bytes} bytes", path=path)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_head(path: str, n: int) -> bytes:
    """The first `n` bytes of a file (ESTALE retried, as `read_bytes`)."""

    def once() -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
        try:
            return os.read(fd, n)
        finally:
            os.close(fd)

    return retry_stale(once, "read", path)


def append(path: str, data: bytes, *, make_dirs: bool = False) -> None:
    """Append `data` to `path` (created if missing) with one write(2) in O_APPEND mode, so
    the lines of several writers never mix. ESTALE is retried (`fsops.retry_stale`).

    Parameters:
        make_dirs: create the missing directories of `path` first.
    """

    def once() -> int:
        return _open_appending(path)

    try:
        fd = retry_stale(once, "open", path)
    except FileNotFoundError:
        if not make_dirs:
            raise
        perms.makedirs(os.path.dirname(path))
        fd = retry_stale(once, "open", path)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def open_for_append(path: str) -> int:
    """A descriptor of `path` opened for appending (created if missing; ESTALE retried)."""
    return retry_stale(lambda: _open_appending(path), "open", path)


def _open_appending(path: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, perms.FILE_MODE)
    try:
        perms.fix(fd)  # also on a file that existed: harmless, and the umask case is rare
    except OSError:
        pass  # another user's file in a group home: its mode is theirs to keep
    return fd


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
