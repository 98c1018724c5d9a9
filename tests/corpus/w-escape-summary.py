"""Damage: another user rewrites the bystander's summary record (what `ls`, `watch`, the
dashboard's overview and `trace history` read) with a name holding terminal escape
sequences: retitle the terminal (OSC 0), clear it (CSI 2J), ring the bell."""

import os

import msgpack

NAME = "evil\x1b]0;pwned\x07\x1b[2J"


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/workflows")  # the bystander, alone in a fresh home
    path = f"{home}/workflows/{wf_id}/summary.msgpack"
    with open(path, "rb") as f:
        summary = msgpack.unpackb(f.read())
    summary["name"] = NAME
    with open(path, "wb") as f:
        f.write(msgpack.packb(summary))
