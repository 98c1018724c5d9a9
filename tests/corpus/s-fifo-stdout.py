"""Damage: the bystander's first task's stdout.log is a FIFO: opening it to read would
block `tuiflow logs` until someone writes to it."""

import os

from spool import layout


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/{layout.WORKFLOWS_DIR}")
    directory = layout.attempt_dir(home, wf_id, "a", 0)
    os.makedirs(directory, exist_ok=True)
    os.mkfifo(layout.attempt_file(directory, layout.STDOUT_FILE))
