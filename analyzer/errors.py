"""Errors raised by the analyzer.

One root (`AnalyzerError`), a few families under it. The analyzer is tolerant of bad
*data* (garbage lines, truncated files, missing parents are counted and reported, never
raised); errors are for bad *requests*: a workflow directory that does not exist, runs of
different workflows handed to `history`, a view name nobody knows.
"""

from __future__ import annotations

import os

from spool.errors import TuiflowError


class AnalyzerError(TuiflowError):
    """Root of every error raised by `analyzer`."""


class TraceNotFoundError(AnalyzerError, FileNotFoundError):
    """The workflow directory (or a span file named explicitly) does not exist."""

    def __init__(self, path: str | os.PathLike[str], what: str = "workflow directory"):
        super().__init__(f"{what} not found: {os.fspath(path)}")
        self.path = os.fspath(path)


class MixedWorkflowsError(AnalyzerError, ValueError):
    """`history` was given runs of more than one workflow name."""

    def __init__(self, names: list[str]):
        super().__init__(
            f"history needs runs of one workflow, got {len(names)} names: {', '.join(sorted(names))}; "
            "pass workflow_name= to pick one"
        )
        self.names = sorted(names)


class UnknownViewError(AnalyzerError, ValueError):
    """A renderer was asked for a view that does not exist."""

    def __init__(self, view: str, known: tuple[str, ...]):
        super().__init__(f"unknown view {view!r}; choose one of: {', '.join(known)}")
        self.view = view
