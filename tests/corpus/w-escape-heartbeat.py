"""Damage: a worker heartbeat whose host and queue names (free text in its record) hold
escape sequences; `doctor` and the dashboard list workers with their host and queues."""

from spool import Home
from spool.liveness import HeartbeatWriter


def damage(home: str) -> None:
    h = Home.open(home, create=False)
    writer = HeartbeatWriter(h.workers_dir, "evil-worker")
    writer.beat({"host": "evil\x1b]0;pwned\x07", "queues": ["gpu\x1b[2J"], "slots": 1, "running": []})
    writer.close()
