"""Reading span files in several processes: parsing is CPU-bound, and one core parses
about 150,000 spans a second, so a million-span workflow is read in parallel.

How it works
------------
The file list is cut into contiguous chunks. The calling process parses the first chunk
itself while helper processes (``python -m analyzer.parallel``) parse the others; records
come back in file order, so the result is exactly what a sequential read gives. A helper
that cannot be started, fails or answers garbage is replaced by parsing its chunk in
process: parallelism only ever saves time, it never changes the answer.

Protocol (no pickle anywhere)
-----------------------------
The parent writes the chunk's file paths to the helper's stdin as a JSON list. The helper
answers on its stdout with frames, each a u64 length then a blob, and a zero length to
end; a frame holds the spans of the next few files (the header says how many), so the
parent builds its trace from a helper's first files while the helper parses the rest::

    b"TFSPANS1"  u64 header length  header (JSON)  then per column: u64 length, raw array

A thread drains each helper's frames as they come (a helper never blocks on a full pipe).
A helper that dies mid-way costs only its files not yet answered: they are parsed here.

The header holds the string tables (names, kinds, descriptions), the attribute dicts
(deduplicated) and the reader's counters; the columns are machine-native ``array``
buffers, one entry per span: span id, parent id (0 = none), start, end, name index,
status, kind index, bytes, has-bytes flag, attrs index, description index (-1 = none).
Parent and helper are the same interpreter on the same machine, so native byte order and
sizes match.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import subprocess
import sys
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from typing import Any

from .reader import MAX_EXAMPLES, ReadStats, SpanReader, gc_paused
from .records import SpanRecord

MAGIC = b"TFSPANS1"
#: below this many files a helper's start-up (~0.3 s) costs more than it saves
MIN_FILES = 1000
#: about this many bytes of span files per process before another one pays off
BYTES_PER_JOB = 64 * 1024 * 1024
MAX_JOBS = 4
#: this process also builds the trace from every record: it parses a smaller share
MAIN_SHARE = 0.5
#: about this many frames per helper: enough to overlap, few enough to cost nothing
FRAMES_PER_HELPER = 16

_STATUS_CODES = ("UNSET", "OK", "ERROR")
_STATUS_INDEX = {code: i for i, code in enumerate(_STATUS_CODES)}
_COLUMNS = (
    ("span_id", "Q"),
    ("parent_id", "Q"),
    ("start", "d"),
    ("end", "d"),
    ("name", "I"),
    ("status", "B"),
    ("kind", "i"),
    ("nbytes", "q"),
    ("has_nbytes", "B"),
    ("attrs", "i"),
    ("description", "i"),
)
_STAT_FIELDS = ("spans_read", "lines_skipped", "lines_filtered", "files_read", "files_unreadable")


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_jobs(files: list[str]) -> int:
    """How many processes to read `files` with: 1 for small workflows, else one per
    `BYTES_PER_JOB` of span files, at most the available CPUs and `MAX_JOBS`.

    Parameters
    ----------
    files:
        Span files (missing ones count as empty).

    Returns
    -------
    int
    """
    cpus = min(available_cpus(), MAX_JOBS)
    if cpus < 2 or len(files) < MIN_FILES:
        return 1
    total = 0
    for path in files:
        try:
            total += os.stat(path).st_size
        except OSError:
            continue
    return max(1, min(cpus, total // BYTES_PER_JOB + 1))


def iter_files_parallel(
    reader: SpanReader, files: list[str], jobs: int, while_waiting: Callable[[], object] | None = None
) -> Iterator[SpanRecord]:
    """Spans of `files` in file order, parsed by `jobs` processes (this one included).

    Parameters
    ----------
    reader:
        Parses this process's chunk (and any chunk a helper failed on); its `stats`
        receive every helper's counters too.
    files:
        Span files.
    jobs:
        Processes to use, this one included; 1 reads sequentially.
    while_waiting:
        Called once, after this process's own chunk and before waiting for the helpers
        (other reading fits there for free); also called when reading sequentially.

    Returns
    -------
    Iterator[SpanRecord]
    """
    if jobs <= 1 or len(files) < 2:
        yield from reader.iter_files(files)
        if while_waiting is not None:
            while_waiting()
        return
    weights = [MAIN_SHARE] + [1.0] * (jobs - 1)
    total = sum(weights)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + w / total * len(files))
    cuts = [round(b) for b in bounds]
    chunks = [files[cuts[i] : cuts[i + 1]] for i in range(jobs)]
    helpers = [_start_helper(chunk) for chunk in chunks[1:]]
    yield from reader.iter_files(chunks[0])
    if while_waiting is not None:
        while_waiting()
    for chunk, helper in zip(chunks[1:], helpers, strict=True):
        yield from _answers(helper, chunk, reader)


# --- parent side ----------------------------------------------------------------------------------


def _start_helper(chunk: list[str]) -> _Helper | None:
    if not sys.executable:
        return None
    env = dict(os.environ)
    # The helper imports this package from wherever the parent did, installed or not.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "analyzer.parallel"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    except OSError:
        return None
    payload = json.dumps(chunk).encode()
    # A thread feeds stdin so this process starts parsing its own chunk at once, instead
    # of blocking on a full pipe until the helper has finished importing.
    threading.Thread(target=_feed, args=(proc, payload), daemon=True).start()
    return _Helper(proc)


def _feed(proc: subprocess.Popen[bytes], payload: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except OSError:
        pass  # the helper died; _collect notices from its exit status


_BROKEN = b""  # queued when a helper's answer stops short


def _answers(helper: _Helper | None, chunk: list[str], reader: SpanReader) -> Iterator[SpanRecord]:
    """The records of `chunk`: the helper's frames as they arrive, then (if it failed
    part-way) the files it did not answer, parsed here."""
    done = 0
    complete = False
    if helper is not None:
        while True:
            frame = helper.frames.get()
            if frame is None:
                complete = True
                break
            if frame is _BROKEN:
                break
            try:
                records, nfiles = decode_frame(frame, reader.stats)
            except (ValueError, KeyError, IndexError, TypeError, struct.error):
                break
            done += nfiles
            yield from records
        if not complete:
            helper.proc.kill()  # it answered garbage or stopped short: don't wait for more
        returncode = helper.proc.wait()
        complete = complete and returncode == 0 and done == len(chunk)
    if complete:
        reader.stats.helper_chunks += 1
        return
    reader.stats.helper_failures += 1
    yield from reader.iter_files(chunk[done:])  # what the helper did not answer


class _Helper:
    """A helper process and the frames its pump thread has read so far (None = the end)."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc
        self.frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while True:
                head = stdout.read(8)
                if len(head) != 8:
                    break
                (size,) = struct.unpack("<Q", head)
                if size == 0:
                    self.frames.put(None)
                    return
                blob = stdout.read(size)
                if len(blob) != size:
                    break
                self.frames.put(blob)
        except (OSError, ValueError):
            pass
        finally:
            stdout.close()
        self.frames.put(_BROKEN)


# --- the blob ----------------------------------------------------------------------------------------


def encode(records: Iterable[SpanRecord], stats: ReadStats, files: int = 0) -> bytes:
    """Serialise records and counters into the helper's answer (see the module docstring).

    Parameters
    ----------
    records:
        Parsed spans, consumed one by one (the helper never holds them all: its memory
        is the columns, ~60 bytes a span).
    stats:
        The counters of the read that produced them (read after `records` is consumed).
    files:
        How many span files the records come from (a frame's share of the chunk).

    Returns
    -------
    bytes
    """
    names: dict[str, int] = {}
    kinds: dict[str, int] = {}
    descriptions: dict[str, int] = {}
    attrs_table: list[dict[str, Any]] = []
    attrs_index: dict[Any, int] = {}
    cols = {name: array(code) for name, code in _COLUMNS}
    add = {name: cols[name].append for name, _ in _COLUMNS}
    n = 0
    for rec in records:
        n += 1
        add["span_id"](rec.span_id)
        add["parent_id"](rec.parent_id or 0)
        add["start"](rec.start)
        add["end"](rec.end)
        add["name"](names.setdefault(rec.name, len(names)))
        add["status"](_STATUS_INDEX.get(rec.status, 0))
        add["kind"](-1 if rec.kind is None else kinds.setdefault(rec.kind, len(kinds)))
        add["nbytes"](rec.nbytes or 0)
        add["has_nbytes"](rec.nbytes is not None)
        add["attrs"](-1 if rec.attrs is None else _attrs_slot(rec.attrs, attrs_table, attrs_index))
        desc = rec.description
        add["description"](-1 if desc is None else descriptions.setdefault(desc, len(descriptions)))
    header = {
        "n": n,
        "files": files,
        "names": list(names),
        "kinds": list(kinds),
        "descriptions": list(descriptions),
        "attrs": attrs_table,
        "stats": {
            **{f: getattr(stats, f) for f in _STAT_FIELDS},
            "trace_ids": stats.trace_ids,
            "examples": stats.examples,
        },
    }
    head = json.dumps(header).encode()
    parts = [MAGIC, struct.pack("<Q", len(head)), head]
    for name, _ in _COLUMNS:
        data = cols[name].tobytes()
        parts.append(struct.pack("<Q", len(data)))
        parts.append(data)
    return b"".join(parts)


def decode(blob: bytes, stats: ReadStats) -> list[SpanRecord]:
    """Turn a helper's answer back into records, adding its counters to `stats`.

    Raises ValueError when the blob is not a well-formed answer (see `decode_frame`)."""
    return decode_frame(blob, stats)[0]


def decode_frame(blob: bytes, stats: ReadStats) -> tuple[list[SpanRecord], int]:
    """A helper's frame: its records and how many span files they come from; its
    counters are added to `stats`.

    Parameters
    ----------
    blob:
        What `encode` produced.
    stats:
        Counters to add the helper's to.

    Returns
    -------
    tuple[list[SpanRecord], int]

    Raises
    ------
    ValueError
        When the blob is not a well-formed answer.
    """
    if not blob.startswith(MAGIC):
        raise ValueError("not an analyzer helper answer")
    pos = len(MAGIC)
    (head_len,) = struct.unpack_from("<Q", blob, pos)
    pos += 8
    header = json.loads(blob[pos : pos + head_len])
    pos += head_len
    n = header["n"]
    cols: dict[str, array] = {}
    for name, code in _COLUMNS:
        (size,) = struct.unpack_from("<Q", blob, pos)
        pos += 8
        col = array(code)
        col.frombytes(blob[pos : pos + size])
        pos += size
        if len(col) != n:
            raise ValueError(f"column {name}: {len(col)} entries for {n} spans")
        cols[name] = col
    intern = sys.intern
    names = [intern(s) for s in header["names"]]
    kinds = [intern(s) for s in header["kinds"]]
    descriptions = header["descriptions"]
    attrs = header["attrs"]
    # Rows zipped from the columns go straight into tuple.__new__: no Python-level call
    # per span.
    status_codes = _STATUS_CODES
    rows = zip(
        [names[i] for i in cols["name"]],
        cols["span_id"],
        [p or None for p in cols["parent_id"]],
        cols["start"],
        cols["end"],
        [status_codes[c] for c in cols["status"]],
        [kinds[k] if k >= 0 else None for k in cols["kind"]],
        [nb if has else None for nb, has in zip(cols["nbytes"], cols["has_nbytes"], strict=True)],
        [attrs[a] if a >= 0 else None for a in cols["attrs"]],
        [descriptions[d] if d >= 0 else None for d in cols["description"]],
        strict=True,
    )
    with gc_paused():
        out: list[SpanRecord] = list(map(tuple.__new__, repeat(SpanRecord), rows))
    counts = header["stats"]
    for f in _STAT_FIELDS:
        setattr(stats, f, getattr(stats, f) + int(counts[f]))
    for trace_id, count in counts["trace_ids"].items():
        stats.trace_ids[trace_id] = stats.trace_ids.get(trace_id, 0) + int(count)
    room = MAX_EXAMPLES - len(stats.examples)
    if room > 0:
        stats.examples.extend(counts["examples"][:room])
    return out, int(header.get("files", 0))


def _attrs_slot(attrs: dict[str, Any], table: list[dict[str, Any]], index: dict[Any, int]) -> int:
    # Identical attribute dicts (common on user spans) are sent once. A dict with list
    # values is not hashable as items; it is sent as is.
    try:
        key: Any = tuple(attrs.items())
        hash(key)
    except TypeError:
        table.append(attrs)
        return len(table) - 1
    slot = index.get(key)
    if slot is None:
        slot = index[key] = len(table)
        table.append(attrs)
    return slot


# --- helper side --------------------------------------------------------------------------------------


def main() -> int:
    """Helper entry point: read a JSON list of span files on stdin, answer on stdout."""
    files = json.loads(sys.stdin.buffer.read())
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return 2
    out = sys.stdout.buffer
    step = max(1, -(-len(files) // FRAMES_PER_HELPER))
    with gc_paused():
        for first in range(0, len(files), step):
            part = files[first : first + step]
            reader = SpanReader()  # counters per frame: the parent adds them up
            blob = encode(reader.iter_files(part), reader.stats, files=len(part))
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            out.flush()
    out.write(struct.pack("<Q", 0))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
