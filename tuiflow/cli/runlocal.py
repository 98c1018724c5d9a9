"""`tuiflow run-local`: submit a workflow, run it to the end here (`tuiflow.engine.local`),
and show its progress: one bar overall and one per prefix group, a line per task that
ends, and a summary table (or, with --json, the final status).

Ctrl-C (SIGINT) and SIGTERM (a scheduler's or `kill`'s stop) both cancel the workflow,
wait for it to end (30 s at most; a second signal stops waiting), and print the summary.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from analyzer.fmt import fmt_seconds, safe_text, state_style
from spool import Home, layout
from tuiflow.cli.console import user_text
from tuiflow.cli.exits import EXIT_FAILED, EXIT_OK
from tuiflow.engine.client import task_views
from tuiflow.engine.local import LocalRun
from tuiflow.engine.model import Definition
from tuiflow.engine.runstate import (
    FAILED,
    READY,
    RUNNING,
    SKIPPED,
    STATE_NAMES,
    TERMINAL,
    UPSTREAM_FAILED,
    RunState,
)


# -------------------------------------------------------------------- display
class _Bars:
    """Rich progress: overall, plus one bar per prefix group when there are at most 8."""

    def __init__(self, definition: Definition):
        self.progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            expand=True,
        )
        self.total = self.progress.add_task("overall", total=len(definition), detail="")
        self.groups: dict[str, Any] = {}
        prefixes = definition.prefixes
        if 1 < len(prefixes) <= 8 or (
            len(prefixes) == 1 and any("/" not in t.name for t in definition.tasks)
        ):
            for prefix in prefixes:
                n = sum(1 for t in definition.tasks if t.name.startswith(prefix + "/"))
                # the description is markup to Rich's TextColumn: the prefix is the user's text
                label = f"  {escape(safe_text(prefix))}/"
                self.groups[prefix] = self.progress.add_task(label, total=n, detail="")

    def update(self, run: RunState) -> None:
        done = sum(run.counts[c] for c in TERMINAL)
        self.progress.update(self.total, completed=done, detail=_detail(run.counts))
        if self.groups:
            per: dict[str, list[int]] = {g: [0] * len(STATE_NAMES) for g in self.groups}
            for t, code in zip(run.definition.tasks, run.st, strict=True):
                g = t.name.split("/", 1)[0] if "/" in t.name else None
                if g in per:
                    per[g][code] += 1
            for g, counts in per.items():
                self.progress.update(
                    self.groups[g], completed=sum(counts[c] for c in TERMINAL), detail=_detail(counts)
                )


def _detail(counts: list[int]) -> str:
    parts = []
    for code, label in (
        (RUNNING, "running"),
        (READY, "queued"),
        (FAILED, "failed"),
        (UPSTREAM_FAILED, "upstream"),
        (SKIPPED, "skipped"),
    ):
        if counts[code]:
            parts.append(f"[{state_style(STATE_NAMES[code])}]{counts[code]} {label}[/]")
    return " ".join(parts)


def summary_table(run: RunState, wall: float, home: Home) -> Table:
    """The table printed when a run ends: counts, wall time, the slowest and the failed
    tasks, where the files are, and how to see the trace (a command to paste: its home
    is shell-quoted)."""
    title = user_text(f"workflow {run.wf_id} ({run.definition.name}): ")
    title.append(run.state, style=state_style(run.state))
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    counts = ", ".join(f"{n} {s}" for s, n in run.count_dict().items() if n)
    table.add_row("tasks", f"{len(run)} ({counts})")
    table.add_row("wall time", fmt_seconds(wall))
    views = [v for v in task_views(run, time.time()) if v.ran_for is not None]
    views.sort(key=lambda v: v.ran_for or 0, reverse=True)
    if views:
        table.add_row(
            "slowest",
            Text("\n".join(f"{fmt_seconds(v.ran_for):>8}  {safe_text(v.name)}" for v in views[:5])),
        )
    failed = [
        (t.name, run.reason.get(i, "")) for i, t in enumerate(run.definition.tasks) if run.st[i] == FAILED
    ]
    if failed:
        table.add_row(
            Text("failed", style=state_style("failed")),
            Text("\n".join(safe_text(f"{n}: {r.splitlines()[0][:120] if r else ''}") for n, r in failed[:8])),
        )
    tasks_dir = layout.tasks_dir(layout.workflow_dir(home.root, run.wf_id))
    table.add_row("files", user_text(f"{tasks_dir}/<task>/<attempt>/  (logs, outputs, spans)"))
    table.add_row("traces", user_text(f"tuiflow trace analyze {run.wf_id} --home {shlex.quote(home.root)}"))
    return table


def run_local(
    home: Home,
    definition: Definition,
    *,
    workers: int | None = None,
    json_out: bool = False,
    console: Console | None = None,
    summary: Console | None = None,
    worker_mode: str = "process",
    slots: int = 1,
) -> tuple[int, dict[str, Any]]:
    """Run `definition` to the end; returns (exit code, final status). What happens on the
    way (the bars, each task's line) goes to `console` (stderr); the summary table, the
    result, to `summary` (stdout), so that `> file` keeps the result and not the bars."""
    console = console or Console(stderr=True)
    summary = summary or Console()
    session = LocalRun(home, definition, workers=workers, worker_mode=worker_mode, slots=slots)
    wf_id = session.start()
    if not json_out:
        console.print(
            Text.assemble(
                ("tuiflow run-local", "bold"),
                " workflow ",
                user_text(wf_id, "cyan"),
                user_text(
                    f" ({definition.name}, {len(definition)} tasks) with {session.n_workers} worker(s) "
                    f"in {home.root}"
                ),
            )
        )
        if session.external_coordinator:
            console.print(
                Text.assemble(
                    ("using the running coordinator", "yellow"),
                    user_text(f" ({session.external_coordinator})"),
                )
            )
    bars = _Bars(definition)

    def tick() -> None:
        # the lines first: a task's line never comes after the bars have said it is done
        for text, state in session.drain_lines():
            if not json_out:
                live.console.print(user_text(text, state_style(state)), highlight=False)
        run = session.snapshot()
        if run is not None:
            bars.update(run)

    live = Live(Group(bars.progress), console=console, transient=False, refresh_per_second=10)
    received: list[str] = []
    try:
        with _terminate_interrupts(received), live if not json_out else contextlib.nullcontext():
            session.wait(on_tick=tick)
    except KeyboardInterrupt:
        session.interrupted = True
        by = received[0] if received else "interrupted"
        if not json_out and not console.is_terminal:
            console.print()  # off a terminal, the last progress line has no newline yet
        console.print(f"[yellow]{by}: cancelling the workflow[/]")
        session.cancel()
        deadline = time.monotonic() + 30
        with contextlib.suppress(KeyboardInterrupt), _terminate_interrupts(received):
            while not session.finished() and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        session.stop()
    if not json_out and not console.is_terminal:
        console.print()
    status = session.client.status(wf_id)
    run = session.client.run(wf_id)
    wall = (run.ended_at or time.time()) - (run.started_at or run.created_at)
    if not json_out:
        summary.print(summary_table(run, wall, home))
    code = EXIT_OK if run.state == "completed" else EXIT_FAILED
    return code, status


@contextlib.contextmanager
def _terminate_interrupts(received: list[str]) -> Iterator[None]:
    """While inside, SIGTERM interrupts like Ctrl-C does (a KeyboardInterrupt in the main
    thread), so that both take the one path that cancels the workflow and prints the
    summary; `received` is told which signal it was. Python raises KeyboardInterrupt from
    its own SIGINT handler the same way. Outside the main thread (where no handler can be
    installed) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        received.append("terminated (SIGTERM)")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["run_local", "summary_table"]
