"""Damage: a FIFO where a worker's heartbeat record would be: reading it would block
whoever lists the workers (doctor, status, the coordinator's sweeper)."""

import os


def damage(home: str) -> None:
    os.mkfifo(f"{home}/workers/node7-1-fifo.hb")
