"""When the file system fails the coordinator mid-round (full, read-only, unreachable).

The coordinator does not exit: it forgets what is not on disk, waits until writes work
again, and goes on from what is on disk, as a successor would. Nothing is lost: messages
applied but not written are given back and applied again; tasks written as queued whose
message is missing are queued again (`sweeper.ReadyRepair`). It says so once, then once a
minute, and once more when writes work again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tuiflow.engine.loaded import TRANSIENT

log = logging.getLogger("tuiflow.engine.coordinator")

#: longest wait between two tries
MAX_DELAY = 5.0
#: how often a continuing outage is reported
REPORT_EVERY = 60.0


def wait_out(error: Exception, resume: Callable[[], None], stop: threading.Event, who: str) -> None:
    """Call `resume` (which writes) until it stops failing with a passing file-system error,
    backing off from 0.5 s to MAX_DELAY; return early once `stop` is set."""
    log.error(
        "%s: %s; waiting until the file system takes writes again (nothing is lost: "
        "what was not written yet is applied again then)",
        who,
        error,
    )
    began = last_said = time.monotonic()
    delay = 0.5
    while not stop.wait(delay):
        try:
            resume()
        except TRANSIENT as e:
            delay = min(delay * 2, MAX_DELAY)
            if time.monotonic() - last_said >= REPORT_EVERY:
                log.error("%s: still waiting for the file system: %s", who, e)
                last_said = time.monotonic()
            continue
        log.warning(
            "%s: the file system takes writes again after %.0f s; resumed", who, time.monotonic() - began
        )
        return
