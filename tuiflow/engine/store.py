"""Workflows on disk: definition, state and summary records, and finding them again.

    workflows/.new.<wf_id>.<token>/        a submit in progress (renamed to <wf_id> when whole)
    workflows/<wf_id>/definition.msgpack   CAS record, written once at submit (immutable)
    workflows/<wf_id>/state.msgpack        CAS record, the `RunState`; written by the
                                           coordinator only (and by submit, version 1)
    workflows/<wf_id>/summary.msgpack      small record rewritten with every state write:
                                           what listings read instead of full states
    workflows/<wf_id>/cancelled            marker: workers stop the workflow's tasks
    workflows/<wf_id>/kill/<idx>.<attempt> marker: stop this attempt (timeouts)
    workflows/<wf_id>/tasks/<task>/<n>/    attempt directories (`workers.wire`)
    workflows/<wf_id>/trace/spans.jsonl    the coordinator's spans

Workflow ids are 8 characters of Crockford base32, so a user can type a unique prefix.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from typing import Any

import msgpack

from spool import (
    CasRecord,
    CorruptRecordError,
    Home,
    SpoolError,
    StorageError,
    atomic_write,
    layout,
    perms,
    read_bytes,
)
from spool.atomic import process_token
from spool.fsops import listdir, place
from tuiflow.engine.expr import MissingValue
from tuiflow.engine.model import Definition
from tuiflow.engine.runstate import STATE_NAMES, WF_TERMINAL, RunState
from tuiflow.errors import NotFound, TuiflowError

ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ID_LENGTH = 8
#: seconds a workflow's record may stay listed but unreadable (an NFS client's negative
#: cache after the workflow directory was renamed into place)
RECORD_VISIBLE_WAIT = 5.0
SUMMARY_FORMAT = 1


def new_workflow_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def summary_bytes(run: RunState) -> bytes:
    """The summary record of a run state: what listings read instead of whole states."""
    return msgpack.packb(
        {
            "format": SUMMARY_FORMAT,
            "id": run.wf_id,
            "name": run.definition.name,
            "state": run.state,
            "counts": run.count_dict(),
            "total": len(run),
            "created_at": run.created_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "updated_at": time.time(),
            "source": run.definition.source,
            "prefixes": run.definition.prefixes,
        }
    )


def is_terminal(summary: dict[str, Any]) -> bool:
    """Whether a workflow summary says the workflow ended."""
    return summary.get("state") in WF_TERMINAL


class WorkflowStore:
    """Reads and writes workflow records under one home."""

    def __init__(self, home: Home):
        self.home = home
        self.root = home.workflows_dir
        self._definitions: dict[str, Definition] = {}

    # ------------------------------------------------------------------ paths
    def dir(self, wf_id: str) -> str:
        """The workflow's directory (it may not exist)."""
        return f"{self.root}/{wf_id}"

    def _record(self, wf_id: str, name: str) -> CasRecord:
        """The CAS record `name` (`layout.DEFINITION_FILE`, `layout.STATE_FILE`) of a workflow."""
        s = self.home.settings
        return CasRecord(
            f"{self.root}/{wf_id}/{name}",
            durability=s.durability,
            lock_stale_after=s.lock_stale_after,
        )

    def state_record(self, wf_id: str) -> CasRecord:
        """The CAS record of the workflow's run state."""
        return self._record(wf_id, layout.STATE_FILE)

    # ---------------------------------------------------------------- create
    def create(
        self,
        definition: Definition,
        *,
        now: float | None = None,
        owner: str | None = None,
        wf_id: str | None = None,
    ) -> str:
        """Store a new workflow (definition + pending state + summary); returns its id.

        The records are written in a staging directory (a dot-name: listings skip it) that
        is then renamed into place, so a workflow appears whole or not at all: a submitter
        that fails or dies half-way never leaves a workflow without a summary (which `ls`
        and the coordinator would never see) or without a state.
        """
        now = time.time() if now is None else now
        perms.makedirs(self.root)
        if owner is not None:
            definition.owner = owner
        wire = definition.to_wire()
        given = wf_id
        for _ in range(20 if given is None else 1):
            wf_id = given or new_workflow_id()
            staging = layout.staging_dir(self.root, wf_id, process_token())
            try:
                perms.mkdir(staging)
                self._write_new(staging, wf_id, definition, wire, now)
                # RACE: two submitters drawing one id: renaming onto an existing (non-empty)
                # workflow directory fails, and the loser draws again.
                place(staging, self.dir(wf_id))
            except OSError as e:
                shutil.rmtree(staging, ignore_errors=True)
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise StorageError.from_os("create workflow in", self.root, e) from e
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._definitions[wf_id] = definition
            return wf_id
        raise TuiflowError(f"workflow id {given} is taken" if given else "could not allocate a workflow id")

    def _write_new(self, directory: str, wf_id: str, definition: Definition, wire: Any, now: float) -> None:
        s = self.home.settings
        CasRecord(f"{directory}/{layout.DEFINITION_FILE}", durability=s.durability).write(wire, 0)
        run = RunState(definition, wf_id, now, load_ref=self.load_ref)
        CasRecord(f"{directory}/{layout.STATE_FILE}", durability=s.durability).write(run.to_wire(), 0)
        atomic_write(f"{directory}/{layout.SUMMARY_FILE}", summary_bytes(run), s.durability)

    # ------------------------------------------------------------------- read
    def definition(self, wf_id: str) -> Definition:
        """The workflow's definition (read once, then cached: it never changes). NotFound if none."""
        cached = self._definitions.get(wf_id)
        if cached is not None:
            return cached
        value, version = self._record(wf_id, layout.DEFINITION_FILE).read(wait_visible=RECORD_VISIBLE_WAIT)
        if version == 0:
            raise NotFound(f"workflow {wf_id} has no definition ({self.dir(wf_id)})")
        try:
            definition = Definition.from_wire(value)
        except (KeyError, TypeError, ValueError) as e:
            path = f"{self.dir(wf_id)}/{layout.DEFINITION_FILE}"
            raise CorruptRecordError(f"{path}: {e}", path=path) from None
        self._definitions[wf_id] = definition
        return definition

    def load_run(self, wf_id: str) -> tuple[RunState, int]:
        """(run state, record version) of the workflow. NotFound if none; CorruptRecordError if undecodable."""
        definition = self.definition(wf_id)
        record = self.state_record(wf_id)
        value, version = record.read(wait_visible=RECORD_VISIBLE_WAIT)
        if version == 0:
            raise NotFound(f"workflow {wf_id} has no state ({record.path})")
        try:
            return RunState.from_wire(definition, value, load_ref=self.load_ref), version
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptRecordError(f"{record.path}: {e}", path=record.path) from None

    def load_ref(self, rel: str) -> Any:
        """An output kept in a file (path relative to the home).

        Raises MissingValue (a condition reads it as false, a template fails its task before
        it starts) if the file is gone or unreadable: it never takes the coordinator down."""
        try:
            return json.loads(read_bytes(layout.resolve(self.home.root, rel)))
        except (OSError, ValueError, SpoolError) as e:
            raise MissingValue(f"the output stored in {rel} ({type(e).__name__}: {e})") from None

    def ids(self) -> list[str]:
        """Every workflow id of the home, sorted (staging directories excluded)."""
        try:
            return sorted(n for n in listdir(self.root) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def remove(self, wf_id: str) -> None:
        """Delete a workflow: one rename takes it out of sight whole (a reader never sees
        half of it), then its files are deleted. StorageError if the rename fails (nothing
        changed); files a failed deletion leaves behind are hidden and go with `remove_leftovers`.
        """
        gone = layout.removing_dir(self.root, wf_id, process_token())
        try:
            place(self.dir(wf_id), gone)
        except OSError as e:
            raise StorageError.from_os("remove", self.dir(wf_id), e) from e
        shutil.rmtree(gone, ignore_errors=True)

    def remove_leftovers(self, now: float, staging_older_than: float = 3600.0) -> None:
        """Delete what removals left behind, and staging directories of submitters that died
        (a submission takes seconds; one an hour old is dead)."""
        try:
            names = listdir(self.root)
        except FileNotFoundError:
            return
        for name in names:
            path = f"{self.root}/{name}"
            if name.startswith(layout.STAGING_PREFIX):
                try:
                    if now - os.lstat(path).st_mtime < staging_older_than:
                        continue
                except OSError:
                    continue
            elif not name.startswith(layout.REMOVING_PREFIX):
                continue
            shutil.rmtree(path, ignore_errors=True)

    def broken(self, wf_id: str) -> str | None:
        """Why the coordinator gave up on a workflow, if it did (its broken marker)."""
        try:
            return read_bytes(layout.broken_marker(self.home.root, wf_id), max_bytes=1 << 16).decode(
                "utf-8", "replace"
            )
        except (FileNotFoundError, NotADirectoryError):
            return None

    def summary(self, wf_id: str) -> dict[str, Any] | None:
        """The workflow's summary record; None if it has none. CorruptRecordError if undecodable."""
        path = f"{self.root}/{wf_id}/{layout.SUMMARY_FILE}"
        try:
            data = read_bytes(path, max_bytes=1 << 20)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            summary = msgpack.unpackb(data)
        except Exception:
            raise CorruptRecordError(f"{path} is corrupt", path=path) from None
        return summary if isinstance(summary, dict) else None

    def summaries(self) -> list[dict[str, Any]]:
        """Summaries of every workflow, newest first (one small read each)."""
        out = []
        for wf_id in self.ids():
            try:
                s = self.summary(wf_id)
            except CorruptRecordError as e:
                s = {"id": wf_id, "name": "?", "state": "corrupt", "error": str(e), "created_at": 0}
            if s is not None:
                out.append(s)
        out.sort(key=lambda s: s.get("created_at", 0), reverse=True)
        return out

    def resolve(self, prefix: str) -> str:
        """The workflow whose id starts with `prefix` (unique), else NotFound."""
        prefix = prefix.strip().lower()
        if not prefix:
            raise NotFound("give a workflow id (or a unique prefix of one)")
        ids = self.ids()
        if prefix in ids:
            return prefix
        matches = [i for i in ids if i.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"no workflow id starts with {prefix!r} in {self.home.root}")
        shown = ", ".join(matches[:8]) + (" ..." if len(matches) > 8 else "")
        raise NotFound(f"{prefix!r} matches {len(matches)} workflows ({shown}); type more of the id")

    # ------------------------------------------------------------------ write
    def write_summary(self, run: RunState, fence: Callable[[], None] | None = None) -> None:
        """Rewrite the summary of `run` (`fence`: checked right before the rename)."""
        atomic_write(
            f"{self.root}/{run.wf_id}/{layout.SUMMARY_FILE}",
            summary_bytes(run),
            self.home.settings.durability,
            fence,
        )

    def write_run(self, run: RunState, version: int, fence: Callable[[], None] | None = None) -> int:
        """CAS-write the state (expecting `version`), then the summary; returns the new version."""
        new = self.state_record(run.wf_id).write(run.to_wire(), version, fence=fence)
        self.write_summary(run, fence)
        return new


__all__ = ["STATE_NAMES", "WorkflowStore", "is_terminal", "new_workflow_id", "summary_bytes"]
