"""Data lineage: which data item was made from which, as the attempts recorded it.

Rows of ``logs/lineage.jsonl`` say ``data_id`` was made from ``sources`` (other data
ids) by ``task`` / ``attempt``. When several attempts wrote a row for one data id, the
row of the highest attempt wins. Asset rows (``logs/assets.jsonl``) add the files and
bytes behind a data id.

The tree view is rooted at the *sinks* (data ids nobody uses as a source) and descends
into sources. A data id reachable from several sinks is expanded once and shown as a
reference (``seen``) afterwards, so the tree stays as large as the graph; an edge back to
an ancestor is shown as ``cycle`` and not followed; a source nobody produced is
``external`` (an input from outside the workflow). Data ids only reachable through a
cycle (no sink above them) become extra roots, so nothing is hidden. Built without
recursion: a lineage chain thousands deep is fine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .records import AssetRow, LineageRow
from .stats import Frozen

SEEN = "seen"
CYCLE = "cycle"
EXTERNAL = "external"


class LineageItem(Frozen):
    """One data id: who produced it, from what, and its files."""

    data_id: str
    task: str | None
    attempt: int | None
    sources: list[str]
    assets: int = 0
    bytes: int = 0


class LineageGraph(Frozen):
    """The data-id DAG."""

    items: dict[str, LineageItem]
    sinks: list[str]  # produced, used by nobody: the final products
    roots: list[str]  # produced from no sources
    external: list[str]  # used as a source, never produced here
    edges: int
    cycle_edges: list[tuple[str, str]]  # (data id, source) edges that close a cycle


@dataclass(slots=True)
class LineageNode:
    """A node of the lineage tree (``mark`` is None, "seen", "cycle" or "external")."""

    data_id: str
    task: str | None = None
    attempt: int | None = None
    mark: str | None = None
    children: list[LineageNode] = field(default_factory=list)


def lineage_graph(rows: Iterable[LineageRow], assets: Iterable[AssetRow] = ()) -> LineageGraph:
    """Build the data-id DAG from lineage rows (and asset rows for sizes).

    Parameters
    ----------
    rows:
        Lineage rows of all attempts.
    assets:
        Asset rows of all attempts.

    Returns
    -------
    LineageGraph
    """
    chosen: dict[str, LineageRow] = {}
    for row in rows:
        prev = chosen.get(row.data_id)
        if prev is None or (row.attempt or 0) >= (prev.attempt or 0):
            chosen[row.data_id] = row
    counts: dict[str, list[int]] = {}
    for asset in assets:
        if asset.data_id:
            c = counts.setdefault(asset.data_id, [0, 0])
            c[0] += 1
            c[1] += asset.bytes or 0
    items: dict[str, LineageItem] = {}
    used: set[str] = set()
    edges = 0
    for data_id in sorted(chosen):
        row = chosen[data_id]
        sources = list(dict.fromkeys(row.sources))
        used.update(sources)
        edges += len(sources)
        n_assets, n_bytes = counts.get(data_id, (0, 0))
        items[data_id] = LineageItem(
            data_id=data_id,
            task=row.task,
            attempt=row.attempt,
            sources=sources,
            assets=n_assets,
            bytes=n_bytes,
        )
    external = sorted(used - items.keys())
    return LineageGraph(
        items=items,
        sinks=[d for d in items if d not in used],
        roots=[d for d, item in items.items() if not item.sources],
        external=external,
        edges=edges,
        cycle_edges=_cycle_edges(items),
    )


def lineage_tree(graph: LineageGraph) -> list[LineageNode]:
    """The lineage as a forest rooted at the sinks (see the module docstring for marks).

    Parameters
    ----------
    graph:
        From `lineage_graph`.

    Returns
    -------
    list[LineageNode]
        One tree per sink, then one per data id left unreached (cycles without a sink).
    """
    items = graph.items
    expanded: set[str] = set()
    forest: list[LineageNode] = []
    starts = list(graph.sinks) + [d for d in items if d not in graph.sinks]
    for start in starts:
        if start in expanded:
            continue
        top = _node(start, items)
        forest.append(top)
        expanded.add(start)
        # Depth-first with an explicit stack; `on_stack` holds the ancestors of the top.
        stack = [(top, start, iter(items[start].sources))]
        on_stack = {start}
        while stack:
            node, node_id, sources = stack[-1]
            source = next(sources, None)
            if source is None:
                stack.pop()
                on_stack.discard(node_id)
                continue
            child = _node(source, items)
            node.children.append(child)
            if source not in items:
                child.mark = EXTERNAL
            elif source in on_stack:
                child.mark = CYCLE
            elif source in expanded:
                child.mark = SEEN
            else:
                expanded.add(source)
                on_stack.add(source)
                stack.append((child, source, iter(items[source].sources)))
    return forest


def _node(data_id: str, items: dict[str, LineageItem]) -> LineageNode:
    item = items.get(data_id)
    if item is None:
        return LineageNode(data_id)
    return LineageNode(data_id, item.task, item.attempt)


def _cycle_edges(items: dict[str, LineageItem]) -> list[tuple[str, str]]:
    """Back edges of an iterative depth-first search: each closes a cycle."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    back: list[tuple[str, str]] = []
    for start, item in items.items():
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(item.sources))]
        while stack:
            node, sources = stack[-1]
            source = next(sources, None)
            if source is None:
                state[node] = 2
                stack.pop()
                continue
            if source not in items:
                continue
            s = state.get(source)
            if s == 1:
                back.append((node, source))
            elif s is None:
                state[source] = 1
                stack.append((source, iter(items[source].sources)))
    return back
