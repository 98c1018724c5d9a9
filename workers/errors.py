"""Errors raised by `workers`: one family under `TuiflowError`."""

from __future__ import annotations

from spool.errors import TuiflowError


class WorkerError(TuiflowError):
    """Root of every error raised by `workers`."""


class WireError(WorkerError, ValueError):
    """A message that is not what the protocol says (a wrong type, a missing field): the
    receiver quarantines it, or skips it with a warning."""


class WorkerConfigError(WorkerError, ValueError):
    """A worker was given settings it cannot work with (no slots, an unknown executor, more
    GPUs than it has)."""


class UnsafePathError(WorkerError):
    """A path of the home that a worker was about to use is not what the worker made: a
    symbolic link, something else than a directory or a regular file, a file with a second
    (hard) link, or a file planted where the worker creates a fresh one. The worker refuses
    it (the attempt fails with reason ``setup``) rather than follow it out of the home.

    Attributes:
        path: the refused path.
    """

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path
