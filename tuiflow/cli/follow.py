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

from tuiflow.engine.client import Client
from tuiflow.engine.runstate import WF_TERMINAL

_ORDER = ("completed", "running", "ready", "pending", "failed", "upstream_failed", "skipped", "cancelled")


def rate_and_eta(done: int, total: int, started_at: float, now: float) -> tuple[float | None, float | None]:
    """Tasks/s since the workflow started, and seconds left at that rate."""
    if not started_at or done <= 0 or now <= started_at:
        return None, None
    rate = done / (now - started_at)
    return rate, (total - done) / rate if rate > 0 else None


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
            done = sum(
                counts.get(k, 0) for k in ("completed", "failed", "upstream_failed", "skipped", "cancelled")
            )
            now = time.time()
            rate, eta = rate_and_eta(done, total, s.get("started_at", 0), s.get("ended_at") or now)
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
                detail = " ".join(f"{counts[k]} {k}" for k in _ORDER if counts.get(k))
                if rate:
                    detail += f"  {rate:.1f} tasks/s"
                if eta and s.get("state") not in WF_TERMINAL:
                    detail += f"  ETA {eta:.0f}s"
                desc = f"{wf_id} {s.get('name', '')} [{s.get('state', '?')}]"
                if bar is None:
                    bar = progress.add_task(desc, total=total or 1, detail=detail)
                progress.update(bar, description=desc, completed=done, total=total or 1, detail=detail)
            if s.get("state") in WF_TERMINAL and not counts.get("running"):
                return 0 if s.get("state") == "completed" else 1
            time.sleep(interval)


def follow_logs(client: Client, wf: str, task: str, directory: str, names: list[str], *, follow: bool) -> int:
    """Print the attempt's logs; with `follow`, keep printing by byte offset until it ends."""
    offsets = dict.fromkeys(names, 0)
    while True:
        for n in names:
            path = f"{directory}/{n}.log"
            try:
                with open(path, "rb") as f:
                    f.seek(offsets[n])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            if chunk:
                offsets[n] += len(chunk)
                target = sys.stdout if n == "stdout" else sys.stderr
                target.write(chunk.decode("utf-8", errors="replace"))
                target.flush()
        if not follow:
            return 0
        views = client.tasks(wf, prefix=task)
        mine = [v for v in views if v.name == task]
        if mine and mine[0].state not in ("pending", "ready", "running") and os.path.isdir(directory):
            follow = False  # one last read above catches the tail
            continue
        time.sleep(0.25)
