"""Markers the coordinator leaves for workers: a workflow was cancelled (its running
tasks stop), an attempt timed out (it stops). Workers look for them every 0.25 s while
they run tasks of the workflow (`workers.worker`); their paths are in `spool.layout`."""

from __future__ import annotations

import os
from collections.abc import Callable

from spool import atomic_write, layout


class Markers:
    """Writes and removes the markers of one home.

    Parameters:
        fence: checked right before each marker is published (the coordinator's lease).
    """

    def __init__(self, home_root: str, fence: Callable[[], None] | None = None):
        self.home_root = home_root
        self.fence = fence

    def cancelled(self, wf_id: str) -> None:
        atomic_write(layout.cancel_marker(self.home_root, wf_id), b"cancelled\n", fence=self.fence)

    def not_cancelled(self, wf_id: str) -> None:
        """Remove the cancel marker (a retry of a cancelled workflow)."""
        try:
            os.unlink(layout.cancel_marker(self.home_root, wf_id))
        except FileNotFoundError:
            pass

    def kill(self, wf_id: str, idx: int, attempt: int) -> None:
        path = layout.kill_marker(self.home_root, wf_id, idx, attempt)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, b"kill\n", fence=self.fence)
