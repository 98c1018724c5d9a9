"""Small numeric helpers and the summary models they fill: percentiles, merged intervals,
per-span-name duration and network summaries.

Definitions (docs/analyzer.md repeats them):

- percentile: linear interpolation between closest ranks (numpy's default): for sorted
  values ``v[0..n-1]`` and ``q`` in [0, 1], position ``(n - 1) * q``.
- merged (active) time of intervals: the length of their union, so overlapping intervals
  count once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from operator import attrgetter

from pydantic import BaseModel, ConfigDict

from .contract import SPAN_KINDS, SpanKind
from .records import SpanRecord

COMPUTE = str(SpanKind.COMPUTE)
NETWORK = str(SpanKind.NETWORK)
_STD_KINDS = {name: str(kind) for name, kind in SPAN_KINDS.items()}


class Frozen(BaseModel):
    """Base of the analyzer's result models: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DurationSummary(Frozen):
    """Durations of a group of spans, in seconds."""

    count: int = 0
    total_seconds: float = 0.0
    mean_seconds: float = 0.0
    p50_seconds: float = 0.0
    p95_seconds: float = 0.0
    max_seconds: float = 0.0


class NetworkNameSummary(DurationSummary):
    """Network spans of one name: durations plus merged active time and bytes moved."""

    active_seconds: float = 0.0
    bytes: int = 0


class NetworkSummary(Frozen):
    """All network spans of a group.

    ``total_active_seconds`` is the union of the spans' intervals (overlaps counted once):
    the time something was moving data. ``total_seconds`` is the plain sum.
    """

    count: int = 0
    total_seconds: float = 0.0
    total_active_seconds: float = 0.0
    bytes: int = 0
    by_name: dict[str, NetworkNameSummary] = {}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-quantile of already sorted values, linear interpolation (numpy's default).

    Parameters
    ----------
    sorted_values:
        Values in ascending order.
    q:
        Quantile in [0, 1] (0.95 for p95).

    Returns
    -------
    float
        0.0 for no values.
    """
    n = len(sorted_values)
    if n == 0:
        return 0.0
    pos = (n - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def merged_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of intervals, in the intervals' unit (seconds here).

    Parameters
    ----------
    intervals:
        ``(start, end)`` pairs; empty or reversed ones add nothing.

    Returns
    -------
    float
    """
    total = 0.0
    cur_start = cur_end = None
    for start, end in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start  # type: ignore[operator]
            cur_start, cur_end = start, end
        elif end > cur_end:
            cur_end = end
    if cur_end is not None:
        total += cur_end - cur_start  # type: ignore[operator]
    return total


def summarize(values: Iterable[float]) -> DurationSummary:
    """Count, total, mean, p50, p95 and max of durations in seconds.

    Parameters
    ----------
    values:
        Durations in seconds; negative ones (a span ending before it starts) count as 0.

    Returns
    -------
    DurationSummary
    """
    ordered = sorted(values)
    if ordered and ordered[0] < 0.0:
        ordered = [max(0.0, v) for v in ordered]
    n = len(ordered)
    if n == 0:
        return DurationSummary()
    total = math.fsum(ordered)
    return DurationSummary(
        count=n,
        total_seconds=total,
        mean_seconds=total / n,
        p50_seconds=percentile(ordered, 0.5),
        p95_seconds=percentile(ordered, 0.95),
        max_seconds=ordered[-1],
    )


def span_kind(rec: SpanRecord) -> str | None:
    """A span's kind: its ``tuiflow.kind`` attribute, else the contract's kind for its name."""
    return rec.kind if rec.kind is not None else _STD_KINDS.get(rec.name)


def breakdown(spans: Iterable[SpanRecord]) -> tuple[dict[str, DurationSummary], NetworkSummary]:
    """Compute summary per span name and network summary of a group of spans.

    Parameters
    ----------
    spans:
        Any spans; those of kind other than compute / network (roots, markers) are ignored.

    Returns
    -------
    tuple[dict[str, DurationSummary], NetworkSummary]
        Compute summaries by span name (largest total first), and the network summary
        (per name and overall, with merged active time).
    """
    by_name: dict[str, list[SpanRecord]] = {}
    for rec in spans:
        group = by_name.get(rec.name)
        if group is None:
            by_name[rec.name] = [rec]
        else:
            group.append(rec)
    return breakdown_by_name(by_name)


def breakdown_by_name(
    by_name: dict[str, list[SpanRecord]],
) -> tuple[dict[str, DurationSummary], NetworkSummary]:
    """`breakdown` of spans already grouped by name (`Trace.by_name`).

    Parameters
    ----------
    by_name:
        Spans by span name.

    Returns
    -------
    tuple[dict[str, DurationSummary], NetworkSummary]
    """
    # Kinds are decided per name group: a million spans share a handful of names, so the
    # per-span work is a set build and a subtraction.
    compute: dict[str, DurationSummary] = {}
    network: dict[str, list[SpanRecord]] = {}
    for name, group in by_name.items():
        std = _STD_KINDS.get(name)
        kinds = {r.kind for r in group}
        if len(kinds) == 1:
            only = kinds.pop()
            kind = only if only is not None else std
            comp = group if kind == COMPUTE else []
            net = group if kind == NETWORK else []
        else:  # one name, several kinds: rare, sort span by span
            comp = [r for r in group if (r.kind if r.kind is not None else std) == COMPUTE]
            net = [r for r in group if (r.kind if r.kind is not None else std) == NETWORK]
        if comp:
            compute[name] = summarize([r.end - r.start for r in comp])
        if net:
            network[name] = net
    compute = dict(sorted(compute.items(), key=lambda kv: (-kv[1].total_seconds, kv[0])))
    return compute, network_summary(network)


def network_summary(by_name: dict[str, list[SpanRecord]]) -> NetworkSummary:
    """Network summary of network spans grouped by name: sums and merged active time.

    Parameters
    ----------
    by_name:
        Network spans by span name (their kind is not checked again).

    Returns
    -------
    NetworkSummary
    """
    names: dict[str, NetworkNameSummary] = {}
    everything: list[SpanRecord] = []
    for name, group in by_name.items():
        ordered = sorted(group, key=_START)
        base = summarize([r.end - r.start for r in group])
        moved = sum(r.nbytes for r in group if r.nbytes is not None)
        names[name] = NetworkNameSummary(**base.model_dump(), active_seconds=_union(ordered), bytes=moved)
        everything.extend(ordered)
    everything.sort(key=_START)  # runs already sorted: timsort merges them cheaply
    names = dict(sorted(names.items(), key=lambda kv: (-kv[1].total_seconds, kv[0])))
    return NetworkSummary(
        count=len(everything),
        total_seconds=math.fsum(n.total_seconds for n in names.values()),
        total_active_seconds=_union(everything),
        bytes=sum(n.bytes for n in names.values()),
        by_name=names,
    )


_START = attrgetter("start")


def _union(ordered: list[SpanRecord]) -> float:
    """Length of the union of spans already sorted by start, seconds."""
    total = 0.0
    cur_start = cur_end = 0.0
    open_ = False
    for rec in ordered:
        start, end = rec.start, rec.end
        if end <= start:
            continue
        if not open_:
            cur_start, cur_end, open_ = start, end, True
        elif start > cur_end:
            total += cur_end - cur_start
            cur_start, cur_end = start, end
        elif end > cur_end:
            cur_end = end
    return total + (cur_end - cur_start if open_ else 0.0)
