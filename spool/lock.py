"""The lock that guards CAS writes, safe on NFS.

An existence lock: the marker ``<record>.lock`` is created with O_CREAT|O_EXCL by
`filelock.SoftFileLock` and holds the owner's pid, host and process start token. No
fcntl/flock anywhere (they do not exclude across many NFS/Lustre/BeeGFS clients).

The rule for locks left behind (documented in docs/protocols.md, tested in tests/test_cas.py):

1. **Holder provably dead on this host** (its pid is gone, or the pid now belongs to a
   process with another start time): a waiter takes the lock over at its next poll
   (filelock swaps the marker atomically, so the lock path is never empty). Where that
   swap is refused (renameat2 on NFS and FUSE), the waiter breaks the marker as in rule 2,
   without waiting, once its pid is gone.
2. **Otherwise** (holder on another host, or a live holder that does not let go): a waiter
   breaks the marker only after seeing it *unchanged* for `stale_after` seconds on its own
   monotonic clock (no cross-host timestamps). A marker with no identity in it (its
   creator died in the microseconds between creating and writing it; every tuiflow holder
   writes its identity at once) is broken after `EMPTY_MARKER_AFTER` (2 s) instead. The
   break renames the judged marker aside and checks it took exactly the file it judged; if
   a fresh marker slipped in, it is put back with link(2), which never replaces anything.
   Every break is logged.
3. **The holder side fences itself**: `assert_held()` refuses (LockLostError) once the lock
   has been held for `stale_after / 2` or the marker at the path is no longer its own.
   CAS writes call it right before their rename, so a holder that stalled long enough to
   be broken does not write. The residual window is one rename(2) syscall, reached only by
   a holder paused for more than `stale_after / 2` exactly between its check and its
   rename; writers that must be immune to even that (the coordinator) also fence on the
   lease generation inside the lock.

A CAS hold lasts milliseconds, so `stale_after` (default 30 s) is far beyond any live hold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

import filelock

from . import perms
from .atomic import read_head
from .errors import LockLostError, LockTimeout, SpoolError
from .fsops import link_new, take
from .liveness import local_process_gone

log = logging.getLogger("spool.lock")

_SLICE = 0.2  # how long filelock polls on its own before we look for a stale foreign marker
EMPTY_MARKER_AFTER = 2.0


def _read_marker(path: str) -> list[str] | None:
    try:
        lines = read_head(path, 1024).decode("utf-8", "replace").split("\n")
    except (OSError, SpoolError):
        return None
    return lines if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1] else []


def _holder_gone_here(lines: list[str]) -> bool:
    """Whether the marker names a process of this host that has provably exited."""
    return lines[1].split("?")[0] == socket.gethostname() and local_process_gone(int(lines[0]), None)


def describe_marker(path: str) -> str:
    """'pid N on host H', for error messages."""
    lines = _read_marker(path)
    if lines is None:
        return "a holder that just released it"
    if not lines:
        return (
            "an unidentified holder (empty marker: its creator died or stalled before writing its identity)"
        )
    return f"pid {lines[0]} on host {lines[1].split('?')[0]}"


class SpoolLock:
    """Cross-host exclusive lock on `path` (see module docstring for the stale-lock rule).

    Parameters:
        path: the marker's path.
        stale_after: seconds a marker must stay unchanged before a waiter may break it.
        timeout: seconds `acquire` waits before raising LockTimeout; None waits forever.
        poll: seconds between attempts.
        clock: monotonic clock (injectable for tests).
    """

    _identity: tuple[int, int, int] | None

    def __init__(
        self,
        path: str,
        *,
        stale_after: float = 30.0,
        timeout: float | None = 120.0,
        poll: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self.stale_after = stale_after
        self.timeout = timeout
        self.poll = poll
        self.clock = clock
        self._lock = filelock.SoftFileLock(path, thread_local=False, mode=perms.FILE_MODE)
        self._acquired_at: float | None = None
        self._identity = None
        self._seen: tuple[tuple[int, int, int], float] | None = None

    def acquire(self) -> None:
        deadline = None if self.timeout is None else self.clock() + self.timeout
        while True:
            remaining = _SLICE if deadline is None else min(_SLICE, deadline - self.clock())
            try:
                self._lock.acquire(timeout=max(0.0, remaining), poll_interval=self.poll)
            except filelock.Timeout:
                if self._break_if_stale():
                    continue
                if deadline is not None and self.clock() >= deadline:
                    raise LockTimeout(
                        f"{self.path}: still held by {describe_marker(self.path)} after {self.timeout:g} s",
                        path=self.path,
                    ) from None
                continue
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                st = None
            if st is None or not self._lock.is_lock_held_by_us:
                # RACE: we were paused after filelock created our marker, and meanwhile it was
                # judged stale, broken, and maybe another holder came and went. Start over.
                self._lock.release()
                continue
            self._identity = (st.st_dev, st.st_ino, st.st_ctime_ns)
            break
        self._acquired_at = self.clock()
        self._seen = None

    def release(self) -> None:
        self._acquired_at = None
        self._identity = None
        # filelock unlinks only the marker it created (checked by inode), never a successor's.
        self._lock.release()

    @property
    def held(self) -> bool:
        return self._acquired_at is not None

    def assert_held(self) -> None:
        """Raise LockLostError unless the lock is still safely ours (see rule 3)."""
        if self._acquired_at is None:
            raise LockLostError(f"{self.path}: lock not held", path=self.path)
        held_for = self.clock() - self._acquired_at
        if held_for > self.stale_after / 2:
            raise LockLostError(
                f"{self.path}: held for {held_for:.1f} s, past the safe bound of {self.stale_after / 2:g} s; "
                "it may have been broken as stale, so this write was not made",
                path=self.path,
            )
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        # The marker we made is known by its inode and change time (taken once we held it):
        # a broken and re-made marker differs in both. Reading its content would add a file
        # open, which NFS may answer with ESTALE.
        if st is None or (st.st_dev, st.st_ino, st.st_ctime_ns) != self._identity:
            raise LockLostError(f"{self.path}: lock marker was broken by another process", path=self.path)

    def _break_if_stale(self) -> bool:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return True  # released meanwhile: try again at once
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        now = self.clock()
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, now)
            return False
        lines = _read_marker(self.path)
        if lines and _holder_gone_here(lines):
            threshold = 0.0  # rule 1, where filelock's own takeover (renameat2) is refused (NFS, FUSE)
        elif lines == []:
            threshold = min(self.stale_after, EMPTY_MARKER_AFTER)
        else:
            threshold = self.stale_after
        if now - self._seen[1] < threshold:
            return False
        holder = describe_marker(self.path)
        aside = f"{self.path}.broken.{secrets.token_hex(8)}"
        try:
            if not take(self.path, aside):
                return True  # RACE: another waiter broke it, or its holder released it
        except OSError:
            return False  # could not move it (ESTALE that persists, ...): look again next poll
        try:
            taken = os.lstat(aside)
            # rename(2) moves ctime, so the file we took is recognised by inode and mtime: a new
            # marker that reused the inode number would carry a newer mtime.
            if (taken.st_ino, taken.st_mtime_ns) != key[:2]:
                # RACE: the judged marker went away and a fresh one took its place before our
                # rename. Put it back; link(2) never replaces a marker created meanwhile.
                with contextlib.suppress(OSError):
                    link_new(aside, self.path)
                return False
            log.warning(
                "broke stale lock %s held by %s: unchanged for %.1f s (threshold %g s)",
                self.path,
                holder,
                now - self._seen[1],
                threshold,
            )
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(aside)
            self._seen = None

    def __enter__(self) -> SpoolLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
