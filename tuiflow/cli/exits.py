"""Exit codes of the command line, and the one place errors become them.

Every error a user can cause derives from `TuiflowError` (`tuiflow.errors`). Commands let
those errors rise; the command group catches them (`user_errors`) and turns each into a
one-line ``error: ...`` on stderr and the exit code of its kind, never a traceback:

    0  EXIT_OK         it worked (run-local, watch: the workflow completed; doctor: no problem)
    1  EXIT_FAILED     the workflow failed or was cancelled; doctor found problems; the file
                       system, a lock or the lease failed (any other TuiflowError)
    2  EXIT_INVALID    invalid input: a workflow file, a condition or template, a --set or
                       option value, a name; a retry of tasks that did not fail; a --home
                       that is not a tuiflow home of this version (none there, a newer or
                       an older layout: `LayoutError`)
    3  EXIT_NOT_FOUND  no such workflow, task, attempt or trace
  130  (Ctrl-C, from typer)

Exceptions that are not a `TuiflowError` are bugs: they keep their traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.text import Text

from tuiflow.cli.console import SafeConsole, user_text
from tuiflow.errors import NotFound, TuiflowError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3

_stderr = SafeConsole(stderr=True)


class BadOption(TuiflowError, ValueError):
    """A command-line option or argument with a value the command cannot use."""


def exit_code(error: BaseException) -> int:
    """The exit code of `error` (see the table above)."""
    # imported here: most of these modules cost startup time, and only an error needs them
    from analyzer.errors import MixedWorkflowsError, TraceNotFoundError, UnknownViewError
    from spool.errors import InvalidNameError, LayoutError
    from tuiflow.cli.slurm import SlurmProfileError
    from tuiflow.engine.expr import ExpressionError
    from tuiflow.engine.model import WorkflowValidationError
    from tuiflow.engine.runstate import NotRetryable
    from workers.errors import WorkerConfigError

    if isinstance(error, NotFound | TraceNotFoundError):
        return EXIT_NOT_FOUND
    invalid = (
        BadOption,
        WorkflowValidationError,
        ExpressionError,
        NotRetryable,
        InvalidNameError,
        LayoutError,
        WorkerConfigError,
        UnknownViewError,
        SlurmProfileError,
        MixedWorkflowsError,
    )
    return EXIT_INVALID if isinstance(error, invalid) else EXIT_FAILED


def say_error(message: str, console: Console | None = None) -> None:
    """Print the one-line ``error: ...`` (not markup, control characters made visible: the
    message quotes the user's text too)."""
    line = Text.assemble(("error:", "red"), " ", user_text(message, multiline=True))
    (console or _stderr).print(line, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Say `message` as an error; returns the `typer.Exit` to raise."""
    say_error(message)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(console: Console | None = None) -> Iterator[None]:
    """Turn a `TuiflowError` raised inside into its message and exit code."""
    try:
        yield
    except TuiflowError as e:
        notes = getattr(e, "__notes__", ())  # advice added where it was caught (`add_note`)
        say_error((str(e) or type(e).__name__) + "".join(f" ({note})" for note in notes), console)
        raise typer.Exit(exit_code(e)) from None


__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "BadOption",
    "exit_code",
    "fail",
    "say_error",
    "user_errors",
]
