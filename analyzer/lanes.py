"""A lane's window cut into states: which of busy / loading / other / claimable / idle held
at each instant (`analyzer.gpu` says what each means).

Intervals of each kind may overlap, within a kind and across kinds; every instant of the
window takes the first state in `LANE_STATES` that holds there, so the segments cover the
window exactly once and their seconds add up to it. Each kind's intervals are merged
first (`merge_intervals`), then one sweep over the sorted ends: O(n log n) in the number
of intervals. Segments are named tuples (a lane of a big workflow has thousands).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

BUSY = "busy"
LOADING = "loading"
OTHER = "other"
CLAIMABLE = "claimable"
IDLE = "idle"
#: lane states, the one that wins first when several hold at once
LANE_STATES = (BUSY, LOADING, OTHER, CLAIMABLE, IDLE)

Interval = tuple[float, float]


class LaneSegment(NamedTuple):
    """A stretch of a lane's window in one state (epoch seconds)."""

    start: float
    end: float
    state: str


def lane_segments(
    window: Interval,
    *,
    busy: Iterable[Interval],
    loading: Iterable[Interval],
    held: Iterable[Interval],
    waiting: Iterable[Interval],
) -> list[LaneSegment]:
    """The window as consecutive segments, each in the first state that holds over it.

    Parameters
    ----------
    window:
        (start, end), epoch seconds; intervals are clipped to it.
    busy, loading, held, waiting:
        Intervals when the lane was generating, loading a model, held by an attempt (in
        any way: ``other`` is what is held but neither busy nor loading), and when work it
        could have taken was queued.

    Returns
    -------
    list[LaneSegment]
        In time order, adjacent segments in different states, covering the window.
    """
    lo, hi = window
    events: list[tuple[float, int, int]] = []
    for rank, intervals in enumerate((busy, loading, held, waiting)):
        for start, end in merge_intervals((max(a, lo), min(b, hi)) for a, b in intervals):
            events.append((start, rank, 1))
            events.append((end, rank, -1))
    events.sort()
    depth = [0, 0, 0, 0]
    segments: list[LaneSegment] = []
    at, state = lo, IDLE
    for time, rank, delta in events:
        if time > at:
            if segments and segments[-1].state == state:
                segments[-1] = LaneSegment(segments[-1].start, time, state)
            else:
                segments.append(LaneSegment(at, time, state))
            at = time
        depth[rank] += delta
        state = _state(depth)
    if hi > at:
        _append(segments, at, hi, state)
    return segments


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of intervals as disjoint ones in time order; empty or reversed ones drop."""
    merged: list[Interval] = []
    for start, end in sorted(iv for iv in intervals if iv[1] > iv[0]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def state_seconds(segments: Iterable[LaneSegment]) -> dict[str, float]:
    """Seconds in each of `LANE_STATES` (every state present, 0.0 when absent)."""
    parts: dict[str, list[float]] = {state: [] for state in LANE_STATES}
    for seg in segments:
        parts[seg.state].append(seg.end - seg.start)
    return {state: math.fsum(values) for state, values in parts.items()}


def _state(depth: list[int]) -> str:
    for rank, count in enumerate(depth):
        if count > 0:
            return LANE_STATES[rank]
    return IDLE


def _append(segments: list[LaneSegment], start: float, end: float, state: str) -> None:
    if segments and segments[-1].state == state:
        segments[-1] = LaneSegment(segments[-1].start, end, state)
    else:
        segments.append(LaneSegment(start, end, state))
