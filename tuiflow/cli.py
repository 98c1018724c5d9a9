"""The `tuiflow` command line."""

from __future__ import annotations

import typer

from . import __version__

app = typer.Typer(
    name="tuiflow",
    help="GPU workflow DAGs on a shared filesystem.",
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tuiflow {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """GPU workflow DAGs on a shared filesystem."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def main() -> None:
    app()
