"""Damage: the bystander's first task's directory is a link to a directory outside the
home that holds an attempt with a stdout.log: `tuiflow logs` must not print it."""

import os
from pathlib import Path

from spool import layout


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/{layout.WORKFLOWS_DIR}")
    outside = Path(home).parent / "outside-task"
    (outside / "0").mkdir(parents=True)
    (outside / "0" / layout.STDOUT_FILE).write_text("TOP-SECRET\n")
    task_dir = Path(layout.attempt_dir(home, wf_id, "a", 0)).parent
    task_dir.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, task_dir)
