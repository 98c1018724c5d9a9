"""`tuiflow doctor`: what is wrong with a home, now.

Only live problems count, each a sentence that says what to do: the home not writable;
no coordinator while there is unfinished work, or one that stopped renewing, or one whose
process on this host is gone; an unreadable lease entry; a workflow whose records do not
decode, or that is broken; a heartbeat that does not decode; a dead worker that still
holds work, or claimed messages of a worker with no heartbeat at all; poison messages;
ready work no live worker serves; a symbolic link in the home's structure (nothing in a
home is a link: one could lead a worker's writes out of it); tasks waiting or running far
too long. What is fine but worth knowing (no coordinator, none needed yet) is a note.

Each worker's listing also says what its model hosts hold (`residency`), so a slow first
task ("the model was not loaded there") can be told from a slow model.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from analyzer.fmt import MISSING, fmt_age, fmt_residency
from spool import SpoolError, layout
from spool.fsops import listdir
from spool.liveness import SUFFIX as HB_SUFFIX
from spool.liveness import decode, read_raw
from tuiflow.engine.runstate import RUNNING, WF_TERMINAL
from tuiflow.errors import NotFound

if TYPE_CHECKING:
    from tuiflow.engine.client import Client

#: symbolic links reported at most (a home full of them is one problem, not thousands)
MAX_LINKS_SHOWN = 20


def examine(client: Client, *, stuck_after: float = 600.0) -> dict[str, Any]:
    """The home's health as JSON-able data: `problems` (empty when all is well), `notes`,
    and what was looked at (coordinator, workers, queues, poison, stuck tasks)."""
    home = client.home
    problems: list[str] = []
    notes: list[str] = []
    try:
        home.check_writable()
        writable = True
    except SpoolError as e:
        writable = False
        problems.append(str(e))
    queues = client.queues()
    unfinished, stuck, holding = _workflows(client, problems, stuck_after)
    claims: dict[str, int] = {}
    for q in queues:
        for worker, names in home.queue(q["name"]).claimed().items():
            if names:
                holding.add(worker)
                claims[worker] = claims.get(worker, 0) + len(names)
    pending = unfinished or any(q["ready"] or q["delayed"] or q["claimed"] for q in queues)
    coordinator = client.coordinator_info()
    _coordinator(home, coordinator, pending, problems, notes)
    workers = client.workers()
    _workers(home, workers, holding, claims, problems)
    poison = _queues(home, queues, workers, problems)
    _links(home.root, problems)
    if stuck:
        problems.append(f"{len(stuck)} task(s) waiting or running for more than {stuck_after:g} s")
    return {
        "home": home.root,
        "layout_version": home.layout.get("version"),
        "writable": writable,
        "settings": home.settings.to_json(),
        "coordinator": coordinator,
        "workers": workers,
        "queues": queues,
        "poison": poison,
        "stuck": stuck,
        "problems": problems,
        "notes": notes,
        "ok": not problems,
    }


def residency(worker: dict[str, Any]) -> str | None:
    """What each slot's model host of a worker holds, as doctor lists it (``0: tiny-llama,
    tiny-sd · 1: -``, most recently used first; see `analyzer.fmt.fmt_residency`); None for
    a worker without model hosts. Heartbeats are other processes' records: print the
    result as user text."""
    text = fmt_residency(worker.get("models"))
    return None if text == MISSING else text


def _coordinator(
    home: Any, c: dict[str, Any] | None, pending: bool, problems: list[str], notes: list[str]
) -> None:
    quoted = _quoted(home.root)
    if c is not None and not c["readable"]:
        problems.append(
            f"the coordinator lease's head entry is unreadable ({c['holder']}): a coordinator takes "
            f"it over after lease_ttl, or at once with `tuiflow coordinator --break-lease --home {quoted}`"
        )
    elif c is None or not c["holder"]:
        if pending:
            problems.append(
                "no coordinator holds the lease, and there is unfinished work: start "
                f"`tuiflow coordinator --home {quoted}` (or use `tuiflow run-local`)"
            )
        else:
            notes.append("no coordinator is running; none is needed until something is submitted")
    elif c["gone_here"]:
        problems.append(
            f"coordinator {c['holder']} (pid {c['pid']} on this host) has exited without releasing "
            f"the lease: start `tuiflow coordinator --home {quoted}` (it takes over at once)"
        )
    elif c["age_seconds"] is not None and c["age_seconds"] > 2 * home.settings.lease_ttl:
        problems.append(
            f"coordinator {c['holder']} has not renewed its lease for {fmt_age(c['age_seconds'])}"
        )


def _workflows(
    client: Client, problems: list[str], stuck_after: float
) -> tuple[bool, list[dict[str, Any]], set[str]]:
    """Whether any workflow is unfinished, its tasks stuck for `stuck_after` seconds, and
    the workers its running attempts are on; every workflow's records must decode."""
    from tuiflow.engine.client import task_views

    store = client.store
    unfinished = False
    stuck: list[dict[str, Any]] = []
    running_on: set[str] = set()
    now = time.time()
    for s in store.summaries():
        if s.get("state") == "corrupt":
            problems.append(s.get("error", "corrupt workflow record"))
            continue
        broken = store.broken(s["id"])
        if broken is not None:
            problems.append(f"workflow {s['id']} is broken ({broken}): `tuiflow purge` removes it")
            continue
        try:
            run, _ = store.load_run(s["id"])
        except (SpoolError, NotFound) as e:
            problems.append(f"workflow {s['id']}: {e}")
            continue
        if s.get("state") in WF_TERMINAL:
            continue
        unfinished = True
        running_on.update(w for i, w in run.worker.items() if run.st[i] == RUNNING)
        for v in task_views(run, now):
            waited = v.queued_for if v.state == "ready" else v.ran_for if v.state == "running" else None
            if not waited or waited <= stuck_after:
                continue
            timeout = run.definition.tasks[run.definition.index[v.name]].timeout
            if v.state == "ready" or timeout is None or waited > timeout:
                stuck.append({"workflow": run.wf_id, "task": v.name, "state": v.state, "for_seconds": waited})
    return unfinished, stuck, running_on


def _workers(
    home: Any, workers: list[dict[str, Any]], holding: set[str], claims: dict[str, int], problems: list[str]
) -> None:
    for w in workers:
        if w["dead"] and w["id"] in holding:
            problems.append(
                f"worker {w['id']} on {w['host']} is dead (last heartbeat {fmt_age(w['heartbeat_age'])} ago) "
                "and still holds work: the coordinator gives it back once it notices"
            )
    known = {w["id"] for w in workers}
    try:
        names = listdir(home.workers_dir)
    except FileNotFoundError:
        names = []
    for name in names:
        if name.startswith(".") or not name.endswith((HB_SUFFIX, layout.DEAD_SUFFIX)):
            continue
        path = f"{home.workers_dir}/{name}"
        try:
            decode(read_raw(path), path)
        except FileNotFoundError:
            continue
        except (OSError, SpoolError) as e:
            problems.append(f"heartbeat record {path} is unreadable ({e}): remove it if its worker is gone")
            known.add(name.rsplit(".", 1)[0])
    for worker, n in sorted(claims.items()):
        if worker not in known:
            problems.append(
                f"worker {worker} holds {n} claimed message(s) but has no heartbeat record: the "
                "coordinator gives them back after dead_after (start one if none runs)"
            )


def _queues(
    home: Any, queues: list[dict[str, Any]], workers: list[dict[str, Any]], problems: list[str]
) -> list:
    poison = []
    for q in queues:
        if q["dead"]:
            for dm in home.queue(q["name"]).dead():
                poison.append({"queue": q["name"], "message": dm.name, "reason": dm.reason})
            problems.append(f"queue {q['name']} has {q['dead']} poison message(s) in dead/")
    serving = {name for w in workers if not w["dead"] for name in w["queues"]}
    for q in queues:
        if q["ready"] and q["name"] not in serving:
            problems.append(
                f"queue {q['name']} has {q['ready']} ready message(s) and no live worker serves it"
            )
    return poison


def _links(root: str, problems: list[str]) -> None:
    """Symbolic links in the home's own structure (it never holds one; a worker following
    one could write outside it): everything but the attempts below each workflow's
    ``tasks``, which workers open without following links anyway. Read from directory
    entries alone (no stat per file: on NFS each would cost a round trip)."""
    found: list[str] = []
    pending = [root]
    while pending and len(found) <= MAX_LINKS_SHOWN:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if entry.is_symlink():
                found.append(entry.path)
            elif entry.is_dir(follow_symlinks=False) and not (
                entry.name == layout.TASKS_DIR
                and os.path.dirname(directory) == f"{root}/{layout.WORKFLOWS_DIR}"
            ):
                pending.append(entry.path)
    if found:
        shown = ", ".join(sorted(found)[:MAX_LINKS_SHOWN])
        more = " ..." if len(found) > MAX_LINKS_SHOWN else ""
        problems.append(
            f"{len(found)}{'+' if more else ''} symbolic link(s) in the home, which holds none of its "
            f"own (remove them; a worker refuses to follow them): {shown}{more}"
        )


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(path)
