"""The consoles the command line prints with, and how user text gets onto them.

Whatever a workflow, a task, a worker or a file says (names, errors, outputs, log tails,
worker ids and hosts, queue names) may hold control characters: in a home shared by a
cluster, anybody's escape sequence would otherwise reach your terminal. Such text is
printed as `user_text(...)`: a `rich.text.Text` (never markup, so ``[red]`` in a name is
just text) run through `analyzer.fmt.safe_text` (so ``\\x1b`` shows as ``␛``).

`SafeConsole` is the net under that rule: it runs every piece of text it writes through
`safe_text` as well (its own styles and cursor moves are not text, and are kept), so a
string that reached it some other way still cannot act on the terminal. ``--json`` output
does not go through it: JSON escapes control characters itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from analyzer.fmt import safe_text


class SafeConsole(Console):
    """A Rich console that never writes a control character it was given as text."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # Rich's own output (styles, Live's cursor moves) is made here from styles and
        # control segments; only the text of plain segments is the user's.
        return super()._render_buffer(
            segment if segment.control else Segment(safe_text(segment.text, multiline=True), segment.style)
            for segment in buffer
        )


def user_text(value: Any, style: str = "", *, multiline: bool = False) -> Text:
    """`value` (user-supplied: a name, an error, a host...) as a `Text` that is safe to
    print: control characters made visible (`safe_text`), markup left as it is."""
    return Text(safe_text(value, multiline=multiline), style=style)


def columns(headers: list[str], rows: list[list[Text]]) -> Text:
    """`rows` under `headers`, left-aligned in columns two spaces apart, as one `Text`.

    What `ls` prints for a home of a thousand workflows: a Rich `Table` measures and lays
    out every cell (1.8 s for 1,000 rows here), this pads each cell once (ms). Nothing is
    cut: a line wider than the terminal runs on, as `ls -l` and `squeue` do."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, cell.cell_len) for w, cell in zip(widths, row, strict=True)]
    out = Text()
    out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), style="bold")
    for row in rows:
        out.append("\n")
        for k, (cell, width) in enumerate(zip(row, widths, strict=True)):
            if k:
                out.append("  ")
            out.append_text(cell)
            if k < len(row) - 1:
                out.append(" " * (width - cell.cell_len))
    return out


__all__ = ["SafeConsole", "columns", "user_text"]
