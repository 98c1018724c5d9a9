"""Errors of the tuiflow package: one root, each with a message a user can act on.

Workflow-file problems are `tuiflow.engine.model.WorkflowValidationError` (raised by `tuiflow.engine.compiler`); filesystem and lock
problems come from `spool` (`spool.SpoolError`).
"""

from __future__ import annotations


class TuiflowError(Exception):
    """Root of tuiflow's own errors."""


class NotFound(TuiflowError):
    """No such workflow, task or attempt."""


class CoordinatorUnavailable(TuiflowError):
    """No coordinator holds the lease (requests wait in the control spool until one starts)."""
