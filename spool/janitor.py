"""Removing what writers that died left behind: temporary files.

A writer killed between creating its temporary file and renaming it into place (`atomic`)
leaves a dot-name no listing shows and nothing else removes. Temporary names carry the
writer's host and pid (``.tmp.<host>.<pid>.<token>.<n>``), so a file whose writer was a
process of this host that has exited is removed at once; any other is removed once it is
older than `older_than` seconds by the file server's clock (a live writer holds its
temporary file for milliseconds).
"""

from __future__ import annotations

import contextlib
import os

from .atomic import HOST, TEMP_PREFIX
from .fsops import listdir
from .liveness import fs_now, local_process_gone

#: a temporary file this old (seconds, file server's clock) belongs to a dead writer
TEMP_MAX_AGE = 3600.0


def _writer(name: str) -> tuple[str, int] | None:
    parts = name[len(TEMP_PREFIX) :].split(".")
    if len(parts) < 4 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def remove_stale_temps(directories: list[str], older_than: float = TEMP_MAX_AGE) -> int:
    """Remove dead writers' temporary files from `directories`; returns how many."""
    removed = 0
    server_now: float | None = None
    for directory in directories:
        try:
            names = [n for n in listdir(directory) if n.startswith(TEMP_PREFIX)]
        except OSError:
            continue
        for name in names:
            path = f"{directory}/{name}"
            writer = _writer(name)
            if writer is None or writer[0] != HOST or not local_process_gone(writer[1], None):
                try:
                    if server_now is None:
                        server_now = fs_now(directory)
                    if server_now - os.lstat(path).st_mtime < older_than:
                        continue
                except OSError:
                    continue
            with contextlib.suppress(OSError):  # RACE: its writer renamed it, or another janitor removed it
                os.unlink(path)
                removed += 1
    return removed
