"""The home directory: the one root every tuiflow process shares.

Layout (version 1)::

    <home>/layout.json          {"version": 1, "created_at": ..., "settings": {...}}
    <home>/coordinator/lease/   the lease's head entry (`spool.lease`)
    <home>/queues/<queue>/      task queues (`spool.queue`)
    <home>/completions/         worker -> coordinator events (a queue with one consumer)
    <home>/control/             client -> coordinator requests (a queue with one consumer)
    <home>/workers/             heartbeat records (`spool.liveness`)
    <home>/workflows/<wf_id>/   definitions, CAS state records, attempt directories

The root is chosen by ``--home``, else ``$TUIFLOW_HOME``, else ``./.tuiflow``.
`layout.json` is created put-if-absent, so two processes creating a home at once agree
on one file. A home written by a newer tuiflow (higher layout version) is refused rather
than misread. Its ``settings`` are shared by every participant (they must agree on
timeouts); environment variables ``TUIFLOW_DURABILITY`` and ``TUIFLOW_WATCH`` override
the two per-process ones.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import secrets
from typing import Any

from . import perms
from .atomic import Durability, create_exclusive, read_bytes
from .errors import LayoutError, StorageError, what_to_do
from .fsops import listdir
from .layout import (
    COMPLETIONS_DIR,
    CONTROL_DIR,
    COORDINATOR_DIR,
    HOME_SUBDIRS,
    LAYOUT_FILE,
    LEASE_DIR,
    QUEUES_DIR,
    WORKERS_DIR,
    WORKFLOWS_DIR,
)
from .lease import Lease
from .names import check_component
from .placement import spread_subdirectories
from .queue import SpoolQueue

LAYOUT_VERSION = 1
DEFAULT_HOME = ".tuiflow"
WATCH_MODES = ("auto", "events", "poll")
SHARING_MODES = ("private", "group")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Knobs shared by every process using a home. Times are in seconds."""

    durability: Durability = Durability.PROCESS
    #: how waiters learn of changes: "auto" (events unless the mount is NFS/FUSE/...), "events", "poll"
    watch: str = "auto"
    #: interval of the polling fallback
    poll_interval: float = 0.25
    #: workers rewrite their heartbeat this often
    heartbeat_interval: float = 2.0
    #: a worker whose heartbeat did not change for this long (observer's clock) is dead
    dead_after: float = 30.0
    #: a coordinator lease not renewed for this long may be taken over
    lease_ttl: float = 20.0
    #: a CAS lock held by a process on another host, unchanged this long, may be broken
    lock_stale_after: float = 30.0
    #: largest message a queue accepts, in bytes
    max_message_bytes: int = 8 << 20
    #: ready-directory shards per queue
    shards: int = 16
    #: most bytes of stdout (and as many of stderr) kept per attempt: the head and the tail
    max_log_bytes: int = 64 << 20
    #: who may read and write the home's files: "private" (the user alone: files 0600,
    #: directories 0700) or "group" (the user's group too: 0660 / 2770, setgid directories
    #: so new files belong to the home's group); never whatever umask the user has
    sharing: str = "private"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["durability"] = str(self.durability)
        return data

    @classmethod
    def from_json(cls, data: Any, source: str) -> Settings:
        if not isinstance(data, dict):
            raise LayoutError(f"{source}: 'settings' must be an object", path=source)
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise LayoutError(
                    f"{source}: unknown setting {key!r} (known: {', '.join(known)})", path=source
                )
            values[key] = _coerce_setting(key, value, source)
        return cls(**values)

    def with_env(self, environ: dict[str, str] | os._Environ[str] = os.environ) -> Settings:
        changes: dict[str, Any] = {}
        if value := environ.get("TUIFLOW_DURABILITY"):
            changes["durability"] = _coerce_setting("durability", value, "$TUIFLOW_DURABILITY")
        if value := environ.get("TUIFLOW_WATCH"):
            changes["watch"] = _coerce_setting("watch", value, "$TUIFLOW_WATCH")
        return dataclasses.replace(self, **changes) if changes else self


def _coerce_setting(key: str, value: Any, source: str) -> Any:
    try:
        if key == "durability":
            return Durability.parse(value)
        if key == "watch":
            if value not in WATCH_MODES:
                raise ValueError(f"must be one of {', '.join(WATCH_MODES)}")
            return value
        if key == "sharing":
            if value not in SHARING_MODES:
                raise ValueError(f"must be one of {', '.join(SHARING_MODES)}")
            return value
        if key in ("max_message_bytes", "shards", "max_log_bytes"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("must be a positive integer")
            if key == "shards" and value > 256:
                raise ValueError("must be at most 256")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError("must be a positive number of seconds")
        return float(value)
    except ValueError as e:
        raise LayoutError(f"{source}: setting {key!r}={value!r}: {e}", path=source) from None


def resolve_root(home: str | os.PathLike[str] | None = None) -> str:
    """The home root: `home` if given, else ``$TUIFLOW_HOME``, else ``./.tuiflow``."""
    if home is not None and os.fspath(home):
        return os.path.abspath(os.fspath(home))
    return os.path.abspath(os.environ.get("TUIFLOW_HOME") or DEFAULT_HOME)


class Home:
    """An opened home directory. Paths are absolute strings (cheap to join on hot paths)."""

    def __init__(self, root: str, settings: Settings, layout: dict[str, Any]):
        self.root = root
        self.settings = settings
        self.layout = layout
        self.coordinator_dir = f"{root}/{COORDINATOR_DIR}"
        self.queues_dir = f"{root}/{QUEUES_DIR}"
        self.completions_dir = f"{root}/{COMPLETIONS_DIR}"
        self.control_dir = f"{root}/{CONTROL_DIR}"
        self.workers_dir = f"{root}/{WORKERS_DIR}"
        self.workflows_dir = f"{root}/{WORKFLOWS_DIR}"

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        settings: Settings | None = None,
    ) -> Home:
        """Open (and by default create) the home at `home` / ``$TUIFLOW_HOME`` / ``./.tuiflow``.

        Parameters:
            create: create the directory and its layout file when missing.
            settings: settings to record when this call creates the home (ignored otherwise).

        Raises:
            LayoutError: the home is missing (with create=False), unwritable, corrupt, or
                was written by a newer tuiflow.
        """
        root = resolve_root(home)
        layout_path = f"{root}/{LAYOUT_FILE}"
        try:
            raw = read_bytes(layout_path, max_bytes=1 << 20)
        except FileNotFoundError:
            if not create:
                raise LayoutError(
                    f"no tuiflow home at {root} (create one with `tuiflow run-local FILE --home {root}`, "
                    "or point --home / $TUIFLOW_HOME at an existing one)",
                    path=root,
                ) from None
            raw = cls._create(root, settings or Settings())
        except NotADirectoryError:
            raise LayoutError(f"home {root} is not a directory", path=root) from None
        except PermissionError as e:
            raise LayoutError(f"cannot read {layout_path}: permission denied", path=layout_path) from e
        layout = _parse_layout(raw, layout_path)
        parsed = Settings.from_json(layout.get("settings", {}), layout_path).with_env()
        perms.apply(parsed.sharing)
        return cls(root, parsed, layout)

    @staticmethod
    def _create(root: str, settings: Settings) -> bytes:
        try:
            perms.apply(settings.sharing)
            perms.makedirs(root)  # a root that exists (made by an admin for a group) keeps its mode
            spread_subdirectories(root)
            for sub in HOME_SUBDIRS:
                perms.makedirs(f"{root}/{sub}")
        except OSError as e:
            raise LayoutError(f"cannot create home {root}: {e.strerror}", path=root, errno=e.errno) from e
        layout = {
            "version": LAYOUT_VERSION,
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "settings": settings.to_json(),
        }
        data = json.dumps(layout, indent=2).encode() + b"\n"
        try:
            # RACE: two processes creating one home: link(2) lets exactly one layout win; the
            # loser reads the winner's.
            create_exclusive(f"{root}/{LAYOUT_FILE}", data, settings.durability)
        except StorageError as e:
            raise LayoutError(f"cannot create home {root}: {e}", path=root, errno=e.errno) from e
        return read_bytes(f"{root}/{LAYOUT_FILE}", max_bytes=1 << 20)

    def check_writable(self) -> None:
        """Raise LayoutError naming the home if this process cannot create files in it."""
        probe = (
            f"{self.root}/.write-probe.{os.getpid()}.{secrets.token_hex(4)}"  # unique per caller thread too
        )
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise LayoutError(
                f"home {self.root} is not writable: {e.strerror}"
                + (f" ({advice})" if (advice := what_to_do(e.errno, probe)) else ""),
                path=self.root,
                errno=e.errno,
            ) from e

    def queue(self, name: str) -> SpoolQueue:
        """The task queue `name` (created on first use)."""
        return self._spool(self.queue_dir(name))

    def completions(self) -> SpoolQueue:
        """The worker -> coordinator event queue."""
        return self._spool(self.completions_dir)

    def control(self) -> SpoolQueue:
        """The client -> coordinator request queue."""
        return self._spool(self.control_dir)

    def _spool(self, root: str) -> SpoolQueue:
        s = self.settings
        return SpoolQueue(
            root, durability=s.durability, shards=s.shards, max_message_bytes=s.max_message_bytes
        )

    def lease(self, holder: str) -> Lease:
        """The coordinator lease, as seen by contender `holder`."""
        s = self.settings
        return Lease(
            f"{self.coordinator_dir}/{LEASE_DIR}",
            holder,
            ttl=s.lease_ttl,
            durability=s.durability,
        )

    def queue_dir(self, name: str) -> str:
        return f"{self.queues_dir}/{check_component(name, 'queue name')}"

    def list_queues(self) -> list[str]:
        try:
            return sorted(n for n in listdir(self.queues_dir) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def __repr__(self) -> str:
        return f"Home({self.root!r})"


def _parse_layout(raw: bytes, path: str) -> dict[str, Any]:
    try:
        layout = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"{path} is corrupt ({e}); refusing to guess the layout", path=path) from None
    if not isinstance(layout, dict) or not isinstance(layout.get("version"), int):
        raise LayoutError(f"{path} has no integer 'version' field; refusing to guess the layout", path=path)
    version = layout["version"]
    if version > LAYOUT_VERSION:
        raise LayoutError(
            f"{path} has layout version {version}, but this tuiflow understands up to version "
            f"{LAYOUT_VERSION}: upgrade tuiflow to use this home",
            path=path,
        )
    if version < 1:
        raise LayoutError(f"{path} has invalid layout version {version}", path=path)
    return layout
