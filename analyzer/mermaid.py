"""Mermaid flowchart of the task DAG, critical path highlighted.

Nodes are tasks (label: name, duration of the latest attempt, attempts when retried);
edges go parent -> child. Critical-path nodes and the edges between them are drawn red
and thick, failed tasks grey and dashed, parents without spans as dotted ``missing``
nodes. A comment line at the top spells out the critical path. Names are escaped
(``"``, ``<``, ``>``, ``#``) and nodes get generated ids, so any task name is safe.
"""

from __future__ import annotations

import itertools

from .contract import NOT_RUN_OUTCOMES
from .critical import CriticalPath
from .fmt import fmt_seconds
from .trace import Trace


def render_mermaid(trace: Trace, path: CriticalPath, *, direction: str = "LR") -> str:
    """The task DAG as Mermaid flowchart source.

    Parameters
    ----------
    trace:
        The workflow's trace.
    path:
        Its critical path (`critical_path`).
    direction:
        ``LR`` (left to right) or ``TD`` (top down).

    Returns
    -------
    str
        Mermaid source, ending with a newline.
    """
    ids: dict[str, str] = {}
    for name in trace.tasks:
        ids[name] = f"t{len(ids)}"
    missing: list[str] = []
    for info in trace.tasks.values():
        for parent in info.depends_on:
            if parent not in ids:
                ids[parent] = f"t{len(ids)}"
                missing.append(parent)
    on_path = [n.task for n in path.nodes]
    path_edges = set(itertools.pairwise(on_path))

    lines = [f"flowchart {direction}"]
    if on_path:
        chain = " -> ".join(n.replace("\n", " ") for n in on_path)
        lines.append(f"  %% critical path: {chain} ({fmt_seconds(path.total_seconds)})")
    else:
        lines.append("  %% critical path: (none)")
    for name, info in trace.tasks.items():
        latest = info.latest
        label = f"{_escape(name)}<br/>{fmt_seconds(latest.duration)}"
        if len(info.attempts) > 1:
            label += f" · {len(info.attempts)} attempts"
        if not latest.ok:
            label += f"<br/>{_escape(latest.outcome)}"
        lines.append(f'  {ids[name]}["{label}"]')
    for name in missing:
        lines.append(f'  {ids[name]}["{_escape(name)}<br/>no spans"]')
    edge_index = 0
    critical_links: list[int] = []
    for name, info in trace.tasks.items():
        for parent in info.depends_on:
            lines.append(f"  {ids[parent]} --> {ids[name]}")
            if (parent, name) in path_edges:
                critical_links.append(edge_index)
            edge_index += 1
    lines.extend(f"  classDef {name} {style}" for name, style in _CLASSES.items())
    # One class per node: its outcome's look, with the critical stroke when on the path
    # (a failed or skipped task on the critical path still looks failed or skipped).
    by_class: dict[str, list[str]] = {}
    for name in [*on_path, *(n for n in trace.tasks if n not in on_path)]:
        info = trace.tasks.get(name)
        if info is None:
            continue
        look = _look(info.latest.outcome)
        if name in on_path:
            look = f"{look}_critical" if look else "critical"
        if look:
            by_class.setdefault(look, []).append(ids[name])
    if missing:
        by_class["missing"] = [ids[n] for n in missing]
    for look, members in by_class.items():
        lines.append(f"  class {','.join(members)} {look}")
    if critical_links:
        lines.append(f"  linkStyle {','.join(map(str, critical_links))} stroke:#d62728,stroke-width:3px")
    return "\n".join(lines) + "\n"


_RED = "stroke:#d62728,stroke-width:3px"
_CLASSES = {
    "critical": f"fill:#ffe3e3,{_RED}",
    "failed": "fill:#eeeeee,stroke:#888888,stroke-dasharray:4 2",
    "failed_critical": f"fill:#eeeeee,{_RED},stroke-dasharray:4 2",
    "skipped": "fill:#ffffff,stroke:#888888,stroke-dasharray:1 3",
    "skipped_critical": f"fill:#ffffff,{_RED},stroke-dasharray:1 3",
    "missing": "fill:#ffffff,stroke:#bbbbbb,stroke-dasharray:2 2",
}


def _look(outcome: str) -> str:
    """The class of a task's outcome: "" (completed), "skipped" or "failed"."""
    if outcome == "completed":
        return ""
    return "skipped" if outcome in NOT_RUN_OUTCOMES else "failed"


def _escape(text: str) -> str:
    # Mermaid's entity codes; `#` first so the others are not escaped twice.
    text = text.replace("\n", " ").replace("#", "#35;")
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
