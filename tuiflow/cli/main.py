"""The `tuiflow` command line.

Every command that shows something has ``--json``. Workflow ids may be abbreviated to any
unique prefix. The home is ``--home``, else ``$TUIFLOW_HOME``, else ``./.tuiflow``.
Errors end with a one-line message and an exit code, never a traceback: commands let the
`TuiflowError` family rise and the command group maps it in one place (`tuiflow.cli.exits`:
2 invalid input, 3 not found, 1 anything else). Figures are written by `analyzer.fmt`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from enum import StrEnum
from typing import Any

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from analyzer.fmt import fmt_age, fmt_seconds, safe_text, state_style
from spool import Home, LeaseHeldError, layout
from tuiflow import __version__
from tuiflow.cli.console import SafeConsole, columns, user_text
from tuiflow.cli.exits import EXIT_FAILED, EXIT_OK, BadOption, exit_code, user_errors
from tuiflow.errors import NotFound
from workers.models.merging import DEFAULT_MERGE_MAX
from workers.models.residency import GPU_MEMORY_BUDGET_ENV, MODEL_TTL_ENV, MODELS_PER_SLOT_ENV, parse_bytes
from workers.slurm import slurm_gpus
from workers.wire import BUNDLE_HOLD, BUNDLE_MAX


class _Commands(TyperGroup):
    """The command group: every command runs inside `user_errors`, so a `TuiflowError` from
    any of them ends as a one-line message and its exit code (`tuiflow.cli.exits`)."""

    def invoke(self, ctx: Any) -> Any:
        with user_errors():
            return super().invoke(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, TyperGroup):
            _person_metavars(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _person_metavars(self, ctx)
        super().format_help(ctx, formatter)


def _no_type(ctx: Any = None) -> None:
    """An argument's type column in `--help`: nothing (its name says it)."""
    return None


#: where an option's name alone would not say what to write
_METAVARS = {
    "home": "DIR",
    "speedup": "X",
    "duration": "SECONDS",
    "interval": "SECONDS",
    "idle-exit": "SECONDS",
}


def _person_metavars(command: Any, ctx: Any) -> None:
    """What `--help` shows after an option: a flag nothing (not ``<bool>``), another
    option a name a person reads (``--state STATE``, ``--queue QUEUE``), not its Python
    type (``<str>``, ``<list[str]>``); choices and ranges as typer shows them."""
    try:
        help_option = command.get_help_option(ctx)  # made once and kept, outside `params`
    except Exception:  # a cosmetic touch must never cost a command
        help_option = None
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        # typer carries click's classes inside itself: told apart by what they are; and a
        # change in typer must cost at worst the old help text, never a command
        kind = getattr(param, "param_type_name", None)
        if kind == "argument" and not getattr(getattr(param, "type_descriptor", None), "is_choice", False):
            if getattr(param, "metavar", 0) is None and getattr(param, "name", None):
                param.metavar = param.name.upper()  # WF, FILE: its name says what to write
            param.display_type_rich = _no_type
            continue
        if kind != "option" or getattr(param, "metavar", 0) is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
            continue
        desc = getattr(param, "type_descriptor", None)
        if not getattr(desc, "is_choice", False) and getattr(param, "opts", None):
            name = max(param.opts, key=len).lstrip("-")
            param.metavar = _METAVARS.get(name, name.upper())


app = typer.Typer(
    cls=_Commands,
    name="tuiflow",
    help="GPU workflow DAGs on a shared filesystem. Run with no command to open the dashboard.",
    epilog="Exit codes: 0 done, 1 failed (a workflow, doctor's checks, the filesystem), "
    "2 invalid input, 3 not found.",
    add_completion=False,
    rich_markup_mode="markdown",
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)
# Everything user-supplied is printed as `user_text` (a Text, never markup, control
# characters made visible); the consoles make sure of the latter for anything else.
out = SafeConsole()
err = SafeConsole(stderr=True)

HomeOpt = typer.Option(
    None, "--home", help="Home directory (default: $TUIFLOW_HOME or ./.tuiflow).", show_default=False
)
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


def _home(home: str | None, ctx: typer.Context | None = None, *, create: bool = False) -> Home:
    root = home or (ctx.obj.get("home") if ctx and ctx.obj else None)
    return Home.open(root, create=create)


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _set_values(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` options as a dict (BadOption for one without `=`)."""
    from tuiflow.engine.reading import parse_set_values

    try:
        return parse_set_values(pairs)
    except BadOption:
        raise
    except ValueError as e:  # the compiler's own ValueError, outside the family
        raise BadOption(str(e)) from None


def _load(file: str, set_: list[str], json_out: bool) -> Any:
    """The workflow in `file`; an invalid one is reported (as JSON problems with --json)."""
    from tuiflow.engine.compiler import load_workflow
    from tuiflow.engine.model import WorkflowValidationError

    values = _set_values(set_)
    try:
        return load_workflow(file, values)
    except WorkflowValidationError as e:
        if not json_out:
            raise
        _emit_json({"valid": False, "problems": e.to_json()})
        raise typer.Exit(exit_code(e)) from None


class _SafeFormatter(logging.Formatter):
    """Log lines (the daemons', run-local's) quote task names, errors and worker ids: their
    control characters are made visible too (`safe_text`), tracebacks keep their lines."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record), multiline=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tuiflow {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    home: str | None = HomeOpt,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    ctx.obj = {"home": home}
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if ctx.invoked_subcommand is None:
        from tuiflow.app import run_dashboard

        # like `tuiflow ls`: where there is no home, say so (it is not made behind the user's back)
        raise typer.Exit(run_dashboard(_home(home)))


# ------------------------------------------------------------------ workflows
@app.command()
def validate(
    file: str, json_out: bool = JsonOpt, set_: list[str] = typer.Option([], "--set", help="key=value param.")
) -> None:
    """Check a workflow file; print every problem (file, line, task, field)."""
    d = _load(file, set_, json_out)
    if json_out:
        _emit_json({"valid": True, "name": d.name, "tasks": len(d), "groups": d.prefixes})
    else:
        out.print(
            Text.assemble(("ok", "green"), " ", user_text(f"{file}: workflow {d.name!r}, {len(d)} tasks"))
        )


@app.command()
def schema() -> None:
    """Print the JSON Schema of workflow files (for editor completion and checks)."""
    from tuiflow.engine.fileformat import json_schema

    _emit_json(json_schema())


@app.command()
def submit(
    ctx: typer.Context,
    file: str,
    set_: list[str] = typer.Option([], "--set", help="Override a declared param: key=value (repeatable)."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Submit a workflow file; prints its id. A coordinator (or run-local) runs it."""
    from tuiflow.engine.client import Client

    h = _home(home, ctx, create=True)
    wf_id = Client(h).submit_file(file, _set_values(set_))
    if json_out:
        _emit_json({"id": wf_id})
    else:
        out.print(user_text(wf_id))


@app.command("ls")
def ls_(
    ctx: typer.Context,
    state: str | None = typer.Option(None, "--state", help="Only workflows in this state."),
    workers: bool = typer.Option(
        False, "--workers", help="List the workers instead (host or Slurm job and node, queues, running)."
    ),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """List workflows, newest first (with --workers: the workers)."""
    from tuiflow.engine.client import Client

    if workers:
        _ls_workers(Client(_home(home, ctx)), json_out)
        return
    items = Client(_home(home, ctx)).list(state)
    if json_out:
        _emit_json(items)
        return
    if not items:
        out.print(user_text("no workflows" + (f" in state {state}" if state else "")))
        return
    now = time.time()
    rows = []
    for s in items:
        counts, total = s.get("counts", {}), s.get("total", 0)
        done = sum(
            counts.get(k, 0) for k in ("completed", "failed", "skipped", "upstream_failed", "cancelled")
        )
        rows.append(
            [
                user_text(s.get("id", "")),
                user_text(s.get("name", "")),
                _state(s.get("state", "")),
                Text(f"{done}/{total}"),
                Text(fmt_age(now - s.get("created_at", now))),
            ]
        )
    out.print(columns(["ID", "NAME", "STATE", "DONE", "AGE"], rows), soft_wrap=True)


def _ls_workers(client: Any, json_out: bool) -> None:
    items = client.workers()
    if json_out:
        _emit_json(items)
        return
    if not items:
        out.print("no workers")
        return
    table = Table(box=None, header_style="bold")
    # ids and places are what a user greps for: never cut; the queue list may wrap
    for col in ("ID", "STATE", "WHERE"):
        table.add_column(col, no_wrap=True)
    table.add_column("QUEUES")
    table.add_column("RUN", justify="right")
    table.add_column("SEEN", no_wrap=True)
    for w in items:
        slurm = w.get("slurm")
        where = f"Slurm job {slurm.get('job')} on {slurm.get('node')}" if slurm else w.get("host", "")
        table.add_row(
            user_text(w["id"]),
            _state("dead" if w["dead"] else "alive"),
            user_text(str(where)),
            user_text(", ".join(w.get("queues", []))),
            str(len(w.get("running", []))),
            f"{fmt_age(w['heartbeat_age'])} ago" if w.get("heartbeat_age") is not None else "-",
        )
    out.print(table)


@app.command()
def status(ctx: typer.Context, wf: str, home: str | None = HomeOpt, json_out: bool = JsonOpt) -> None:
    """A workflow's state, counts and tasks."""
    from tuiflow.engine.client import Client

    st = Client(_home(home, ctx)).status(wf)
    if json_out:
        _emit_json(st)
        return
    head = Text.assemble(user_text(st["id"], "bold"), " ", user_text(st["name"]), ": ", _state(st["state"]))
    head.append(f"  {st['done']}/{st['total']} done")
    if st.get("wall_seconds"):
        head.append(f", {fmt_seconds(st['wall_seconds'])}")
    out.print(head)
    out.print(user_text("  " + ", ".join(f"{n} {k}" for k, n in st["counts"].items() if n)))
    if st.get("error"):
        out.print(Text.assemble("  ", ("error: ", "red"), user_text(st["error"])))
    coordinator = st.get("coordinator")
    if st["state"] in ("pending", "running") and not (coordinator and coordinator.get("holder")):
        out.print(
            "[yellow]no coordinator is running: start `tuiflow coordinator` or use `tuiflow run-local`[/]"
        )
    _task_table([_row(t) for t in st["tasks"]][:200])
    if len(st["tasks"]) > 200:
        out.print(user_text(f"... {len(st['tasks']) - 200} more (tuiflow tasks {st['id']} --prefix ...)"))


@app.command()
def tasks(
    ctx: typer.Context,
    wf: str,
    prefix: str | None = typer.Option(None, "--prefix", help="Only tasks whose name starts with this."),
    state: str | None = typer.Option(None, "--state", help="Only tasks in this state."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """A workflow's tasks (state, attempt, worker, queued for, ran for, exit/error)."""
    from tuiflow.engine.client import Client

    views = Client(_home(home, ctx)).tasks(wf, prefix=prefix, state=state)
    if json_out:
        _emit_json([v.to_json() for v in views])
        return
    _task_table([_row(v.to_json()) for v in views])


def _row(t: dict[str, Any]) -> list[Text | str]:
    reason = t.get("reason") or ""
    detail = f"exit {t['exit_code']}" if t.get("exit_code") not in (None, 0) else ""
    if reason:
        detail = (detail + " " if detail else "") + reason.splitlines()[0][:80]
    return [
        user_text(t["name"]),
        _state(t["state"]),
        str(t["attempt"]),
        user_text(t.get("worker") or ""),
        _duration(t.get("queued_for")),
        _duration(t.get("ran_for")),
        user_text(detail),
    ]


def _task_table(rows: list[list[Text | str]]) -> None:
    table = Table(box=None, header_style="bold")
    for col in ("TASK", "STATE", "ATT", "WORKER", "QUEUED", "RAN", "EXIT/ERROR"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    out.print(table)


@app.command()
def cancel(ctx: typer.Context, wf: str, home: str | None = HomeOpt, json_out: bool = JsonOpt) -> None:
    """Cancel a workflow: queued tasks are cancelled, running ones killed."""
    from tuiflow.engine.client import Client

    wf_id = Client(_home(home, ctx)).cancel(wf)
    if json_out:
        _emit_json({"id": wf_id, "requested": "cancel"})
    else:
        out.print(user_text(f"cancel requested for {wf_id}"))


@app.command()
def retry(
    ctx: typer.Context,
    wf: str,
    task: list[str] = typer.Argument(None, help="Tasks to run again (default: all failed)."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run failed, upstream_failed and cancelled tasks again."""
    from tuiflow.engine.client import Client

    wf_id, again = Client(_home(home, ctx)).retry(wf, task or None)
    if json_out:
        _emit_json({"id": wf_id, "requested": "retry", "tasks": again})
    else:
        out.print(user_text(f"retry requested for {wf_id}: {len(again)} task(s) will run again"))


@app.command()
def watch(
    ctx: typer.Context,
    wf: str,
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
    interval: float = typer.Option(0.5, help="Seconds between updates."),
) -> None:
    """Follow a workflow live: counts, rate and ETA, until it ends."""
    from tuiflow.cli.follow import follow
    from tuiflow.engine.client import Client

    client = Client(_home(home, ctx))
    wf_id = client.store.resolve(wf)
    raise typer.Exit(follow(client, wf_id, out, interval=interval, json_lines=json_out))


@app.command()
def logs(
    ctx: typer.Context,
    wf: str,
    task: str,
    attempt: int | None = typer.Option(None, "--attempt", help="Attempt number (default: the latest)."),
    stream: str = typer.Option("both", "--stream", help="stdout, stderr or both."),
    follow_: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing new output until the task ends."
    ),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Print a task attempt's stdout/stderr.

    Piped or redirected, the output is written byte for byte as the task wrote it; on a
    terminal, its control characters are shown (ESC as ␛), so that nothing in it can act on
    the terminal. A task that has not run yet (or never will) is an error, exit 3;
    `--follow` waits for a pending task to start."""
    from tuiflow.cli.follow import LOG_STREAMS, check_ran, follow_logs
    from tuiflow.cli.tail import read_from
    from tuiflow.engine.client import Client

    client = Client(_home(home, ctx))
    directory = client.attempt_dir(wf, task, attempt)
    if stream not in (*LOG_STREAMS, "both"):
        raise BadOption("--stream must be stdout, stderr or both")
    names = list(LOG_STREAMS) if stream == "both" else [stream]
    check_ran(client, wf, task, attempt, directory, names, waiting=follow_ and not json_out)
    if json_out:
        data = {}
        for n in names:
            chunk = read_from(layout.attempt_file(directory, LOG_STREAMS[n]), home=client.home.root)
            data[n] = chunk.text if chunk.exists else None
        _emit_json({"dir": directory, **data})
        return
    raise typer.Exit(follow_logs(client, wf, task, directory, names, follow=follow_))


class Sharing(StrEnum):
    private = "private"
    group = "group"


@app.command()
def init(
    ctx: typer.Context,
    home: str | None = HomeOpt,
    sharing: Sharing | None = typer.Option(
        None,
        help="private (the default): only you can read and write the home; group: your cluster "
        "group too (setgid directories, files 0660). See docs/deployment.md.",
    ),
    group: str | None = typer.Option(
        None, help="With --sharing group: the group that shares the home (default: your primary group)."
    ),
    max_log_bytes: int | None = typer.Option(
        None, min=1, help="Bytes of stdout (and of stderr) kept per attempt: the head and the tail."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Create a home with its settings (other commands create a private one on first use)."""
    from spool.home import Settings, resolve_root

    root = resolve_root(home or (ctx.obj.get("home") if ctx.obj else None))
    if group is not None and sharing is not Sharing.group:
        raise BadOption("--group needs --sharing group")
    if os.path.exists(f"{root}/{layout.LAYOUT_FILE}"):
        existing = Home.open(root, create=False).settings
        if sharing is not None and existing.sharing != sharing.value:
            raise BadOption(
                f"home {root} already exists with sharing={existing.sharing}; the setting is fixed "
                "when a home is created (make a new one, or see docs/deployment.md)"
            )
    else:
        settings = Settings(sharing=(sharing or Sharing.private).value)
        if max_log_bytes is not None:
            settings = dataclasses.replace(settings, max_log_bytes=max_log_bytes)
        if sharing is Sharing.group:
            _make_group_root(root, group)
        Home.open(root, create=True, settings=settings)
    opened = Home.open(root, create=False)
    if json_out:
        _emit_json({"home": opened.root, "settings": opened.settings.to_json()})
        return
    s = opened.settings
    out.print(
        user_text(
            f"home {opened.root}: sharing={s.sharing}, max_log_bytes={s.max_log_bytes}, "
            f"durability={s.durability}"
        )
    )


def _make_group_root(root: str, group: str | None) -> None:
    """The root of a group home: owned by `group`, mode 2770 (setgid, so everything made
    below belongs to the group whatever each user's primary group is)."""
    import grp

    try:
        gid = grp.getgrnam(group).gr_gid if group else os.getgid()
    except KeyError:
        raise BadOption(f"--group {group}: no such group") from None
    try:
        os.makedirs(root, exist_ok=True)
        os.chown(root, -1, gid)
        os.chmod(root, 0o2770)
    except OSError as e:
        from spool.errors import StorageError

        raise StorageError.from_os("prepare the group home", root, e) from None


@app.command()
def doctor(ctx: typer.Context, home: str | None = HomeOpt, json_out: bool = JsonOpt) -> None:
    """Check the home: lease holder and age, dead workers, stuck tasks, queues, poison messages."""
    from tuiflow.engine.client import Client
    from tuiflow.engine.health import residency

    report = Client(_home(home, ctx)).doctor()
    if json_out:
        _emit_json(report)
        raise typer.Exit(EXIT_OK if report["ok"] else EXIT_FAILED)
    # every value below may come from another user's records: names, ids, hosts, reasons
    out.print(
        user_text(
            f"home {report['home']} (layout v{report['layout_version']}, "
            f"{report['settings']['durability']} durability, watch={report['settings']['watch']}, "
            f"sharing={report['settings']['sharing']}, max_log_bytes={report['settings']['max_log_bytes']})"
        )
    )
    c = report["coordinator"]
    if c and c["holder"]:
        out.print(
            user_text(
                f"coordinator: {c['holder']} (pid {c['pid']} on {c['host']}, generation {c['generation']}, "
                f"renewed {fmt_age(c['age_seconds'])} ago)"
            )
        )
    else:
        out.print("coordinator: [yellow]none[/]")
    for note in report.get("notes", []):
        out.print(user_text(f"note: {note}"), highlight=False, soft_wrap=True)
    for w in report["workers"]:
        mark = _state("dead" if w["dead"] else "alive")
        out.print(
            Text.assemble(
                user_text(f"worker {w['id']}: "),
                mark,
                user_text(
                    f", queues {', '.join(w['queues'])}, {len(w['running'])} running, "
                    f"heartbeat {fmt_age(w['heartbeat_age'])} ago"
                    + (
                        f", Slurm job {w['slurm'].get('job')} on {w['slurm'].get('node')}"
                        if w["slurm"]
                        else ""
                    )
                ),
            )
        )
        held = residency(w)
        if held is not None:
            out.print(Text.assemble("  models ", user_text(held)), soft_wrap=True)
    for q in report["queues"]:
        out.print(
            user_text(
                f"queue {q['name']}: {q['ready']} ready, {q['delayed']} delayed, {q['claimed']} claimed, "
                f"{q['dead']} poison"
            )
        )
    for pz in report["poison"]:
        out.print(
            Text.assemble(
                "  ", ("poison", "red"), " ", user_text(f"{pz['queue']}/{pz['message']}: {pz['reason']}")
            )
        )
    for s in report["stuck"]:
        line = f"{s['workflow']} {s['task']} {s['state']} for {fmt_seconds(s['for_seconds'])}"
        out.print(Text.assemble("  ", ("stuck", "yellow"), " ", user_text(line)))
    if report["problems"]:
        out.print("[red]problems:[/]")
        for problem in report["problems"]:
            out.print(user_text(f"  - {problem}"), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)
    out.print("[green]no problems found[/]")


@app.command()
def purge(
    ctx: typer.Context,
    all_: bool = typer.Option(False, "--all", help="Also delete pending and running workflows."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Delete finished workflows (with --all: every workflow) and dead workers' records."""
    from tuiflow.engine.client import Client

    client = Client(_home(home, ctx))
    if not yes and not json_out:
        what = "ALL workflows, including pending and running ones" if all_ else "finished workflows"
        if not typer.confirm(f"delete {what} in {safe_text(client.home.root)}?"):
            raise typer.Exit(EXIT_FAILED)
    removed = client.purge(all_=all_)
    if json_out:
        _emit_json({"removed": removed})
    else:
        out.print(user_text(f"removed {len(removed)} workflow(s)"))


# --------------------------------------------------------------------- daemons
@app.command()
def coordinator(
    ctx: typer.Context,
    home: str | None = HomeOpt,
    max_running_workflows: int | None = typer.Option(
        None, help="Run at most this many workflows at once (FIFO)."
    ),
    break_lease: bool = typer.Option(
        False, "--break-lease", help="Take the lease even if another holder has it (operators; logged)."
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Wait for the lease instead of refusing while another coordinator is alive."
    ),
    bundle_max: int = typer.Option(
        BUNDLE_MAX,
        "--bundle-max",
        min=1,
        help="Most tasks of a fan-out queued as one message (1: every task alone).",
    ),
) -> None:
    """Run the coordinator daemon (one per home)."""
    from tuiflow.engine.coordinator import Coordinator, freeze_heap

    logging.getLogger().setLevel(logging.INFO)
    h = _home(home, ctx, create=True)
    coord = Coordinator(h, max_running_workflows=max_running_workflows, bundle_max=bundle_max)
    try:
        coord.acquire(wait=None if not wait else 1e9, break_lease=break_lease)
    except LeaseHeldError as e:
        e.add_note(
            "another coordinator is running: use --wait to queue behind it, --break-lease to take over"
        )
        raise
    from workers.worker import install_stop_handlers

    install_stop_handlers(lambda hard: coord.stop())
    freeze_heap()
    coord.run(acquire=False)


@app.command()
def worker(
    ctx: typer.Context,
    queue: list[str] = typer.Option(["default"], "--queue", "-q", help="Queue to serve (repeatable)."),
    slots: int = typer.Option(1, "--slots", help="Attempts to run at once."),
    gpus: str | None = typer.Option(
        None,
        "--gpus",
        help="GPU ids to hand out, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES); auto: the GPUs this "
        "process was given (CUDA_VISIBLE_DEVICES, or Slurm's SLURM_STEP_GPUS).",
    ),
    burst: bool = typer.Option(False, "--burst", help="Exit once the queues are empty."),
    idle_exit: float | None = typer.Option(
        None, "--idle-exit", min=0.0, help="Exit once the queues stayed empty this many seconds."
    ),
    worker_id: str | None = typer.Option(None, "--id", help="Worker id (default: host-pid-random)."),
    warm: list[str] = typer.Option(
        [],
        "--warm",
        help="Start this executor's process in every slot now, not at the first task (repeatable).",
    ),
    parent_pid: int | None = typer.Option(
        None, "--parent-pid", hidden=True, help="Stop when this process exits."
    ),
    bundle_hold: float = typer.Option(
        BUNDLE_HOLD,
        "--bundle-hold",
        min=0.0,
        help="Seconds a task of a claimed bundle may run before the bundle's unstarted tasks go back to the queue.",
    ),
    model_ttl: float | None = typer.Option(
        None,
        "--model-ttl",
        min=0.0,
        help="Seconds a model executor keeps an unused model loaded (default 600).",
    ),
    models_per_slot: int | None = typer.Option(
        None, "--models-per-slot", min=1, help="Models a slot's model host keeps loaded at once (default 2)."
    ),
    gpu_memory_budget: str | None = typer.Option(
        None,
        "--gpu-memory-budget",
        help="Memory a slot's model host keeps models in, e.g. 20GiB: past it, the least recently "
        "used models are dropped (default: no bound but --models-per-slot).",
    ),
    merge_max: int = typer.Option(
        DEFAULT_MERGE_MAX,
        "--merge-max",
        min=1,
        help="Most model tasks of one model and settings run as one merged call (1: each alone).",
    ),
    home: str | None = HomeOpt,
) -> None:
    """Run a worker daemon. SIGTERM drains; a second SIGTERM or SIGINT stops at once."""
    from workers.worker import Worker, install_stop_handlers

    logging.getLogger().setLevel(logging.INFO)
    h = _home(home, ctx, create=True)
    gpu_ids = _gpu_ids(gpus)
    _model_host_bounds(model_ttl, models_per_slot, gpu_memory_budget)
    w = Worker(
        h,
        queue,
        slots=slots,
        gpus=gpu_ids,
        burst=burst,
        idle_exit=idle_exit,
        worker_id=worker_id,
        parent_pid=parent_pid,
        warm=warm,
        bundle_hold=bundle_hold,
        merge_max=merge_max,
    )
    install_stop_handlers(lambda hard: w.stop(drain=not hard), term_is_hard=w.slurm is not None)
    w.run()


def _gpu_ids(gpus: str | None) -> list[int] | None:
    """The GPU ids of `worker --gpus` (None: the worker hands out none)."""
    if gpus == "auto":
        try:
            return slurm_gpus(os.environ)
        except ValueError as e:
            raise BadOption(f"--gpus auto: {e}") from None
    if gpus is None:
        return None
    try:
        return [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise BadOption(f"--gpus expects comma-separated integers or auto, not {gpus!r}") from None


def _model_host_bounds(ttl: float | None, per_slot: int | None, budget: str | None) -> None:
    """What a worker's model hosts may keep loaded, set in the environment they inherit
    (`workers.models.host` reads it; a task's environment never carries TUIFLOW_*)."""
    if ttl is not None:
        os.environ[MODEL_TTL_ENV] = repr(ttl)
    if per_slot is not None:
        os.environ[MODELS_PER_SLOT_ENV] = str(per_slot)
    if budget is not None:
        try:
            os.environ[GPU_MEMORY_BUDGET_ENV] = str(parse_bytes(budget))
        except ValueError as e:
            raise BadOption(f"--gpu-memory-budget: {e}") from None


@app.command()
def slurm(
    ctx: typer.Context,
    workers: int = typer.Option(1, "--workers", "-n", min=1, help="Worker jobs to submit (one job array)."),
    queue: list[str] = typer.Option(["default"], "--queue", "-q", help="Queue to serve (repeatable)."),
    gpus_per_node: int | None = typer.Option(None, "--gpus-per-node", min=0, help="GPUs per worker job."),
    cpus: int | None = typer.Option(None, "--cpus", min=1, help="CPUs per worker job (default 4)."),
    mem: str | None = typer.Option(None, "--mem", help="Memory per worker job, e.g. 32G."),
    time_limit: str | None = typer.Option(None, "--time", help="Time limit, e.g. 4:00:00 (default 1:00:00)."),
    partition: str | None = typer.Option(None, "--partition", "-p", help="Partition."),
    account: str | None = typer.Option(None, "--account", "-A", help="Account to charge."),
    sbatch: list[str] = typer.Option(
        [], "--sbatch", help="Another #SBATCH option, e.g. --sbatch=--qos=high (repeatable)."
    ),
    slots: int | None = typer.Option(None, "--slots", min=1, help="Slots per worker (default: one per GPU)."),
    idle_exit: float | None = typer.Option(
        None,
        "--idle-exit",
        min=0.0,
        help="A worker exits once its queues stayed empty this long (default 300 s).",
    ),
    signal_lead: int | None = typer.Option(
        None,
        "--signal-lead",
        min=1,
        help="Seconds before the time limit a worker starts draining (default 120).",
    ),
    requeue: bool | None = typer.Option(
        None, "--requeue/--no-requeue", help="Let Slurm requeue a preempted worker job."
    ),
    profile: str | None = typer.Option(
        None, "--profile", help="Site profile (YAML); default $TUIFLOW_SLURM_PROFILE, else <home>/slurm.yaml."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the batch script; submit nothing."),
    follow: bool = typer.Option(
        False,
        "--follow",
        help="Keep going: every --interval, submit workers while work waits that live and starting "
        "workers cannot take, up to --max-workers (workers leave by --idle-exit). Ctrl-C stops it.",
    ),
    max_workers: int = typer.Option(
        4, "--max-workers", min=1, help="With --follow: live + starting workers at most."
    ),
    interval: float = typer.Option(30.0, "--interval", min=0.1, help="With --follow: seconds between looks."),
    home: str | None = HomeOpt,
) -> None:
    """Submit workers as Slurm jobs (one job array); with --follow, as work waits. See docs/cluster.md."""
    from tuiflow.cli.slurm import batch_script, find_profile, load_profile, submit

    h = _home(home, ctx, create=not dry_run)
    settings = load_profile(find_profile(h.root, profile)).merged(
        gpus_per_node=gpus_per_node, cpus=cpus, mem=mem, time=time_limit, partition=partition,
        account=account, sbatch=sbatch, slots=slots, idle_exit=idle_exit, signal_lead=signal_lead,
        requeue=requeue,
    )  # fmt: skip
    if follow:
        _follow_slurm(h, queue, settings, max_workers=max_workers, interval=interval, dry_run=dry_run)
        return
    script = batch_script(h.root, queue, workers, settings)
    if dry_run:
        out.print(script, end="", markup=False, highlight=False, soft_wrap=True)
        return
    job = submit(h.root, script)
    out.print(f"submitted job {job}" + (f" (array 0-{workers - 1})" if workers > 1 else ""))


def _follow_slurm(h: Home, queues: list[str], settings: Any, **how: Any) -> None:
    import threading

    from tuiflow.cli.autoscale import Follower
    from tuiflow.engine.client import Client

    def say(text: str) -> None:
        out.print(user_text(f"{time.strftime('%H:%M:%S')} {text}"), highlight=False, soft_wrap=True)

    interval, dry_run = how.pop("interval"), how.pop("dry_run")
    follower = Follower(Client(h), queues, settings, say=say, dry_run=dry_run, **how)
    if dry_run:
        follower.step()  # one look: what it would submit now
        return
    say(
        f"following {', '.join(queues)}: at most {follower.max_workers} worker(s), a look every {interval:g} s"
    )
    try:
        follower.run(interval, threading.Event())
    except KeyboardInterrupt:
        say(f"stopped; the {len(follower.jobs)} worker job(s) it knows of go on")


@app.command()
def serve(
    ctx: typer.Context,
    home: str | None = HomeOpt,
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on. The default, 127.0.0.1, is reachable from this machine only and "
        "asks for no token; any other address requires one.",
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    token: str | None = typer.Option(
        None,
        "--token",
        help="The token the page asks for (at least 16 characters; default: $TUIFLOW_SERVE_TOKEN, else "
        "one is generated and printed). A command line is visible to every user of the machine (ps): "
        "prefer the variable.",
        show_default=False,
    ),
) -> None:
    """Serve the dashboard to a web browser (textual-serve), on 127.0.0.1 by default.

    Whoever can open the page can cancel and retry workflows. On a loopback address (the
    default) no token is asked for, and only pages of its own origin may drive it. Any other
    `--host` requires a token: `--token`, else `$TUIFLOW_SERVE_TOKEN`, else one generated and
    printed once. The page asks for it, or the URL carries it (`http://HOST:PORT/?token=...`);
    the browser then keeps a session cookie until the server stops. Scripts may send
    `Authorization: Bearer TOKEN`. It is plain HTTP: beyond a network you trust, use TLS (a
    proxy) or an SSH tunnel to a loopback serve."""
    from tuiflow.cli.serve import serve_dashboard

    h = _home(home, ctx, create=True)
    raise typer.Exit(serve_dashboard(h, host=host, port=port, token=token, console=out))


# ------------------------------------------------------------------------ traces
trace_app = typer.Typer(
    cls=_Commands,
    help="Traces of workflow runs: the raw span/asset/lineage files, analyses, history across runs.",
    no_args_is_help=True,
)
app.add_typer(trace_app, name="trace")


class TraceFile(StrEnum):
    spans = "spans"
    assets = "assets"
    lineage = "lineage"


class TraceView(StrEnum):
    rich = "rich"
    critical_path = "critical-path"
    e2e = "e2e"
    queuing = "queuing"
    lineage = "lineage"
    gpu = "gpu"
    json = "json"
    mermaid = "mermaid"
    perfetto = "perfetto"


def _workflow_dir(ctx: typer.Context, home: str | None, wf: str) -> str:
    from tuiflow.engine.store import WorkflowStore

    store = WorkflowStore(_home(home, ctx))
    return store.dir(store.resolve(wf))


@trace_app.command("fetch")
def trace_fetch(
    ctx: typer.Context,
    what: TraceFile = typer.Argument(..., help="spans, assets or lineage"),
    wf: str = typer.Argument(..., help="Workflow id (or a unique prefix)."),
    home: str | None = HomeOpt,
) -> None:
    """Every span (or asset row, or lineage row) of a workflow, as one JSONL stream.

    Spans are the SDK's own JSON, one per line, from every attempt and the coordinator;
    a line still being written (no newline yet) is left out."""
    from analyzer.reader import attempt_dirs, span_files

    wf_dir = _workflow_dir(ctx, home, wf)
    dirs = attempt_dirs(wf_dir)
    if what is TraceFile.spans:
        files = span_files(wf_dir, dirs)
    else:
        name = layout.ASSETS_FILE if what is TraceFile.assets else layout.LINEAGE_FILE
        files = [layout.attempt_log(d, name) for d in dirs]
    sink = sys.stdout.buffer
    try:
        for path in files:
            try:
                with open(path, "rb") as f:
                    for line in f:
                        if line.endswith(b"\n") and not line.isspace():
                            sink.write(line)
            except FileNotFoundError:
                continue  # an attempt that has not written this file (yet)
        sink.flush()
    except BrokenPipeError:  # `| head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@trace_app.command("analyze")
def trace_analyze(
    ctx: typer.Context,
    wf: str = typer.Argument(..., help="Workflow id (or a unique prefix)."),
    view: TraceView = typer.Option(
        TraceView.rich,
        "--format",
        "-f",
        help="rich (everything), critical-path, e2e, queuing, lineage; gpu (per worker and GPU: "
        "busy, loading, idle while work was queued, idle; GPU-seconds per task; tokens/s and "
        "images/s per model); json (the report for scripts); mermaid (the DAG, critical path "
        "marked); perfetto (Chrome trace-event JSON for ui.perfetto.dev: a track per worker, "
        "queued then running).",
    ),
    limit: int = typer.Option(
        40, "--limit", help="Most rows in the queuing, lineage and gpu views (0 = all)."
    ),
    home: str | None = HomeOpt,
) -> None:
    """Where a workflow's time went: critical path, queuing delays, compute/network, lineage, GPUs."""
    from analyzer import analyze_workflow, render
    from analyzer.reader import gc_paused

    wf_dir = _workflow_dir(ctx, home, wf)
    with gc_paused():  # millions of small objects: the collector would rescan them all
        analysis = analyze_workflow(wf_dir)
        result = render(analysis, view.value, limit=limit)
    if isinstance(result, str):
        sys.stdout.write(result + "\n")
    else:
        out.print(result)


@trace_app.command("at")
def trace_at(
    ctx: typer.Context,
    wf: str = typer.Argument(..., help="Workflow id (or a unique prefix)."),
    when: str = typer.Argument(
        ..., metavar="TIME", help="+12.5 or +1m30s after the start, 14:02:05 (UTC, as traces print), or ISO."
    ),
    limit: int = typer.Option(40, "--limit", help="Most rows (0 = all)."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """What every task was doing at one instant: running (where), queued (for how long),
    pending (on which parents), retrying, or ended (docs/analyzer.md)."""
    from analyzer.replay import parse_instant, replay
    from analyzer.replayview import render_replay
    from analyzer.trace import load_trace

    trace = load_trace(_workflow_dir(ctx, home, wf))
    if trace.start is None:
        raise NotFound(f"workflow {wf} has no spans yet: nothing to replay")
    try:
        at = parse_instant(when, trace.start)
    except ValueError as e:
        raise BadOption(f"TIME: {e}") from None
    snap = replay(trace, at)
    if json_out:
        _emit_json(snap.model_dump(mode="json"))
    else:
        out.print(render_replay(snap, limit=limit))


@trace_app.command("slack")
def trace_slack(
    ctx: typer.Context,
    wf: str = typer.Argument(..., help="Workflow id (or a unique prefix)."),
    near: float = typer.Option(
        0.1, "--near", min=0.0, max=1.0, help="Near-critical: slack below this fraction of the makespan."
    ),
    limit: int = typer.Option(40, "--limit", help="Most rows (0 = all)."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """How much later each task could have ended without delaying the workflow's end
    (a forward and a backward pass over the actual DAG and times; docs/analyzer.md)."""
    from analyzer.slack import slack
    from analyzer.slackview import render_slack
    from analyzer.trace import load_trace

    report = slack(load_trace(_workflow_dir(ctx, home, wf)), near=near)
    if json_out:
        _emit_json(report.model_dump(mode="json"))
    else:
        out.print(render_slack(report, limit=limit))


@trace_app.command("what-if")
def trace_what_if(
    ctx: typer.Context,
    wf: str = typer.Argument(..., help="Workflow id (or a unique prefix)."),
    task: list[str] = typer.Option([], "--task", "-t", help="A task to change (repeatable)."),
    prefix: str | None = typer.Option(None, "--prefix", help="Change every task whose name starts so."),
    executor: str | None = typer.Option(None, "--executor", help="Change every task of this executor."),
    speedup: float | None = typer.Option(
        None, "--speedup", min=0.001, help="Divide their durations by this."
    ),
    duration: float | None = typer.Option(None, "--duration", min=0.0, help="Give them this duration (s)."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """The makespan and critical path if some tasks ran faster, on the same DAG with the
    same observed waits (docs/analyzer.md)."""
    from analyzer.slack import select, what_if
    from analyzer.slackview import render_what_if
    from analyzer.trace import load_trace

    if not (task or prefix or executor):
        raise BadOption("say which tasks change: --task NAME, --prefix P or --executor E")
    if (speedup is None) == (duration is None):
        raise BadOption("say how they change: --speedup X or --duration SECONDS (one of them)")
    trace = load_trace(_workflow_dir(ctx, home, wf))
    chosen = select(trace, tasks=task, prefix=prefix, executor=executor)
    change = (lambda d: d / speedup) if speedup is not None else (lambda d: duration)
    result = what_if(trace, chosen, change)
    if json_out:
        _emit_json({**result.model_dump(mode="json"), "saved": result.saved})
    else:
        out.print(render_what_if(result))


@trace_app.command("history")
def trace_history(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Workflow name (the `name:` in its file)."),
    last: int = typer.Option(10, "--last", help="How many recent runs to list."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """A workflow across its runs: per-task success rate and p50/p95 durations, recent walls."""
    from analyzer import history, render_history
    from tuiflow.engine.store import WorkflowStore

    store = WorkflowStore(_home(home, ctx))
    summaries = store.summaries()
    runs = [store.dir(s["id"]) for s in summaries if s.get("name") == name]
    if not runs:
        names = sorted({str(s.get("name")) for s in summaries})
        known = f"; workflows here: {', '.join(names[:12])}" if names else "; this home has no workflows"
        raise NotFound(f"no runs of a workflow named {name!r} in {store.home.root}{known}")
    hist = history(runs, workflow_name=name, last=last)
    if json_out:
        _emit_json(hist.model_dump(mode="json"))
    else:
        out.print(render_history(hist, limit=0))


# -------------------------------------------------------------------- run-local
@app.command("run-local")
def run_local_cmd(
    ctx: typer.Context,
    file: str,
    workers: int | None = typer.Option(
        None, "--workers", "-w", help="Workers to start (default: CPU count)."
    ),
    slots: int = typer.Option(1, "--slots", help="Attempts each worker runs at once."),
    worker_mode: str = typer.Option(
        "process",
        "--worker-mode",
        help="process (a process per worker, forked from this one) or thread (all in this process).",
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a declared param: key=value (repeatable)."),
    home: str | None = HomeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run a workflow here and now: submit, coordinate and execute it in this process.

    Exit code 0 when it completed, 1 when it failed or was cancelled (Ctrl-C cancels), 2 when
    the workflow file is invalid.
    """
    from tuiflow.cli.runlocal import run_local

    definition = _load(file, set_, json_out)
    if workers is not None and workers < 1:
        raise BadOption("--workers must be at least 1")
    if slots < 1:
        raise BadOption("--slots must be at least 1")
    if worker_mode not in ("process", "thread"):
        raise BadOption("--worker-mode must be process or thread")
    h = _home(home, ctx, create=True)
    code, final = run_local(
        h,
        definition,
        workers=workers,
        json_out=json_out,
        console=err,
        summary=out,
        worker_mode=worker_mode,
        slots=slots,
    )
    if json_out:
        _emit_json(final)
    raise typer.Exit(code)


# ----------------------------------------------------------------------- utils
def _state(state: str) -> Text:
    return user_text(state, state_style(state))


def _duration(seconds: float | None) -> str:
    """A task's queued or ran time; blank where it does not apply (never queued or started)."""
    return "" if seconds is None else fmt_seconds(seconds)


def main() -> None:
    # Rich may write box characters; keep a predictable encoding when piped.
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    app()


if __name__ == "__main__":
    main()
