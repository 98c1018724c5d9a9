"""Damage: a worker's claim directory of the default queue is a link to a directory
outside the home (claiming renames messages into it: they would leave the home)."""

import os
from pathlib import Path

from spool import Home


def damage(home: str) -> None:
    q = Home.open(home, create=False).queue("default")
    outside = Path(home).parent / "outside-claims"
    outside.mkdir()
    os.makedirs(f"{q.root}/claimed", exist_ok=True)
    os.symlink(outside, f"{q.root}/claimed/node7-1-evil")
