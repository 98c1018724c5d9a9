"""Following things live from the terminal: `tuiflow watch` and `tuiflow logs` (`--follow`)."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from analyzer.fmt import fmt_rate, fmt_seconds, rate_and_eta, safe_text, state_style
from spool import layout
from tuiflow.cli.exits import EXIT_FAILED, EXIT_OK
from tuiflow.cli.tail import read_from
from tuiflow.engine.client import Client
from tuiflow.engine.runstate import STATE_NAMES, TERMINAL, WF_TERMINAL
from tuiflow.errors import NotFound

_ORDER = ("completed", "running", "ready", "pending", "failed", "upstream_failed", "skipped", "cancelled")
#: the task states that are over, by name
_DONE = tuple(STATE_NAMES[c] for c in sorted(TERMINAL))
#: `tuiflow logs` streams and the attempt file each is in
LOG_STREAMS = {"stdout": layout.STDOUT_FILE, "stderr": layout.STDERR_FILE}


def follow(
    client: Client, wf_id: str, console: Console, *, interval: float = 0.5, json_lines: bool = False
) -> int:
    """Print live counts, rate and ETA until the workflow ends; exit code 0 if it completed."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    bar = None
    live = Live(progress, console=console, refresh_per_second=4)
    with live if not json_lines else contextlib.nullcontext():
        while True:
            s = client.store.summary(wf_id) or {}
            counts, total = s.get("counts", {}), s.get("total", 0)
            done = sum(counts.get(k, 0) for k in _DONE)
            now = time.time()
            rate, eta = rate_and_eta(done, total, s.get("started_at", 0), s.get("ended_at", 0), now)
            state = s.get("state", "?")
            if json_lines:
                sys.stdout.write(
                    json.dumps(
                        {
                            "id": wf_id,
                            "state": s.get("state"),
                            "counts": counts,
                            "total": total,
                            "done": done,
                            "rate": rate,
                            "eta_seconds": eta,
                            "at": now,
                        }
                    )
                    + "\n"
                )
                sys.stdout.flush()
            else:
                detail = " ".join(f"[{state_style(k)}]{counts[k]} {k}[/]" for k in _ORDER if counts.get(k))
                if rate:
                    detail += f"  {fmt_rate(rate)}"
                if eta is not None and state not in WF_TERMINAL:
                    detail += f"  ETA {fmt_seconds(eta)}"
                desc = f"{_markup(wf_id)} {_markup(s.get('name', ''))} {_markup(state, state_style(state))}"
                if bar is None:
                    bar = progress.add_task(desc, total=total or 1, detail=detail)
                progress.update(bar, description=desc, completed=done, total=total or 1, detail=detail)
            if state in WF_TERMINAL and not counts.get("running"):
                break
            time.sleep(interval)
    if not json_lines and not console.is_terminal:
        console.print()  # off a terminal the last progress line has no newline of its own
    return EXIT_OK if state == "completed" else EXIT_FAILED


def _markup(value: object, style: str = "") -> str:
    """User text (a workflow's name or state from its summary) inside a markup string:
    control characters made visible, brackets escaped."""
    text = escape(safe_text(value))
    return f"[{style}]{text}[/]" if style and text else text


# ------------------------------------------------------------------------- logs
#: states of a task whose current attempt has not started, and may yet
_WAITING = ("pending", "ready")


def check_ran(
    client: Client,
    wf: str,
    task: str,
    attempt: int | None,
    directory: str,
    names: list[str],
    *,
    waiting: bool = False,
) -> None:
    """NotFound, saying why, when the attempt in `directory` left none of the logs `names`
    (keys of `LOG_STREAMS`) because it has not run: the task is pending or ready (unless
    `waiting`: `--follow` waits for it to start), it never will (skipped, upstream_failed,
    cancelled before it started), or it ended without running (a failure before its
    command started). A running attempt is not an error: its output is on its way."""

    def written() -> bool:
        return any(os.path.exists(layout.attempt_file(directory, LOG_STREAMS[n])) for n in names)

    if written():
        return
    view = next((v for v in client.tasks(wf, prefix=task) if v.name == task), None)
    if view is None or written():  # it started between the two looks
        return
    latest = attempt is None or attempt == view.attempt
    if latest and (view.state == "running" or (waiting and view.state in _WAITING)):
        return
    wf_id = client.store.resolve(wf)
    what = f"task {task!r} of workflow {wf_id}"
    if not latest:
        raise NotFound(f"attempt {attempt} of {what} left no logs (the task is {view.state} now)")
    if view.state in _WAITING:
        earlier = f"; earlier attempts: --attempt 0..{view.attempt - 1}" if view.attempt else ""
        raise NotFound(
            f"{what} has not run yet (it is {view.state}); `tuiflow logs --follow` waits for it{earlier}"
        )
    if view.state in ("skipped", "upstream_failed", "cancelled") and not view.started_at:
        raise NotFound(f"{what} never ran (it is {view.state})")
    reason = (view.reason or "").strip().splitlines()
    because = f": {reason[0][:200]}" if reason else ""
    raise NotFound(f"attempt {view.attempt} of {what} left no logs (it is {view.state}{because})")


class _LogSink:
    """Where one log stream goes: byte for byte into a pipe or a file, but made safe
    (`safe_text`, decoded incrementally so a character split across reads survives)
    onto a terminal."""

    def __init__(self, target: TextIO):
        self.target = target
        self.raw = getattr(target, "buffer", None) if not _isatty(target) else None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes, *, final: bool = False) -> None:
        if self.raw is not None:
            self.target.flush()
            self.raw.write(data)
            self.raw.flush()
            return
        text = self.decoder.decode(data, final=final)
        if text:
            self.target.write(safe_text(text, multiline=True))
            self.target.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def follow_logs(client: Client, wf: str, task: str, directory: str, names: list[str], *, follow: bool) -> int:
    """Print the attempt's logs (`names`: keys of `LOG_STREAMS`: stdout to stdout, stderr
    to stderr); with `follow`, keep printing by byte offset until the task ends. On a
    terminal what is printed is made safe (`_LogSink`)."""
    offsets = dict.fromkeys(names, 0)
    sinks = {n: _LogSink(sys.stdout if n == "stdout" else sys.stderr) for n in names}
    try:
        while True:
            for n in names:
                chunk = read_from(
                    layout.attempt_file(directory, LOG_STREAMS[n]), offsets[n], home=client.home.root
                )
                if chunk.data:
                    offsets[n] = chunk.offset
                    sinks[n].write(chunk.data)
            if not follow:
                return EXIT_OK
            views = client.tasks(wf, prefix=task)
            mine = [v for v in views if v.name == task]
            if mine and mine[0].state in _DONE:
                if not mine[0].started_at:  # it ended without running (skipped, cancelled...)
                    # (its directory may exist all the same: the coordinator's record of it)
                    check_ran(client, wf, task, None, directory, names)  # NotFound, saying so
                if os.path.isdir(directory):
                    follow = False  # one last read above catches the tail
                    continue
            time.sleep(0.25)
    finally:
        for sink in sinks.values():
            sink.write(b"", final=True)  # a character cut short at the end: shown as U+FFFD
