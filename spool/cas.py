"""Versioned records updated by compare-and-swap under a lock file.

File format (one file per record, replaced atomically on every write)::

    magic b"TFCR" | format u16 | flags u16 | version u64 | crc32(body) u32 | body length u32 | body
    body = msgpack(value)

`read()` takes no lock: the file is only ever replaced by rename(2), so a reader sees one
complete version. `write(value, expected_version)` takes the record's `SpoolLock`
(``<path>.lock``), reads just the 24-byte header, compares versions, writes a temp file and
renames it into place. A reader never blocks a writer, and a writer never rewrites the
whole record to learn its version.

A record that does not exist reads as ``(None, 0)``; the first write expects version 0.
A record that exists but cannot be decoded raises `CorruptRecordError` naming the file:
it is never silently reset.
"""

from __future__ import annotations

import os
import random
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from .atomic import Durability, publish, read_bytes, read_head, write_temp
from .errors import ConflictError, CorruptRecordError, StorageError
from .lock import SpoolLock

RECORD_FORMAT = 1
_MAGIC = b"TFCR"
_HEADER = struct.Struct("<4sHHQII")
HEADER_SIZE = _HEADER.size

T = TypeVar("T")


def _check_header(raw: bytes | memoryview, path: str) -> tuple[int, int, int]:
    if len(raw) < HEADER_SIZE:
        raise CorruptRecordError(f"{path}: record truncated ({len(raw)} bytes)", path=path)
    magic, fmt, _, version, crc, length = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        raise CorruptRecordError(f"{path}: not a tuiflow record (bad magic)", path=path)
    if fmt != RECORD_FORMAT:
        raise CorruptRecordError(
            f"{path}: record format {fmt} is newer than this tuiflow understands ({RECORD_FORMAT})", path=path
        )
    return version, crc, length


def decode_record(raw: bytes, path: str) -> tuple[Any, int]:
    version, crc, length = _check_header(raw, path)
    body = memoryview(raw)[HEADER_SIZE:]
    if len(body) != length:
        raise CorruptRecordError(f"{path}: record truncated ({len(body)} of {length} body bytes)", path=path)
    if zlib.crc32(body) != crc:
        raise CorruptRecordError(f"{path}: record checksum mismatch (corrupt)", path=path)
    try:
        return msgpack.unpackb(body, use_list=True, strict_map_key=False), version
    except Exception as e:
        raise CorruptRecordError(f"{path}: record body undecodable: {e}", path=path) from None


class CasRecord:
    """One versioned record at `path`.

    Parameters:
        durability: `process` or `machine` (fsync before and after the rename).
        lock_stale_after: see `spool.lock` (rule 2).
        lock_timeout: seconds a writer waits for the lock before LockTimeout.
    """

    def __init__(
        self,
        path: str,
        *,
        durability: Durability = Durability.PROCESS,
        lock_stale_after: float = 30.0,
        lock_timeout: float | None = 120.0,
        max_bytes: int = 1 << 31,
    ):
        self.path = path
        self.durability = durability
        self.max_bytes = max_bytes
        self._dir = os.path.dirname(path) or "."
        self.lock = SpoolLock(f"{path}.lock", stale_after=lock_stale_after, timeout=lock_timeout)

    def read(self, *, wait_visible: float = 0.0) -> tuple[Any, int]:
        """(value, version) without locking; (None, 0) if the record does not exist yet.

        `wait_visible`: see `atomic.read_bytes` (for records known to exist)."""
        try:
            raw = read_bytes(self.path, self.max_bytes, wait_visible=wait_visible)
        except FileNotFoundError:
            return None, 0
        except OSError as e:
            raise StorageError.from_os("read", self.path, e) from e
        return decode_record(raw, self.path)

    def read_version(self) -> int:
        """The current version, reading only the header."""
        try:
            head = read_head(self.path, HEADER_SIZE)
        except FileNotFoundError:
            return 0
        except OSError as e:
            raise StorageError.from_os("read", self.path, e) from e
        return _check_header(head, self.path)[0]

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def write(self, value: Any, expected_version: int, *, fence: Callable[[], None] | None = None) -> int:
        """Replace the record with `value` if its version is still `expected_version`.

        Parameters:
            fence: called inside the lock, right before the rename that publishes the new
                version; raising stops the write (e.g. `Lease.assert_held`, so a deposed
                coordinator cannot write).

        Returns:
            The new version (`expected_version` + 1).

        Raises:
            ConflictError: the version moved; reload, reapply, retry.
            LockTimeout / LockLostError: see `spool.lock`.
            StorageError: the write failed (e.g. ENOSPC); the previous version is intact.
        """
        body = msgpack.packb(value, use_bin_type=True)  # encode before locking: keep the hold short
        crc = zlib.crc32(body)
        with self.lock:
            current = self.read_version()
            if current != expected_version:
                raise ConflictError(self.path, expected_version, current)
            header = _HEADER.pack(_MAGIC, RECORD_FORMAT, 0, current + 1, crc, len(body))
            tmp = write_temp(self._dir, [header, body], self.durability)

            def checks() -> None:
                # As late as they can be made: a writer stopped before this point (SIGSTOP)
                # is judged on the state of the world after it resumes, not before it stopped.
                self.lock.assert_held()
                if fence is not None:
                    fence()

            publish(tmp, self.path, self.durability, checks)
            return current + 1

    def update(self, fn: Callable[[Any], T], *, retries: int = 1000) -> tuple[T, int]:
        """Read-modify-write with retry on conflict: `fn(value)` returns the new value."""
        for attempt in range(retries):
            value, version = self.read()
            new = fn(value)
            try:
                return new, self.write(new, version)
            except ConflictError:
                # Jittered backoff so a crowd of writers does not retry in lockstep.
                time.sleep(random.uniform(0, min(0.05, 0.0005 * (attempt + 1))))
        raise ConflictError(self.path, -1, self.read_version())
