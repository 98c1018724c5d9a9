"""Streaming readers over span, lineage and asset files.

Where the files are (see `analyzer.contract`)::

    <wf_dir>/tasks/<encoded task>/<attempt>/logs/spans.jsonl     one per attempt
    <wf_dir>/tasks/<encoded task>/<attempt>/logs/lineage.jsonl
    <wf_dir>/tasks/<encoded task>/<attempt>/logs/assets.jsonl
    <wf_dir>/trace/spans.jsonl                                   the coordinator's

Tolerance: the files are written while we read them, by many processes on many hosts.
A line that is not a span (garbage, a half-written last line, a JSON value of the wrong
shape, an unparsable id or time) is counted in ``lines_skipped`` and the read goes on;
blank lines are ignored without counting; a file that vanishes between listing and
opening is ignored (an attempt directory is created before its logs), and one that cannot
be read is counted in ``files_unreadable``. Nothing here raises on bad data.

The task directory name is never decoded: the task name and attempt come from the
spans' attributes, so the reader does not depend on how producers encode names.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

from pydantic import BaseModel, ValidationError

from spool import layout

from .contract import (
    ATTR_BYTES,
    ATTR_KIND,
    TASK_SPAN,
    WORKFLOW_SPAN,
)
from .errors import TraceNotFoundError
from .otel import WIRE_SPAN, WIRE_SPAN_LIST
from .records import AssetRow, LineageRow, SpanRecord

#: names whose spans keep their full attribute dict (they carry the workflow context)
ROOT_NAMES = frozenset({TASK_SPAN, WORKFLOW_SPAN})
#: how many skip reasons `ReadStats.examples` keeps (enough to diagnose, bounded memory)
MAX_EXAMPLES = 5
#: bytes read (and validated in one call) at a time; attempt files are smaller than this
BLOCK_BYTES = 1 << 20

_STATUS = {"UNSET": "UNSET", "OK": "OK", "ERROR": "ERROR"}
_ROOTS_ONLY_PREFIXES = tuple(f'{{"name": "{n}"'.encode() for n in sorted(ROOT_NAMES))
_NAME_PREFIX = b'{"name": "'
_fromiso = datetime.fromisoformat
_validate = WIRE_SPAN.validate_json
_validate_list = WIRE_SPAN_LIST.validate_json
_CONVERT_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
_WHITESPACE = frozenset(b" \t\r\n")
_intern = sys.intern
_new_record = tuple.__new__  # SpanRecord's fields in order, without the Python-level __new__

RowT = TypeVar("RowT", bound=BaseModel)


@dataclass(slots=True)
class ReadStats:
    """Counters of one read (a reader accumulates them over every source it reads).

    Attributes
    ----------
    spans_read:
        Lines that became spans.
    lines_skipped:
        Non-blank lines that were not spans (garbage, truncated, wrong shape).
    lines_filtered:
        Lines passed over unparsed by a ``roots_only`` reader.
    files_read, files_unreadable:
        Span files opened / span files that exist but could not be read.
    rows_read, rows_skipped:
        Lineage and asset rows read / rejected.
    helper_chunks, helper_failures:
        Chunks of files parsed by helper processes (`analyzer.parallel`) / chunks whose
        helper failed and that were parsed here instead.
    trace_ids:
        Count of spans per trace id (a workflow is one trace; more means foreign files).
    examples:
        The first few skip reasons, ``"path:line: reason"``.
    """

    spans_read: int = 0
    lines_skipped: int = 0
    lines_filtered: int = 0
    files_read: int = 0
    files_unreadable: int = 0
    rows_read: int = 0
    rows_skipped: int = 0
    helper_chunks: int = 0
    helper_failures: int = 0
    trace_ids: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def note(self, source: str, lineno: int, reason: str) -> None:
        """Remember a skip reason, up to `MAX_EXAMPLES` of them."""
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{source}:{lineno}: {reason}")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk load, restoring its state after.

    Loading a million spans allocates a few million long-lived objects; each automatic
    collection walks all of them, which more than doubled the CPU time of a load. The
    records hold no reference cycles, so nothing is lost by collecting later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def epoch_seconds(text: str) -> float:
    """Parse an ISO-8601 time as OpenTelemetry writes it into float epoch seconds.

    Parameters
    ----------
    text:
        e.g. ``"2026-11-23T04:33:46.500552Z"``; a string without a zone is taken as UTC.

    Returns
    -------
    float
        Seconds since the epoch.

    Raises
    ------
    ValueError
        When the text is not an ISO-8601 time.
    """
    dt = _fromiso(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_span_line(line: str | bytes) -> SpanRecord:
    """Turn one JSON line into a `SpanRecord`.

    Parameters
    ----------
    line:
        One line of a ``spans.jsonl`` file.

    Returns
    -------
    SpanRecord

    Raises
    ------
    ValueError
        (`pydantic.ValidationError` included) when the line is not a span.
    """
    record, _ = _parse(line)
    return record


def _parse(line: str | bytes) -> tuple[SpanRecord, str]:
    return _convert(_validate(line))


def _convert(wire: dict[str, Any]) -> tuple[SpanRecord, str]:
    # The hot path of every load: a million calls. Validation (pydantic-core, in Rust)
    # happened before; what is left is kept to plain indexing and builtins, inlined.
    ctx = wire["context"]
    parent = wire["parent_id"]
    attrs = wire["attributes"]
    status = wire["status"]
    name = _intern(wire["name"])
    start = _fromiso(wire["start_time"])
    end = _fromiso(wire["end_time"])
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    keep = None
    kind = nbytes = None
    if attrs:
        kind = attrs.get(ATTR_KIND)
        nbytes = attrs.get(ATTR_BYTES)
        # Children with only kind/bytes (the bulk of a trace) drop their dict: that is
        # most of the memory a million records would otherwise take.
        if parent is None or len(attrs) > (kind is not None) + (nbytes is not None) or name in ROOT_NAMES:
            keep = attrs
        kind = _intern(kind) if kind.__class__ is str else None
        if nbytes is not None and nbytes.__class__ is not int:
            nbytes = int(nbytes) if nbytes.__class__ is float else None
    elif parent is None:
        keep = attrs
    record = _new_record(
        SpanRecord,
        (
            name,
            int(ctx["span_id"], 16),
            int(parent, 16) if parent else None,
            start.timestamp(),
            end.timestamp(),
            _STATUS.get(status["status_code"], "UNSET"),
            kind,
            nbytes,
            keep,
            status["description"],
        ),
    )
    return record, ctx["trace_id"]


class SpanReader:
    """Yields `SpanRecord` s from lines, files or a workflow directory, counting as it goes.

    One reader may be used for several sources; `stats` accumulates over all of them.
    Iteration is lazy: nothing is read before the caller asks for the next span.

    Parameters
    ----------
    roots_only:
        Pass over (without parsing) lines that visibly hold a span other than
        ``task`` / ``workflow``: for analyses that need only the
        attempts' root spans (`history`), about 50x less parsing. Lines in another layout
        are still parsed, so the filter can only save work, never drop a root.
    """

    def __init__(self, *, roots_only: bool = False) -> None:
        self.stats = ReadStats()
        self.roots_only = roots_only

    def iter_lines(
        self, lines: Iterable[str | bytes], source: str = "<lines>", first_lineno: int = 1
    ) -> Iterator[SpanRecord]:
        """Spans from an iterable of JSON lines.

        Parameters
        ----------
        lines:
            Lines as ``str`` or ``bytes``, with or without their newline.
        source:
            Name used in skip reasons.
        first_lineno:
            Number of the first line, for skip reasons.

        Returns
        -------
        Iterator[SpanRecord]
        """
        stats = self.stats
        roots_only = self.roots_only
        parse = _parse
        count = _TraceIdCounter(stats.trace_ids)
        try:
            for lineno, line in enumerate(lines, first_lineno):
                if not line or line.isspace():
                    continue
                if roots_only:
                    raw = line if isinstance(line, bytes) else line.encode()
                    if raw.startswith(_NAME_PREFIX) and not raw.startswith(_ROOTS_ONLY_PREFIXES):
                        stats.lines_filtered += 1
                        continue
                try:
                    record, trace_id = parse(line)
                except (ValidationError, *_CONVERT_ERRORS) as exc:
                    stats.lines_skipped += 1
                    stats.note(source, lineno, _reason(exc))
                    continue
                count(trace_id)
                stats.spans_read += 1
                yield record
        finally:
            count.flush()

    def iter_files(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[SpanRecord]:
        """Spans from span files, in the order given.

        A missing file is ignored (it may not be written yet); one that cannot be read
        is counted in ``stats.files_unreadable``.

        Parameters
        ----------
        paths:
            ``spans.jsonl`` files.

        Returns
        -------
        Iterator[SpanRecord]
        """
        for path in paths:
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below, after a generator yields from it
            except FileNotFoundError:
                continue
            except OSError:
                self.stats.files_unreadable += 1
                continue
            self.stats.files_read += 1
            with handle:
                try:
                    yield from self._iter_blocks(handle, os.fspath(path))
                except OSError:
                    # RACE: a file on NFS can go stale under us mid-read; keep what we got.
                    self.stats.files_unreadable += 1

    def _iter_blocks(self, handle: BinaryIO, source: str) -> Iterator[SpanRecord]:
        # A whole block of lines is validated in one call, as a JSON array: one Rust call
        # instead of one per line, and no Python object per line. A block holding anything
        # but one span per line (garbage, a blank line, a half-written last line) fails as
        # a whole and is redone line by line, which counts and skips exactly.
        lineno = 1
        rest = b""
        while True:
            data = handle.read(BLOCK_BYTES)
            if not data:
                break
            if rest:
                data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data  # one line longer than a block: read on
                continue
            block, rest = data[:cut], data[cut:]
            newlines = block.count(b"\n")
            yield from self._block(block, source, lineno, newlines)
            lineno += newlines
        if rest:
            # no newline at the end: maybe a line still being written
            yield from self._block(rest, source, lineno, rest.count(b"\n"))

    def _block(self, block: bytes, source: str, lineno: int, newlines: int) -> list[SpanRecord]:
        end = len(block)
        while end and block[end - 1] in _WHITESPACE:
            end -= 1
        if not end:
            return []
        if self.roots_only:
            return list(self.iter_lines(block.split(b"\n"), source, lineno))
        body = memoryview(block)[:end]
        lines = newlines - block.count(b"\n", end) + 1  # lines up to the last non-blank one
        # "[" + the lines joined by "," + "]": two copies of the block, no object per line.
        joined = bytearray(b"[")
        joined += body
        joined = joined.replace(b"\n", b",")
        joined += b"]"
        try:
            wires = _validate_list(joined)
        except ValidationError:
            wires = None
        if wires is None or len(wires) != lines:
            return list(self.iter_lines(block.split(b"\n"), source, lineno))
        stats = self.stats
        count = _TraceIdCounter(stats.trace_ids)
        out: list[SpanRecord] = []
        add = out.append
        convert = _convert
        for i, wire in enumerate(wires):
            try:
                record, trace_id = convert(wire)
            except _CONVERT_ERRORS as exc:
                stats.lines_skipped += 1
                stats.note(source, lineno + i, _reason(exc))
                continue
            count(trace_id)
            add(record)
        count.flush()
        stats.spans_read += len(out)
        return out

    def iter_workflow(self, wf_dir: str | os.PathLike[str]) -> Iterator[SpanRecord]:
        """Spans of every attempt of a workflow, then the coordinator's.

        Parameters
        ----------
        wf_dir:
            The workflow directory (``<home>/workflows/<wf_id>``).

        Returns
        -------
        Iterator[SpanRecord]

        Raises
        ------
        TraceNotFoundError
            When `wf_dir` is not a directory.
        """
        return self.iter_files(span_files(wf_dir))


def span_files(wf_dir: str | os.PathLike[str], dirs: list[str] | None = None) -> list[str]:
    """The span files of a workflow: one per attempt directory, then the coordinator's.

    Files are listed whether or not they exist yet; readers skip missing ones.

    Parameters
    ----------
    wf_dir:
        The workflow directory.
    dirs:
        Attempt directories already listed (`attempt_dirs`), to spare a second listing.

    Returns
    -------
    list[str]

    Raises
    ------
    TraceNotFoundError
        When `wf_dir` is not a directory.
    """
    dirs = attempt_dirs(wf_dir) if dirs is None else dirs
    files = [os.path.join(d, layout.LOGS_DIR, layout.SPANS_FILE) for d in dirs]
    files.append(os.path.join(os.fspath(wf_dir), layout.TRACE_DIR, layout.SPANS_FILE))
    return files


def read_rows(
    paths: Iterable[str | os.PathLike[str]], model: type[RowT], stats: ReadStats | None = None
) -> list[RowT]:
    """Read JSONL rows (lineage or assets) into validated models, skipping bad lines.

    Parameters
    ----------
    paths:
        JSONL files; missing ones are ignored.
    model:
        `LineageRow`, `AssetRow` or any pydantic model.
    stats:
        Where to count ``rows_read`` / ``rows_skipped``.

    Returns
    -------
    list
        The rows that validated, in file order.
    """
    stats = stats if stats is not None else ReadStats()
    out: list[RowT] = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                for lineno, line in enumerate(handle, 1):
                    if line.isspace():
                        continue
                    try:
                        out.append(model.model_validate_json(line))
                    except ValidationError as exc:
                        stats.rows_skipped += 1
                        stats.note(os.fspath(path), lineno, _reason(exc))
                        continue
                    stats.rows_read += 1
        except FileNotFoundError:
            continue
        except OSError:
            stats.files_unreadable += 1
    return out


def read_lineage(
    wf_dir: str | os.PathLike[str], stats: ReadStats | None = None, dirs: list[str] | None = None
) -> list[LineageRow]:
    """Every lineage row of a workflow (all attempts).

    Parameters
    ----------
    wf_dir:
        The workflow directory.
    stats:
        Where to count rows read / skipped.
    dirs:
        Attempt directories already listed, to spare a second listing.

    Returns
    -------
    list[LineageRow]
    """
    dirs = attempt_dirs(wf_dir) if dirs is None else dirs
    return read_rows((os.path.join(d, layout.LOGS_DIR, layout.LINEAGE_FILE) for d in dirs), LineageRow, stats)


def read_assets(
    wf_dir: str | os.PathLike[str], stats: ReadStats | None = None, dirs: list[str] | None = None
) -> list[AssetRow]:
    """Every asset row of a workflow (all attempts).

    Parameters
    ----------
    wf_dir:
        The workflow directory.
    stats:
        Where to count rows read / skipped.
    dirs:
        Attempt directories already listed, to spare a second listing.

    Returns
    -------
    list[AssetRow]
    """
    dirs = attempt_dirs(wf_dir) if dirs is None else dirs
    return read_rows((os.path.join(d, layout.LOGS_DIR, layout.ASSETS_FILE) for d in dirs), AssetRow, stats)


def attempt_dirs(wf_dir: str | os.PathLike[str]) -> list[str]:
    """Every ``tasks/<task>/<attempt>`` directory of a workflow, in a stable order.

    Parameters
    ----------
    wf_dir:
        The workflow directory.

    Returns
    -------
    list[str]
        Paths sorted by task directory, then attempt (numerically where the name is a
        number); dot-names (producers' temporaries) and symlinks are left out.

    Raises
    ------
    TraceNotFoundError
        When `wf_dir` is not a directory.
    """
    root = os.fspath(wf_dir)
    if not os.path.isdir(root):
        raise TraceNotFoundError(root)
    out: list[str] = []
    for task_dir in _sorted_dirs(layout.tasks_dir(root)):
        out.extend(_sorted_dirs(task_dir))
    return out


def _sorted_dirs(parent: str) -> list[str]:
    try:
        with os.scandir(parent) as it:
            # Dot-names are producers' temporaries (a directory being built before its rename).
            entries = [e for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries.sort(key=lambda e: (0, int(e.name), "") if e.name.isdigit() else (1, 0, e.name))
    return [e.path for e in entries]


class _TraceIdCounter:
    """Counts spans per trace id; runs of one id (the normal case) cost one compare."""

    __slots__ = ("counts", "current", "run")

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.current: str | None = None
        self.run = 0

    def __call__(self, trace_id: str) -> None:
        if trace_id != self.current:
            self.flush()
            self.current = trace_id
        self.run += 1

    def flush(self) -> None:
        if self.run and self.current is not None:
            self.counts[self.current] = self.counts.get(self.current, 0) + self.run
        self.run = 0


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "line"
        return f"{loc}: {first.get('msg', 'invalid')}"
    return f"{type(exc).__name__}: {exc}"
