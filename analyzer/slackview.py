"""The slack and what-if views (``tuiflow trace slack``, ``tuiflow trace what-if``).

Pure: a `SlackReport` or `WhatIf` in, a rich renderable out. Task names are user text,
drawn safe and never as markup.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .fmt import fmt_seconds, safe_text
from .slack import SlackReport, WhatIf


def render_slack(report: SlackReport, limit: int = 40) -> RenderableType:
    """Tasks least slack first: how much later each could have ended without delaying the end."""
    head = Text.assemble(
        ("slack", "bold"),
        f"  makespan {fmt_seconds(report.makespan)} · {len(report.tasks)} tasks · "
        f"{sum(r.critical for r in report.tasks)} critical · "
        f"{sum(r.near_critical for r in report.tasks)} near-critical",
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("task", "left"), ("slack", "right"), ("", "left"), ("ran", "right"),
                         ("waited", "right"), ("ends by", "right"), ("could end by", "right")):  # fmt: skip
        table.add_column(col, justify=justify, no_wrap=col == "task")
    rows = report.tasks if limit <= 0 else report.tasks[:limit]
    for r in rows:
        mark = ("critical", "bold red") if r.critical else ("near", "yellow") if r.near_critical else ("", "")
        table.add_row(
            Text(safe_text(r.task)),
            fmt_seconds(r.slack),
            Text(*mark),
            fmt_seconds(r.duration),
            fmt_seconds(r.wait),
            f"+{fmt_seconds(r.earliest_finish)}",
            f"+{fmt_seconds(r.latest_finish)}",
        )
    parts: list[RenderableType] = [head, table]
    if len(rows) < len(report.tasks):
        parts.append(Text(f"... {len(report.tasks) - len(rows)} more (--limit 0 shows all)", style="dim"))
    return Group(*parts)


def render_what_if(w: WhatIf, limit: int = 12) -> RenderableType:
    """The makespan and critical path before and after the change."""
    if not w.changed:
        return Text("no task of this workflow matches: nothing changes", style="yellow")
    gain = w.saved
    pct = gain / w.makespan_before * 100 if w.makespan_before > 0 else 0.0
    lines = [
        Text.assemble(
            ("what-if", "bold"),
            f"  {len(w.changed)} task(s) changed · makespan {fmt_seconds(w.makespan_before)} → ",
            (fmt_seconds(w.makespan_after), "bold"),
            f"  ({'-' if gain >= 0 else '+'}{fmt_seconds(abs(gain))}, {pct:.1f} %)",
        )
    ]
    changed = sorted(w.changed.items(), key=lambda kv: kv[1][0] - kv[1][1], reverse=True)
    for task, (before, after) in changed[:limit]:
        lines.append(Text(f"  {safe_text(task)}: {fmt_seconds(before)} → {fmt_seconds(after)}"))
    if len(changed) > limit:
        lines.append(Text(f"  ... {len(changed) - limit} more", style="dim"))
    lines.append(Text("critical path before: " + " → ".join(safe_text(t) for t in w.critical_before)))
    moved = w.critical_after != w.critical_before
    lines.append(
        Text.assemble(
            "critical path after:  ",
            (" → ".join(safe_text(t) for t in w.critical_after), "bold" if moved else ""),
            ("  (moved)" if moved else "", "yellow"),
        )
    )
    lines.append(
        Text(
            "waits are kept as they were observed (slots and queues are not re-simulated): "
            "the gain is a floor",
            style="dim",
        )
    )
    return Group(*lines)


__all__ = ["render_slack", "render_what_if"]
