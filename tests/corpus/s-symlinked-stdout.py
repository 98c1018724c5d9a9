"""Damage: the bystander's first task's stdout.log is a link to a file outside the home
(as if planted before its worker ran it): `tuiflow logs` must not print that file."""

import os
from pathlib import Path

from spool import layout


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/{layout.WORKFLOWS_DIR}")
    directory = layout.attempt_dir(home, wf_id, "a", 0)
    os.makedirs(directory, exist_ok=True)
    secret = Path(home).parent / "outside-secret.txt"
    secret.write_text("TOP-SECRET\n")
    os.symlink(secret, layout.attempt_file(directory, layout.STDOUT_FILE))
