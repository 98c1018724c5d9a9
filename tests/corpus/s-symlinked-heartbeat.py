"""Damage: a colleague replaced a worker's heartbeat record with a link to a file outside
the home (a worker or the coordinator following it would read, or rewrite, that file)."""

import os
from pathlib import Path


def damage(home: str) -> None:
    secret = Path(home).parent / "outside-secret.txt"
    secret.write_text("TOP-SECRET\n")
    os.symlink(secret, f"{home}/workers/node7-1-evil.hb")
