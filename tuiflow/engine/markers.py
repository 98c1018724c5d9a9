"""Markers the coordinator leaves: a workflow was cancelled (workers stop its running
tasks), an attempt timed out (its worker stops it), a workflow is broken (the coordinator
could not apply it, nor even record that it failed: it leaves it alone from then on). Workers look for them every 0.25 s while
they run tasks of the workflow (`workers.worker`); their paths are in `spool.layout`."""

from __future__ import annotations

import os
from collections.abc import Callable

from spool import atomic_write, layout, perms


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

    def broken(self, wf_id: str, why: str) -> None:
        """Mark a workflow the coordinator cannot apply or write (it skips it from then on)."""
        atomic_write(layout.broken_marker(self.home_root, wf_id), why.encode()[:4096], fence=self.fence)

    def kill(self, wf_id: str, idx: int, attempt: int) -> None:
        path = layout.kill_marker(self.home_root, wf_id, idx, attempt)
        perms.makedirs(os.path.dirname(path))
        atomic_write(path, b"kill\n", fence=self.fence)
