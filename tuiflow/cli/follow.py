"""Following things live from the terminal: `tuiflow watch` and `tuiflow logs --follow`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from analyzer.fmt import fmt_rate, fmt_seconds, rate_and_eta, state_style
from spool import layout
from tuiflow.cli.exits import EXIT_FAILED, EXIT_OK
from tuiflow.cli.tail import read_from
from tuiflow.engine.client import Client
from tuiflow.engine.runstate import STATE_NAMES, TERMINAL, WF_TERMINAL

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
                desc = f"{wf_id} {s.get('name', '')} [{state_style(state)}]{state}[/]"
                if bar is None:
                    bar = progress.add_task(desc, total=total or 1, detail=detail)
                progress.update(bar, description=desc, completed=done, total=total or 1, detail=detail)
            if state in WF_TERMINAL and not counts.get("running"):
                return EXIT_OK if state == "completed" else EXIT_FAILED
            time.sleep(interval)


def follow_logs(client: Client, wf: str, task: str, directory: str, names: list[str], *, follow: bool) -> int:
    """Print the attempt's logs (`names`: keys of `LOG_STREAMS`); with `follow`, keep
    printing by byte offset until the task ends."""
    offsets = dict.fromkeys(names, 0)
    while True:
        for n in names:
            chunk = read_from(layout.attempt_file(directory, LOG_STREAMS[n]), offsets[n])
            if chunk.data:
                offsets[n] = chunk.offset
                target = sys.stdout if n == "stdout" else sys.stderr
                target.write(chunk.text)
                target.flush()
        if not follow:
            return EXIT_OK
        views = client.tasks(wf, prefix=task)
        mine = [v for v in views if v.name == task]
        if mine and mine[0].state in _DONE and os.path.isdir(directory):
            follow = False  # one last read above catches the tail
            continue
        time.sleep(0.25)
