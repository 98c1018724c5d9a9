"""Damage: the bystander's ``tasks`` directory replaced by a link to a directory outside
the home (a worker following it would create attempt directories and logs there)."""

import os
import shutil
from pathlib import Path

from spool import layout


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/{layout.WORKFLOWS_DIR}")
    tasks = Path(layout.tasks_dir(layout.workflow_dir(home, wf_id)))
    shutil.rmtree(tasks, ignore_errors=True)
    outside = Path(home).parent / "outside-dir"
    outside.mkdir()
    os.symlink(outside, tasks)
