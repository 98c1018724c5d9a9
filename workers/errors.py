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
