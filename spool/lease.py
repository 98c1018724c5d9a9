"""The coordinator lease: at most one live holder, fenced by a generation number.

The lease is a CAS record (`spool.cas`) holding::

    {"holder", "host", "pid", "start", "nonce", "generation", "renewals", "renewed_at", "ttl"}

or ``holder: None`` once released or broken (the generation is kept, so the next holder
gets generation + 1 and everything it writes can be told apart from its predecessor's).

* acquire: a free lease is taken by a CAS write. A held lease is taken over only when its
  holder is provably dead on this host (pid gone), or when its record has not changed for
  `ttl` seconds on the contender's *own monotonic clock* (renewals change it). The takeover
  is itself a CAS write, so of several contenders exactly one wins.
* renew: a CAS write expecting the version the holder last wrote. If it moved, someone
  took the lease over or an operator broke it: `DeposedError`.
* assert_held: read the record and check the nonce and version are still ours. Callers
  (the coordinator) pass it as the `fence` of their CAS state writes, so it runs inside the
  state lock, right before the write: a holder that was stopped (SIGSTOP) past its ttl
  and resumed learns it was deposed before it writes anything.
* break: operators clear a lease (``--break-lease``); it is logged and appended to
  ``lease.log`` next to the record.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from .atomic import HOST, Durability
from .cas import CasRecord
from .errors import ConflictError, DeposedError, LeaseHeldError, LockLostError
from .liveness import local_process_gone, process_start_token

log = logging.getLogger("spool.lease")


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseInfo:
    holder: str | None
    host: str | None
    pid: int | None
    generation: int
    renewals: int
    renewed_at: float | None  # holder's wall clock, display only
    ttl: float | None
    version: int

    @property
    def held(self) -> bool:
        return self.holder is not None


def _info(value: Any, version: int) -> LeaseInfo | None:
    if not isinstance(value, dict):
        return None
    return LeaseInfo(
        value.get("holder"),
        value.get("host"),
        value.get("pid"),
        int(value.get("generation", 0)),
        int(value.get("renewals", 0)),
        value.get("renewed_at"),
        value.get("ttl"),
        version,
    )


class Lease:
    """A contender for (and possibly the holder of) the lease at `path`.

    Parameters:
        holder: a name for this contender (shown to operators).
        ttl: seconds without renewal after which others may take the lease over.
        clock: this process's monotonic clock (injectable for tests).
        fast_takeover: take over at once from a holder provably dead on this host.
    """

    def __init__(
        self,
        path: str,
        holder: str,
        *,
        ttl: float = 20.0,
        durability: Durability = Durability.PROCESS,
        clock: Callable[[], float] = time.monotonic,
        fast_takeover: bool = True,
        lock_stale_after: float = 30.0,
    ):
        self.path = path
        self.holder = holder
        self.ttl = ttl
        self.clock = clock
        self.fast_takeover = fast_takeover
        self.record = CasRecord(path, durability=durability, lock_stale_after=lock_stale_after)
        self.nonce = secrets.token_hex(8)
        self.generation: int | None = None
        self._value: dict[str, Any] | None = None
        self._version: int | None = None
        self._renewed_at: float | None = None
        self._observed: tuple[int, float] | None = None

    # ------------------------------------------------------------------ query
    def inspect(self) -> LeaseInfo | None:
        value, version = self.record.read()
        return _info(value, version)

    @property
    def held(self) -> bool:
        return self._version is not None

    @property
    def since_renewal(self) -> float | None:
        return None if self._renewed_at is None else self.clock() - self._renewed_at

    # ---------------------------------------------------------------- acquire
    def try_acquire(self) -> bool:
        """Take the lease if it is free or its holder is gone; False if a live holder has it."""
        if self._version is not None:
            return True
        value, version = self.record.read()
        now = self.clock()
        if isinstance(value, dict) and value.get("holder") is not None:
            if value.get("nonce") == self.nonce:
                return True
            dead_here = (
                self.fast_takeover
                and value.get("host") == HOST
                and local_process_gone(int(value.get("pid") or 0), value.get("start"))
            )
            if not dead_here:
                # Liveness by change: the version moves on every renewal. Timed on our clock.
                if self._observed is None or self._observed[0] != version:
                    self._observed = (version, now)
                    return False
                if now - self._observed[1] < self.ttl:
                    return False
            log.warning(
                "taking over lease %s from %s (pid %s on %s, generation %s): %s",
                self.path,
                value.get("holder"),
                value.get("pid"),
                value.get("host"),
                value.get("generation"),
                "its process is gone" if dead_here else f"not renewed for {now - self._observed[1]:.1f} s",
            )
        generation = int(value.get("generation", 0)) + 1 if isinstance(value, dict) else 1
        new = {
            "holder": self.holder,
            "host": HOST,
            "pid": os.getpid(),
            "start": process_start_token(os.getpid()),
            "nonce": self.nonce,
            "generation": generation,
            "renewals": 0,
            "renewed_at": time.time(),
            "ttl": self.ttl,
        }
        try:
            self._version = self.record.write(new, version)
        except ConflictError:
            self._observed = None  # RACE: another contender won, or the holder renewed
            return False
        self._value = new
        self.generation = generation
        self._renewed_at = self.clock()
        self._observed = None
        return True

    def acquire(
        self, timeout: float | None = None, poll: float | None = None, *, refuse_live: bool = False
    ) -> int:
        """Block until the lease is ours (or `timeout` passes: LeaseHeldError). Returns the generation.

        Parameters:
            refuse_live: give up (LeaseHeldError) as soon as the holder is seen renewing,
                instead of waiting for it to stop.
        """
        deadline = None if timeout is None else self.clock() + timeout
        poll = poll if poll is not None else min(1.0, self.ttl / 10)
        first_seen: int | None = None
        while not self.try_acquire():
            if self._observed is not None and first_seen is None:
                first_seen = self._observed[0]
            renewed = (
                first_seen is not None and self._observed is not None and self._observed[0] != first_seen
            )
            if (deadline is not None and self.clock() >= deadline) or (refuse_live and renewed):
                info = self.inspect()
                who = f"{info.holder} (pid {info.pid} on {info.host})" if info else "another holder"
                state = "is alive (it renewed the lease while we watched)" if renewed else "holds it"
                raise LeaseHeldError(
                    f"{self.path}: lease held by {who}, generation {info.generation if info else '?'}; it {state}",
                    path=self.path,
                )
            time.sleep(poll)
        assert self.generation is not None
        return self.generation

    # ------------------------------------------------------------------- hold
    def renew(self) -> None:
        """Refresh the lease; DeposedError if it was taken over or broken."""
        if self._version is None or self._value is None:
            raise DeposedError(f"{self.path}: not holding the lease", path=self.path)
        new = dict(self._value, renewals=self._value["renewals"] + 1, renewed_at=time.time())
        try:
            self._version = self.record.write(new, self._version)
        except ConflictError:
            self._lose()
        except LockLostError:
            # We stalled inside the write long enough for our lock on the lease record to be
            # broken: the record tells whether someone took the lease over meanwhile.
            self.assert_held()
            self._version = self.record.write(new, self._version)
        self._value = new
        self._renewed_at = self.clock()

    def assert_held(self) -> None:
        """DeposedError unless the record still carries our nonce and last version."""
        if self._version is None:
            raise DeposedError(f"{self.path}: not holding the lease", path=self.path)
        value, version = self.record.read()
        if not isinstance(value, dict) or value.get("nonce") != self.nonce or version != self._version:
            self._lose(value)

    def _lose(self, value: Any = None) -> None:
        if value is None:
            value, _ = self.record.read()
        self._version = self._value = self._renewed_at = None
        who = "nobody (it was broken by an operator)"
        if isinstance(value, dict) and value.get("holder"):
            who = (
                f"{value['holder']} (pid {value.get('pid')} on {value.get('host')}, "
                f"generation {value.get('generation')})"
            )
        raise DeposedError(
            f"{self.path}: lease generation {self.generation} was taken over; now held by {who}",
            path=self.path,
        )

    def release(self) -> None:
        """Give the lease up (clean shutdown). Quietly does nothing if it was already lost."""
        if self._version is None or self._value is None:
            return
        try:
            self.record.write(dict(self._value, holder=None, nonce=None, pid=None), self._version)
        except ConflictError:
            pass
        self._version = self._value = self._renewed_at = None

    # ---------------------------------------------------------------- operate
    def break_lease(self, reason: str = "operator request") -> LeaseInfo | None:
        """Clear whoever holds the lease (operators only). Logged; returns what was broken."""

        def clear(value: Any) -> Any:
            if not isinstance(value, dict):
                return {"holder": None, "generation": 0}
            return dict(value, holder=None, nonce=None, pid=None)

        old_value, _ = self.record.read()
        _, version = self.record.update(clear)
        broken = _info(old_value, version - 1)
        entry = {
            "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            "by": f"{self.holder} (pid {os.getpid()} on {HOST})",
            "reason": reason,
            "broken": dataclasses.asdict(broken) if broken else None,
        }
        log.warning("lease %s broken by %s: %s (was %s)", self.path, entry["by"], reason, entry["broken"])
        with open(f"{self.path}.log", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        return broken
