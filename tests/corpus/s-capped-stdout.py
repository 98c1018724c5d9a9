"""Damage: the bystander's first task ran and flooded its stdout: its log holds what a
worker keeps under max_log_bytes (the head, the note saying what was dropped, the tail)."""

import os

from spool import layout


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/{layout.WORKFLOWS_DIR}")
    directory = layout.attempt_dir(home, wf_id, "a", 0)
    os.makedirs(directory, exist_ok=True)
    with open(layout.attempt_file(directory, layout.STDOUT_FILE), "wb") as f:
        f.write(b"first line\n")
        f.write(
            b"[tuiflow: 1,048,576 bytes of stdout.log dropped here (max_log_bytes 65,536 keeps "
            b"the first 32,768 and the last 32,768)]\n"
        )
        f.write(b"last line\n")
