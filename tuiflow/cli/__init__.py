"""The command line: `tuiflow ...` (typer), run-local's progress display, and following a
workflow or a log live from the terminal."""
