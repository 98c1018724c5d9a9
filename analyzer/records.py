"""The compact in-memory forms of what the producers write: spans, lineage rows, asset rows.

`SpanRecord` is what a span line becomes after reading: times as float epoch seconds, ids
as ints, interned names, and the attribute dict kept only where the analysis needs it
(root spans, and spans carrying attributes beyond the standard kind / bytes). A record is
a named tuple of about 130 bytes plus its floats and ids, so a million spans take a few
hundred MB where the parsed JSON dicts would take several GB.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from .contract import SPAN_KINDS


# A named tuple, not a dataclass: immutable, built by one C call (``tuple.__new__``) on
# the hot paths, and a record holding only atomic values drops out of the garbage
# collector's sight, which keeps collections cheap with a million of them alive.
class SpanRecord(NamedTuple):
    """One span, compact and immutable.

    Attributes
    ----------
    name:
        Span name (interned).
    span_id, parent_id:
        64-bit span ids as ints; ``parent_id`` is None for a root span.
    start, end:
        Float epoch seconds (UTC).
    status:
        ``"UNSET"``, ``"OK"`` or ``"ERROR"``.
    kind:
        Value of ``tuiflow.kind`` (compute / network / marker) when present, else None.
    nbytes:
        Value of ``tuiflow.bytes`` when present, else None.
    attrs:
        All attributes, for root spans and for spans with attributes other than kind and
        bytes; None otherwise (the common child span). Identical dicts may be shared
        between records (the parallel reader sends each once): never mutate one.
    description:
        Status description (set on error spans).
    """

    name: str
    span_id: int
    parent_id: int | None
    start: float
    end: float
    status: str = "UNSET"
    kind: str | None = None
    nbytes: int | None = None
    attrs: dict[str, Any] | None = None
    description: str | None = None

    @property
    def duration(self) -> float:
        """Length in seconds, never negative (a span ending before it starts counts 0)."""
        d = self.end - self.start
        return d if d > 0.0 else 0.0

    @property
    def effective_kind(self) -> str | None:
        """The explicit kind, else the contract's kind for a standard span name."""
        if self.kind is not None:
            return self.kind
        std = SPAN_KINDS.get(self.name)
        return None if std is None else str(std)

    def attr(self, key: str, default: Any = None) -> Any:
        """One attribute (``default`` when absent or when the dict was not kept)."""
        if self.attrs is None:
            return default
        return self.attrs.get(key, default)


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class LineageRow(_Row):
    """A row of ``logs/lineage.jsonl``: data item ``data_id`` was made from ``sources``."""

    data_id: str
    sources: list[str] = []
    task: str | None = None
    attempt: int | None = None


class AssetRow(_Row):
    """A row of ``logs/assets.jsonl``: a file an attempt wrote."""

    path: str
    bytes: int | None = None
    sha256: str | None = None
    owner: str | None = None
    task: str | None = None
    attempt: int | None = None
    data_id: str | None = None
