"""Workflows on disk: definition, state and summary records, and finding them again.

    workflows/<wf_id>/definition.msgpack   CAS record, written once at submit (immutable)
    workflows/<wf_id>/state.msgpack        CAS record, the `Run` state; written by the
                                           coordinator only (and by submit, version 1)
    workflows/<wf_id>/summary.msgpack      small record rewritten with every state write:
                                           what listings read instead of full states
    workflows/<wf_id>/cancelled            marker: workers stop the workflow's tasks
    workflows/<wf_id>/kill/<idx>.<attempt> marker: stop this attempt (timeouts)
    workflows/<wf_id>/tasks/<task>/<n>/    attempt directories (`workers.protocol`)
    workflows/<wf_id>/trace/spans.jsonl    the coordinator's spans

Workflow ids are 8 characters of Crockford base32, so a user can type a unique prefix.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

import msgpack

from spool import CasRecord, CorruptRecordError, Home, SpoolError, atomic_write, read_bytes
from workers import protocol as p

from .dag import STATE_NAMES, WF_TERMINAL, Run
from .errors import NotFound, TuiflowError
from .expr import MissingValue
from .model import Definition

ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ID_LENGTH = 8
SUMMARY_FORMAT = 1


def new_workflow_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


class WorkflowStore:
    """Reads and writes workflow records under one home."""

    def __init__(self, home: Home):
        self.home = home
        self.root = home.workflows_dir
        self._definitions: dict[str, Definition] = {}

    # ------------------------------------------------------------------ paths
    def dir(self, wf_id: str) -> str:
        return f"{self.root}/{wf_id}"

    def _record(self, wf_id: str, name: str) -> CasRecord:
        s = self.home.settings
        return CasRecord(
            f"{self.root}/{wf_id}/{name}.msgpack",
            durability=s.durability,
            lock_stale_after=s.lock_stale_after,
        )

    def state_record(self, wf_id: str) -> CasRecord:
        return self._record(wf_id, "state")

    # ---------------------------------------------------------------- create
    def create(self, definition: Definition, *, now: float | None = None, owner: str | None = None) -> str:
        """Store a new workflow (definition + pending state + summary); returns its id."""
        now = time.time() if now is None else now
        os.makedirs(self.root, exist_ok=True)
        for _ in range(20):
            wf_id = new_workflow_id()
            try:
                os.mkdir(self.dir(wf_id))  # RACE: two submitters drawing one id: mkdir picks one
                break
            except FileExistsError:
                continue
        else:
            raise TuiflowError("could not allocate a workflow id")
        if owner is not None:
            definition.owner = owner
        wire = definition.to_wire()
        self._record(wf_id, "definition").write(wire, 0)
        run = Run(definition, wf_id, now, load_ref=self.load_ref)
        self.state_record(wf_id).write(run.to_wire(), 0)
        self.write_summary(run)
        self._definitions[wf_id] = definition
        return wf_id

    # ------------------------------------------------------------------- read
    def definition(self, wf_id: str) -> Definition:
        cached = self._definitions.get(wf_id)
        if cached is not None:
            return cached
        value, version = self._record(wf_id, "definition").read()
        if version == 0:
            raise NotFound(f"workflow {wf_id} has no definition ({self.dir(wf_id)})")
        try:
            definition = Definition.from_wire(value)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptRecordError(
                f"{self.dir(wf_id)}/definition.msgpack: {e}", path=f"{self.dir(wf_id)}/definition.msgpack"
            ) from None
        self._definitions[wf_id] = definition
        return definition

    def load_run(self, wf_id: str) -> tuple[Run, int]:
        definition = self.definition(wf_id)
        record = self.state_record(wf_id)
        value, version = record.read()
        if version == 0:
            raise NotFound(f"workflow {wf_id} has no state ({record.path})")
        try:
            return Run.from_wire(definition, value, load_ref=self.load_ref), version
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptRecordError(f"{record.path}: {e}", path=record.path) from None

    def load_ref(self, rel: str) -> Any:
        """An output kept in a file (path relative to the home).

        Raises MissingValue (a condition reads it as false, a template fails its task before
        it starts) if the file is gone or unreadable: it never takes the coordinator down."""
        try:
            return json.loads(read_bytes(p.resolve(self.home.root, rel)))
        except (OSError, ValueError, SpoolError) as e:
            raise MissingValue(f"the output stored in {rel} ({type(e).__name__}: {e})") from None

    def ids(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def summary(self, wf_id: str) -> dict[str, Any] | None:
        try:
            data = read_bytes(f"{self.root}/{wf_id}/summary.msgpack", max_bytes=1 << 20)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            summary = msgpack.unpackb(data)
        except Exception:
            raise CorruptRecordError(
                f"{self.root}/{wf_id}/summary.msgpack is corrupt", path=f"{self.root}/{wf_id}/summary.msgpack"
            ) from None
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
    def write_summary(self, run: Run) -> None:
        summary = {
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
        atomic_write(
            f"{self.root}/{run.wf_id}/summary.msgpack", msgpack.packb(summary), self.home.settings.durability
        )

    def write_run(self, run: Run, version: int, fence: Any = None) -> int:
        """CAS-write the state (expecting `version`), then the summary; returns the new version."""
        new = self.state_record(run.wf_id).write(run.to_wire(), version, fence=fence)
        self.write_summary(run)
        return new

    def mark_cancelled(self, wf_id: str) -> None:
        atomic_write(p.cancel_marker(self.home.root, wf_id), b"cancelled\n")

    def clear_cancelled(self, wf_id: str) -> None:
        try:
            os.unlink(p.cancel_marker(self.home.root, wf_id))
        except FileNotFoundError:
            pass

    def mark_kill(self, wf_id: str, idx: int, attempt: int) -> None:
        path = p.kill_marker(self.home.root, wf_id, idx, attempt)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, b"kill\n")

    @staticmethod
    def is_terminal(summary: dict[str, Any]) -> bool:
        return summary.get("state") in WF_TERMINAL


__all__ = ["STATE_NAMES", "WorkflowStore", "new_workflow_id"]
