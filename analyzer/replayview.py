"""The replay view (``tuiflow trace at WF TIME``): counts, then what ran, waited and was
blocked at that instant. Pure: a `Snapshot` in, a rich renderable out."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .fmt import STATE_STYLE, fmt_instant, fmt_seconds, safe_text
from .replay import PENDING, QUEUED, RETRYING, RUNNING, Snapshot


def _what(row, at: float) -> str:
    if row.state == RUNNING:
        return f"on {row.worker or '?'}, for {fmt_seconds(at - row.since)}"
    if row.state == QUEUED:
        return f"waiting for a worker for {fmt_seconds(at - row.since)}"
    if row.state == RETRYING:
        return f"attempt {row.attempt} failed {fmt_seconds(at - row.since)} ago; the next not queued yet"
    if row.state == PENDING:
        return (
            "waiting for " + ", ".join(row.waiting_for)
            if row.waiting_for
            else "its parents ended; not queued yet"
        )
    return f"ended {fmt_seconds(at - row.since)} ago" if row.since is not None else ""


def render_replay(snap: Snapshot, limit: int = 40) -> RenderableType:
    offset = "" if snap.offset is None else f" (+{fmt_seconds(snap.offset)} after the start)"
    counts = " · ".join(f"{n} {state}" for state, n in snap.counts.items())
    head = Text.assemble(("at ", "bold"), (fmt_instant(snap.at), "bold"), offset, "\n", counts)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("task", "state", "attempt", ""):
        table.add_column(col, no_wrap=col == "task")
    rows = snap.tasks if limit <= 0 else snap.tasks[:limit]
    for r in rows:
        table.add_row(
            Text(safe_text(r.task)),
            Text(r.state, style=STATE_STYLE.get(r.state, "")),
            "" if r.attempt is None else str(r.attempt),
            Text(safe_text(_what(r, snap.at))),
        )
    parts: list[RenderableType] = [head, table]
    if len(rows) < len(snap.tasks):
        parts.append(Text(f"... {len(snap.tasks) - len(rows)} more (--limit 0 shows all)", style="dim"))
    return Group(*parts)


__all__ = ["render_replay"]
