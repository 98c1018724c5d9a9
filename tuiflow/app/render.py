"""Small Rich renderables the dashboard draws with (bars, durations, sparklines)."""

from __future__ import annotations

from rich.text import Text

from tuiflow.app.data import SEGMENTS, STATE_STYLE

_SPARK = "▁▂▃▄▅▆▇█"


def segment_bar(counts: dict[str, int], total: int, width: int = 24) -> Text:
    """A bar split into coloured segments, one per task state (completed first)."""
    text = Text()
    if total <= 0:
        return Text("─" * width, style="grey30")
    remaining = width
    cells = []
    for state, _style in SEGMENTS:
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
        text.append("░" * remaining, style="grey30")
    return text


def fmt_secs(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 100:
        return f"{value:.1f}s"
    if value < 6000:
        return f"{value / 60:.1f}m"
    if value < 172800:
        return f"{value / 3600:.1f}h"
    return f"{value / 86400:.1f}d"


def fmt_age(value: float | None) -> str:
    """An age at the precision people read ages (`42s`, `5m12s`, `45m`, `3h12m`, `30h`,
    `5d`): it changes at most once a second, so lists of ages are not repainted at every
    refresh."""
    if value is None:
        return "–"
    s = max(0, int(value))
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 8 * 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "–"
    return f"{rate:.1f}/s" if rate < 100 else f"{rate:.0f}/s"


def sparkline(values: tuple[int, ...] | list[int], width: int = 12) -> Text:
    values = list(values)[-width:]
    if not values:
        return Text("")
    top = max(values) or 1
    return Text(
        "".join(_SPARK[min(len(_SPARK) - 1, v * (len(_SPARK) - 1) // top)] for v in values), style="cyan"
    )


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def bar(fraction: float, width: int, style: str, empty: str = " ") -> Text:
    fraction = max(0.0, min(1.0, fraction))
    full = round(fraction * width)
    return Text("█" * full + empty * (width - full), style=style)
