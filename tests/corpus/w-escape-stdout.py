"""Damage: the bystander's first task has a stdout log holding an escape sequence (as if
it had run and printed one), and nothing else changed."""

import os

from spool import layout


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/workflows")
    directory = layout.attempt_dir(home, wf_id, "a", 0)
    os.makedirs(directory, exist_ok=True)
    with open(layout.attempt_file(directory, layout.STDOUT_FILE), "wb") as f:
        f.write(b"hi\x1b[2J\n")
