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
import itertools
import os
import secrets
import socket

from .errors import CorruptRecordError, StorageError

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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StorageError.from_os("create a file in", directory, e) from e
    try:
        try:
            _write_all(fd, data)
            if durability is Durability.MACHINE:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        _unlink_quietly(tmp)
        raise StorageError.from_os("write", tmp, e) from e
    return tmp


def publish(tmp: str, path: str, durability: Durability) -> None:
    """Rename a temporary file over `path` (replacing it) and, for `machine`, fsync the directory."""
    try:
        os.rename(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise StorageError.from_os("publish", path, e) from e
    if durability is Durability.MACHINE:
        try:
            fsync_dir(os.path.dirname(path) or ".")
        except OSError as e:
            raise StorageError.from_os("fsync the directory of", path, e) from e


def publish_in(directory: str, name: str, data: bytes, durability: Durability) -> None:
    """`atomic_write` of `directory`/`name`, in as few steps as possible (the spool's hot path)."""
    if durability is not Durability.PROCESS:
        publish(write_temp(directory, data, durability), f"{directory}/{name}", durability)
        return
    tmp = f"{directory}/{_ID.prefix}{next(_ID.counter)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StorageError.from_os("create a file in", directory, e) from e
    try:
        try:
            if os.write(fd, data) != len(data):
                _write_all(fd, memoryview(data)[os.lseek(fd, 0, os.SEEK_CUR) :])
        finally:
            os.close(fd)
        os.rename(tmp, f"{directory}/{name}")
    except OSError as e:
        _unlink_quietly(tmp)
        raise StorageError.from_os("write", f"{directory}/{name}", e) from e


def atomic_write(path: str, data: Buffers, durability: Durability = Durability.PROCESS) -> None:
    """Publish `data` at `path` atomically: readers see the old content or the new, never a mix.

    Raises:
        StorageError: naming `path`; no partial file is left visible and the previous
            content of `path` is untouched.
    """
    publish(write_temp(os.path.dirname(path) or ".", data, durability), path, durability)


def create_exclusive(path: str, data: bytes, durability: Durability = Durability.PROCESS) -> bool:
    """Publish `data` at `path` only if nothing is there yet (put-if-absent, via link(2)).

    Returns True if this call created the file, False if `path` already existed.
    """
    tmp = write_temp(os.path.dirname(path) or ".", data, durability)
    try:
        os.link(tmp, path)
    except FileExistsError:
        # NFS: a retransmitted LINK whose first try succeeded answers EEXIST; the link count
        # of our temporary file tells (the classic NFS lock-file test).
        try:
            return os.stat(tmp).st_nlink > 1
        except OSError:
            return False
    except OSError as e:
        raise StorageError.from_os("create", path, e) from e
    finally:
        _unlink_quietly(tmp)
    if durability is Durability.MACHINE:
        fsync_dir(os.path.dirname(path) or ".")
    return True


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """Read a whole file; refuse (CorruptRecordError) one larger than `max_bytes`.

    Raises FileNotFoundError untouched (callers decide what absence means).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
