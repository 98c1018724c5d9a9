"""Liveness: heartbeat records, and deciding from the outside that a holder is dead.

A heartbeat record (``<dir>/<holder>.hb``) is one file rewritten *in place* by its single
writer (``pwrite`` at offset 0, never truncated)::

    magic b"TFHB" | format u16 | reserved u16 | body length u32 | crc32(body) u32 | body
    body = msgpack {"holder", "host", "pid", "beat", "nonce", "written_at", "info": {...}}

In place rather than temp + rename because NFS clients revalidate an open() of the same
inode promptly, while a rename-over can leave them on a cached old inode for up to
``acdirmax`` (SHARED_FS.md, 6.3). A reader may catch a half-written record: the checksum
tells it so, and for liveness any change of the bytes counts as a sign of life anyway.

Deciding death (R4): an observer compares the record's *bytes* with what it saw before and
times how long they stayed the same on its *own monotonic clock*. Nobody compares
timestamps written by another host. The consequence: an observer that just started must
watch for `dead_after` seconds before it may call anyone dead.

For one-shot displays (``tuiflow doctor``) `fs_age` gives the age of a record by the file
server's clock: the mtime of a probe file just written next to it, minus the record's
mtime. It is shown to people, never used to decide.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgpack

from . import perms
from .atomic import HOST, fsync_dir, read_bytes
from .errors import CorruptRecordError, SpoolError, StorageError
from .fsops import listdir
from .layout import HEARTBEAT_SUFFIX
from .names import check_component

log = logging.getLogger("spool.liveness")

HEARTBEAT_FORMAT = 1
_MAGIC = b"TFHB"
_HEADER = struct.Struct("<4sHHII")
SUFFIX = HEARTBEAT_SUFFIX


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    holder: str
    host: str
    pid: int
    beat: int
    nonce: str
    written_at: float  # the writer's wall clock: for display only
    info: dict[str, Any]


class HeartbeatWriter:
    """The single writer of one heartbeat record."""

    def __init__(self, directory: str, holder: str, *, fsync: bool = False):
        self.holder = check_component(holder, "holder id")
        self.path = f"{directory}/{holder}{SUFFIX}"
        self.nonce = secrets.token_hex(8)
        self.beats = 0
        self._fsync = fsync
        self._fd: int | None = None
        self._ino = 0
        perms.makedirs(directory)

    def beat(self, info: dict[str, Any] | None = None, *, written_at: float | None = None) -> None:
        """Rewrite the record with the beat counter incremented.

        Parameters:
            written_at: the writer's wall clock to record (display only; default now).
        """
        self.beats += 1
        body = msgpack.packb(
            {
                "holder": self.holder,
                "host": HOST,
                "pid": os.getpid(),
                "beat": self.beats,
                "nonce": self.nonce,
                "written_at": time.time() if written_at is None else written_at,
                "info": info or {},
            },
            use_bin_type=True,
        )
        record = _HEADER.pack(_MAGIC, HEARTBEAT_FORMAT, 0, len(body), zlib.crc32(body)) + body
        try:
            if self._fd is not None and not self._still_at_path():
                # A coordinator judged us dead and moved the record aside (.dead): what we
                # ran was retried elsewhere. Beat on in a new record, so we are seen again.
                log.warning("heartbeat %s was moved away (judged dead); writing a new one", self.path)
                self.close()
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, perms.FILE_MODE)
                perms.fix(self._fd)
                self._ino = os.fstat(self._fd).st_ino
                if self._fsync:
                    fsync_dir(os.path.dirname(self.path))
            os.pwrite(self._fd, record, 0)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as e:
            self.close()
            raise StorageError.from_os("write heartbeat", self.path, e) from e

    def _still_at_path(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self._ino
        except FileNotFoundError:
            return False

    def remove(self) -> None:
        """Delete the record (clean shutdown: the holder is gone, not dead)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None


def read_raw(path: str) -> bytes:
    """The record's bytes (open + read: close-to-open revalidates on NFS, stat() would not;
    ESTALE is retried). Raises FileNotFoundError if there is none."""
    return read_bytes(path, max_bytes=1 << 20)


def decode(raw: bytes, path: str = "<heartbeat>") -> Heartbeat:
    """Decode a record; CorruptRecordError if torn, truncated or of an unknown format."""
    if len(raw) < _HEADER.size:
        raise CorruptRecordError(f"{path}: heartbeat record truncated ({len(raw)} bytes)", path=path)
    magic, fmt, _, length, crc = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        raise CorruptRecordError(f"{path}: not a heartbeat record", path=path)
    if fmt != HEARTBEAT_FORMAT:
        raise CorruptRecordError(f"{path}: unknown heartbeat format {fmt}", path=path)
    body = raw[_HEADER.size : _HEADER.size + length]
    if len(body) != length or zlib.crc32(body) != crc:
        raise CorruptRecordError(f"{path}: heartbeat record torn or corrupt (checksum mismatch)", path=path)
    try:
        d = msgpack.unpackb(body)
        return Heartbeat(d["holder"], d["host"], d["pid"], d["beat"], d["nonce"], d["written_at"], d["info"])
    except Exception as e:
        raise CorruptRecordError(f"{path}: undecodable heartbeat body: {e}", path=path) from None


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    holder: str
    path: str
    alive: bool
    #: seconds the record has been unchanged, on the observer's monotonic clock
    silent_for: float
    #: the decoded record, or None while it is torn/unreadable
    heartbeat: Heartbeat | None


class LivenessTracker:
    """Judges holders alive or dead by watching their records change.

    Parameters:
        dead_after: seconds a record may stay unchanged before its holder is dead.
        clock: the observer's monotonic clock (injectable for tests).
    """

    def __init__(self, dead_after: float, clock: Callable[[], float] = time.monotonic):
        self.dead_after = dead_after
        self.clock = clock
        self._seen: dict[str, tuple[bytes, float]] = {}

    def observe(self, holder: str, content: bytes, now: float | None = None) -> float:
        """Record the current `content` of `holder`'s record; returns seconds it has been unchanged."""
        now = self.clock() if now is None else now
        seen = self._seen.get(holder)
        if seen is None or seen[0] != content:
            self._seen[holder] = (content, now)
            return 0.0
        return now - seen[1]

    def forget(self, holder: str) -> None:
        self._seen.pop(holder, None)

    def scan(self, directory: str, now: float | None = None) -> list[Observation]:
        """Observe every heartbeat record in `directory`."""
        now = self.clock() if now is None else now
        out = []
        try:
            names = listdir(directory)
        except FileNotFoundError:
            names = []
        present = set()
        for name in sorted(names):
            if name[0] == "." or not name.endswith(SUFFIX):
                continue
            holder = name[: -len(SUFFIX)]
            path = f"{directory}/{name}"
            try:
                raw = read_raw(path)
            except FileNotFoundError:
                continue  # RACE: removed by a clean shutdown while we listed
            except SpoolError as e:
                # Unreadable for now (ESTALE that persists, a record over the size limit): no
                # evidence either way, so its holder is judged on what we saw before.
                log.warning("cannot read heartbeat %s: %s", path, e)
                if holder in self._seen:
                    present.add(holder)
                continue
            present.add(holder)
            silent = self.observe(holder, raw, now)
            try:
                hb: Heartbeat | None = decode(raw, path)
            except CorruptRecordError:
                hb = None
            out.append(Observation(holder, path, silent < self.dead_after, silent, hb))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return out


def fs_now(directory: str) -> float:
    """The file server's idea of "now": the mtime of a probe file this call writes in `directory`."""
    probe = f"{directory}/.clock-probe.{HOST}.{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, b"x")
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass


def fs_age(path: str, now: float | None = None) -> float | None:
    """Seconds since `path` was last written, by the file server's clock (display only)."""
    try:
        mtime = os.stat(path).st_mtime
        if now is None:
            now = fs_now(os.path.dirname(path))
    except OSError:
        return None
    return max(0.0, now - mtime)


def process_start_token(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_state(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :][:1]


def local_process_gone(pid: int, start_token: int | None) -> bool:
    """True only with proof that the process (pid, start_token) on *this* host has exited."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else
    if _process_state(pid) in (b"Z", b"X"):
        return True  # exited, waiting to be reaped by its parent
    if start_token is None:
        return False
    current = process_start_token(pid)
    return current is not None and current != start_token
