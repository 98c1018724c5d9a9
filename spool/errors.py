"""Errors raised by the spool substrate, and the root of every tuiflow error.

`TuiflowError` is the one root of the errors tuiflow raises on purpose (a user's mistake, a
file system that fails): `spool`, `workers`, `analyzer` and the engine each have a family
under it, so the command line maps the whole family to exit codes in one place. It lives
here, in the lowest package, so that every package can derive from it.

In `spool`: one root (`SpoolError`), families under it. Every error that concerns a file names it
(`.path`) and, when it wraps an `OSError`, keeps its errno (`.errno`) and chains it as the
cause, so callers can tell ENOSPC from EACCES without parsing messages.
"""

from __future__ import annotations

import errno as _errno
import os
import shlex


class TuiflowError(Exception):
    """Root of every error tuiflow raises on purpose."""


class SpoolError(TuiflowError):
    """Root of every error raised by `spool`."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, errno: int | None = None):
        super().__init__(message)
        self.path = os.fspath(path) if path is not None else None
        self.errno = errno


class StorageError(SpoolError):
    """A filesystem operation failed (disk full, permission denied, I/O error...)."""

    @classmethod
    def from_os(cls, action: str, path: str | os.PathLike[str], exc: OSError) -> StorageError:
        """Wrap `exc`, naming the action and the path; keeps errno."""
        reason = exc.strerror or str(exc)
        if exc.errno == _errno.ENOSPC:
            reason = "no space left on device"
        elif exc.errno == _errno.EDQUOT:
            reason = "disk quota exceeded"
        message = f"cannot {action} {os.fspath(path)}: {reason}"
        if advice := what_to_do(exc.errno, path):
            message += f" ({advice})"
        return cls(message, path=path, errno=exc.errno)


def what_to_do(errno: int | None, path: str | os.PathLike[str]) -> str:
    """What a person can do about a failed filesystem operation on `path`, by its errno."""
    where = shlex.quote(os.path.dirname(os.fspath(path)) or ".")
    if errno in (_errno.ENOSPC, _errno.EDQUOT):
        return f"free space there (df -h {where}); nothing is lost, tuiflow resumes when there is room"
    if errno == _errno.EROFS:
        return "the filesystem is mounted read-only: remount it read-write or use another --home"
    if errno in (_errno.EACCES, _errno.EPERM):
        return (
            f"check who may write there (ls -ld {where}); a home shared by a group needs "
            "sharing=group and the group's write bit (docs/deployment.md)"
        )
    return ""


class LayoutError(SpoolError):
    """The home directory is missing, unwritable, corrupt, or of an unknown layout version."""


class InvalidNameError(SpoolError, ValueError):
    """A queue name, worker id or other path component is unsafe or malformed."""


class MessageTooLargeError(SpoolError, ValueError):
    """A message is larger than the queue's size limit; nothing was written."""


class CorruptRecordError(SpoolError):
    """A record on disk cannot be decoded (truncated, bad checksum, unknown format)."""


class ConflictError(SpoolError):
    """A compare-and-swap write lost: the record's version moved since it was read."""

    def __init__(self, path: str | os.PathLike[str], expected: int, found: int):
        super().__init__(
            f"{os.fspath(path)}: version conflict (expected {expected}, found {found})",
            path=path,
        )
        self.expected = expected
        self.found = found


class LockTimeout(SpoolError):
    """A lock could not be taken within the timeout (its holder is alive, or cannot be proven dead yet)."""


class LockLostError(SpoolError):
    """The lock was taken away (held past its safe bound, or broken as stale): the write was not made."""


class LeaseError(SpoolError):
    """Base of coordinator-lease errors."""


class LeaseHeldError(LeaseError):
    """Another holder owns a live lease."""


class DeposedError(LeaseError):
    """This holder's lease was taken over (a newer generation exists): it must stop writing."""
