"""How a figure is written for people: durations, ages, sizes, rates, instants, and the
colour of every state.

Everything that shows figures (the analyzer's renderers, the command line, run-local's
display, the dashboard) formats them here, so the same figure reads the same everywhere.
Reports and ``--json`` output stay numeric; only what people read goes through this module.
It imports nothing of ours, so every package may use it.

    fmt_seconds(0.85)  '850 ms'     fmt_seconds(754)   '12m 34s'    a duration
    fmt_age(45.7)      '45 s'       fmt_age(200)       '3 min'      how long ago
    fmt_bytes(1536)    '1.5 KiB'    fmt_rate(12.34)    '12.3 tasks/s'
    fmt_share(0.184)   '18%'        fmt_model("/models/tiny-llama/")  'tiny-llama'
    fmt_residency({"0": [["transformers", "/m/llama", "float16"]]})  '0: llama'
    fmt_instant(0)     '1970-01-01 00:00:00.000Z'
    STATE_STYLE["upstream_failed"]  'dark_orange'  (a Rich style)
    safe_text("a\x1b[2Jb")  'a␛[2Jb'    user-supplied text, safe to print

A value that is not known (None) is written `MISSING`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: what every formatter writes for a value that is not known (None)
MISSING = "-"


def fmt_seconds(seconds: float | None) -> str:
    """A duration: ``850 µs``, ``850 ms``, ``1.25 s``, ``12.3 s``, ``4m 05s``, ``2h 03m``;
    `MISSING` for None."""
    if seconds is None:
        return MISSING
    if seconds == 0:
        return "0 s"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1e-3:
        return f"{sign}{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{sign}{s * 1e3:.0f} ms"
    if s < 60.0:
        return f"{sign}{s:.2f} s" if s < 10 else f"{sign}{s:.1f} s"
    if s < 3600.0:
        m, rest = divmod(round(s), 60)
        return f"{sign}{m}m {rest:02d}s"
    h, rest = divmod(round(s), 3600)
    return f"{sign}{h}h {rest // 60:02d}m"


def fmt_age(seconds: float | None) -> str:
    """How long ago, at the precision people read ages: ``45 s`` (under two minutes),
    ``3 min`` (under an hour), ``2 h`` (under two days), ``5 d``; whole units, rounded
    down, so a list of ages changes at most once a second and never says "2 min" of
    something 119 s old. Negative ages (another host's clock) count as 0; `MISSING` for
    None. At most 6 characters below 1,000 days."""
    if seconds is None:
        return MISSING
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def fmt_bytes(n: int | None) -> str:
    """A size: ``512 B``, ``1.5 KiB``, ``3.2 GiB``; `MISSING` for None."""
    if n is None:
        return MISSING
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def fmt_rate(per_second: float | None, unit: str = "tasks") -> str:
    """A rate: ``0.25 tasks/s``, ``12.3 tasks/s``, ``2,492 tasks/s``; with ``unit=""``
    the short form for narrow columns, ``12.3/s``. `MISSING` for None."""
    if per_second is None:
        return MISSING
    r = abs(per_second)
    number = f"{per_second:.2f}" if r < 1 else f"{per_second:.1f}" if r < 100 else f"{per_second:,.0f}"
    return f"{number} {unit}/s" if unit else f"{number}/s"


def fmt_share(fraction: float | None) -> str:
    """A part of a whole: ``18%``, ``100%``, ``<1%`` for a share above 0 that rounds to 0;
    `MISSING` for None."""
    if fraction is None:
        return MISSING
    if 0 < fraction < 0.005:
        return "<1%"
    return f"{fraction:.0%}"


def fmt_model(model: object) -> str:
    """A model as people name it: the last part of its path or hub id
    (``Qwen/Qwen2.5-0.5B-Instruct`` -> ``Qwen2.5-0.5B-Instruct``); `MISSING` for None or
    an empty name. Not made safe to print: pass it through `safe_text` like any user text."""
    if model is None:
        return MISSING
    text = str(model).rstrip("/\\")
    return text.replace("\\", "/").rsplit("/", 1)[-1] or MISSING


def fmt_residency(models: object) -> str:
    """What each slot's model host holds, from a worker's heartbeat (``models``: slot ->
    model keys ``[executor, model, dtype, ...]``, least recently used first): slots in
    order, each with its models most recently used first, ``0: tiny-llama, tiny-sd · 1:
    tiny-sd``; an empty slot as ``0: -``. `MISSING` when the worker has no model hosts
    (absent, empty, or not a mapping: heartbeats are other processes' records, so
    anything malformed is skipped, never raised). Not made safe to print (see `fmt_model`)."""
    if not isinstance(models, dict) or not models:
        return MISSING
    parts = []
    for slot in sorted(models, key=_slot_order):
        keys = models[slot] if isinstance(models[slot], list | tuple) else ()
        names = [fmt_model(key[1]) for key in keys if isinstance(key, list | tuple) and len(key) > 1]
        parts.append(f"{slot}: {', '.join(reversed(names)) or MISSING}")
    return " · ".join(parts)


def _slot_order(slot: object) -> tuple[int, str]:
    text = str(slot)
    return (int(text), "") if text.isdigit() else (1 << 30, text)


def fmt_instant(epoch: float | None, *, date: bool = True) -> str:
    """Epoch seconds as ``2027-01-15 08:00:00.123Z`` (UTC), or with ``date=False`` the
    time of day alone, ``08:00:00.123Z``; `MISSING` for None."""
    if epoch is None:
        return MISSING
    text = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    return text if date else text[11:]


# --- user-supplied text ---------------------------------------------------------------------
#: C0 controls and DEL: shown as their Unicode control pictures (one cell each, so columns
#: stay aligned): ESC as ␛, NUL as ␀, BEL as ␇, a newline in a name as ␊
_PICTURES = {c: chr(0x2400 + c) for c in range(0x20)} | {0x7F: "\u2421"}
#: C1 controls (0x9B is a one-byte CSI to some terminals), bidirectional overrides and
#: isolates (they reorder what is shown: "Trojan source"), line/paragraph separators:
#: no picture exists, so they are written as Python writes them, ``\x9b``, ``\u202e``
_ESCAPED = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F), *range(0x2066, 0x206A))
}
_ONE_LINE = str.maketrans(_PICTURES | _ESCAPED)
_MULTI_LINE = str.maketrans({c: v for c, v in (_PICTURES | _ESCAPED).items() if c not in (0x09, 0x0A, 0x0D)})
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_CARRIAGE = re.compile("\r\n?")


def safe_text(text: object, *, multiline: bool = False) -> str:
    """`text` (a name, an error, an output, a log tail: anything that came from a user or a
    file) made safe to print on a terminal: no control character is left to act on it.

    C0 controls and DEL become their control pictures (``\\x1b`` → ``␛``, so an escape
    sequence shows as ``␛[2J`` and does nothing); C1 controls and the bidirectional
    overrides become escapes (``\\x9b``, ``\\u202e``). With `multiline`, newlines and tabs
    are kept, and a carriage return (alone or before a newline) becomes a newline, so a
    progress bar's redraws read as lines instead of overwriting each other.

    Rich markup is not touched: print the result as a `rich.text.Text` (or with
    ``markup=False``), never inside a markup string. JSON output needs none of this (JSON
    escapes control characters itself). ``None`` gives ``""``; other values their `str`."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if not _UNSAFE.search(text):
        return text  # the common case: one scan, no copy
    if multiline:
        return _CARRIAGE.sub("\n", text).translate(_MULTI_LINE)
    return text.translate(_ONE_LINE)


def rate_and_eta(
    done: int, total: int, started_at: float, ended_at: float, now: float
) -> tuple[float | None, float | None]:
    """The figures behind a progress line: tasks/s since the start (to the end, once
    ended), and the seconds left at that rate (None once ended, or before any task
    finished). Times are epoch seconds; 0 means "not yet"."""
    if not started_at or done <= 0:
        return None, None
    elapsed = (ended_at or now) - started_at
    if elapsed <= 0:
        return None, None
    rate = done / elapsed
    return rate, (None if ended_at else max(0, total - done) / rate)


#: The one colour of each state, as a Rich style: the tasks' states, "retrying" (an
#: attempt failed and another follows), the workflows' states (the same names), a corrupt
#: record, and a worker's liveness. Named ANSI colours follow the terminal's theme; the
#: two 256-colour ones were picked to read on dark and light backgrounds alike (grey42 is
#: a mid grey, dark_orange a saturated one).
STATE_STYLE: dict[str, str] = {
    "pending": "grey42",
    "ready": "blue",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "skipped": "magenta",
    "upstream_failed": "dark_orange",
    "cancelled": "yellow",
    "retrying": "yellow",
    "corrupt": "bold red",
    "alive": "green",
    "dead": "bold red",
}


#: The colour of each state of a GPU lane (`analyzer.lanes`): generating, loading a model,
#: held for anything else, free while work it could take was queued (the scheduler's
#: fault: red), free with nothing to do.
LANE_STYLE: dict[str, str] = {
    "busy": "green",
    "loading": "yellow",
    "other": "cyan",
    "claimable": "red",
    "idle": "grey42",
}


def state_style(state: str | None) -> str:
    """The style of `state` (an unknown state: no style)."""
    return STATE_STYLE.get(state or "", "")


__all__ = [
    "LANE_STYLE",
    "MISSING",
    "STATE_STYLE",
    "fmt_age",
    "fmt_bytes",
    "fmt_instant",
    "fmt_model",
    "fmt_rate",
    "fmt_residency",
    "fmt_seconds",
    "fmt_share",
    "rate_and_eta",
    "safe_text",
    "state_style",
]
