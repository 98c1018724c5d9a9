"""Damage: the bystander's summary record says it completed, under a name that is Rich
markup (a closing tag with nothing open raises MarkupError where markup is parsed) with
an escape sequence in it. `watch` prints the summary's name in its progress line."""

import os

import msgpack

NAME = "[/]evil[bold]\x1b[2J"


def damage(home: str) -> None:
    (wf_id,) = os.listdir(f"{home}/workflows")
    path = f"{home}/workflows/{wf_id}/summary.msgpack"
    with open(path, "rb") as f:
        summary = msgpack.unpackb(f.read())
    summary.update(name=NAME, state="completed", counts={"completed": 2}, total=2)
    with open(path, "wb") as f:
        f.write(msgpack.packb(summary))
