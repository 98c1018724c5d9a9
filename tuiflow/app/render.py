"""Small Rich renderables the dashboard draws with (bars, sparklines, states, user text).
Figures are written by `analyzer.fmt`, the same as on the command line.

User text (workflow and task names, errors, worker ids and hosts, queue names, log tails)
is drawn as `user_text`: a `Text` (never markup) of `analyzer.fmt.safe_text` (no control
character reaches the terminal, or the browser's terminal under `tuiflow serve`)."""

from __future__ import annotations

from rich.text import Text

from analyzer.fmt import STATE_STYLE, safe_text, state_style

_SPARK = "▁▂▃▄▅▆▇█"
#: the order of a progress bar's segments, ended states first
SEGMENT_ORDER = (
    "completed",
    "failed",
    "upstream_failed",
    "cancelled",
    "running",
    "ready",
    "skipped",
    "pending",
)
#: what is left of a bar nobody's state fills
EMPTY_STYLE = "grey30"


def segment_bar(counts: dict[str, int], total: int, width: int = 24) -> Text:
    """A bar split into coloured segments, one per task state (completed first)."""
    text = Text()
    if total <= 0:
        return Text("─" * width, style=EMPTY_STYLE)
    remaining = width
    cells = []
    for state in SEGMENT_ORDER:
        n = counts.get(state, 0)
        if n:
            cells.append([state, n * width / total])
    # largest-remainder rounding, but every non-empty state keeps at least one cell
    alloc = {s: max(1, int(w)) for s, w in cells}
    over = sum(alloc.values()) - width
    for s, _w in sorted(cells, key=lambda c: c[1] - int(c[1])):
        if over <= 0:
            break
        if alloc[s] > 1:
            alloc[s] -= 1
            over -= 1
    short = width - sum(alloc.values())
    for s, _w in sorted(cells, key=lambda c: int(c[1]) - c[1]):
        if short <= 0:
            break
        alloc[s] += 1
        short -= 1
    for state, _ in cells:
        k = min(alloc[state], remaining)
        text.append("█" * k if state != "pending" else "░" * k, style=STATE_STYLE[state])
        remaining -= k
    if remaining > 0:
        text.append("░" * remaining, style=EMPTY_STYLE)
    return text


def sparkline(values: tuple[int, ...] | list[int], width: int = 12) -> Text:
    values = list(values)[-width:]
    if not values:
        return Text("")
    top = max(values) or 1
    return Text(
        "".join(_SPARK[min(len(_SPARK) - 1, v * (len(_SPARK) - 1) // top)] for v in values), style="cyan"
    )


def state_text(state: str) -> Text:
    return Text(safe_text(state), style=state_style(state))


def user_text(value: object, style: str = "", *, multiline: bool = False) -> Text:
    """User-supplied `value` as a `Text` that is safe to draw (see the module)."""
    return Text(safe_text(value, multiline=multiline), style=style)


def bar(fraction: float, width: int, style: str, empty: str = " ") -> Text:
    fraction = max(0.0, min(1.0, fraction))
    full = round(fraction * width)
    return Text("█" * full + empty * (width - full), style=style)
