"""The markers that stop a worker's attempts: a cancelled workflow
(`layout.cancel_marker`) and an attempt past its timeout on the coordinator's clock
(`layout.kill_marker`). Both are files the coordinator creates; the worker looks for them
while attempts run, and before it starts a claimed task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Protocol

from spool import layout
from workers.wire import FailKind, TaskMessage

#: seconds between two looks for the markers of running attempts (and the longest a
#: workflow's cancel marker is remembered as absent)
MARKER_CHECK_INTERVAL = 0.25


class Stoppable(Protocol):
    task: TaskMessage
    stop_reason: FailKind | None


class StopMarkers:
    """Looks for the stop markers of a home's workflows and attempts."""

    def __init__(self, home_root: str, interval: float = MARKER_CHECK_INTERVAL):
        self.home_root = home_root
        self.interval = interval
        self._cancelled: dict[str, tuple[float, bool]] = {}  # wf -> (monotonic time looked, found)

    def cancelled(self, wf_id: str) -> bool:
        """Whether workflow `wf_id` is cancelled (one look per `interval` seconds per workflow)."""
        now = time.monotonic()
        cached = self._cancelled.get(wf_id)
        if cached is not None and now - cached[0] < self.interval:
            return cached[1]
        gone = os.path.exists(layout.cancel_marker(self.home_root, wf_id))
        self._cancelled[wf_id] = (now, gone)
        return gone

    def check(self, attempts: Iterable[Stoppable]) -> None:
        """Give each attempt not yet told to stop its reason to, if a marker says so:
        cancelled (its workflow's marker) or timeout (its own kill marker)."""
        for a in attempts:
            if a.stop_reason:
                continue
            task = a.task
            if self.cancelled(task.wf):
                a.stop_reason = FailKind.CANCELLED
            elif os.path.exists(layout.kill_marker(self.home_root, task.wf, task.idx, task.attempt)):
                a.stop_reason = FailKind.TIMEOUT
