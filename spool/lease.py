"""The coordinator lease: at most one live holder, fenced by a generation number.

The lease is a directory of *entries*, ``<path>/<n>`` with n zero-padded, each created
exclusively (link(2) of a complete temporary file, which never replaces anything) and never
rewritten. The entry with the highest n, the *head*, says who holds the lease::

    {"holder", "host", "pid", "start", "nonce", "generation", "renewals", "renewed_at", "ttl"}

or ``holder: null`` once released or broken (the generation is kept, so the next holder
gets generation + 1 and everything it writes can be told apart from its predecessor's).

Every change appends entry head + 1, and of several processes appending the same n exactly
one succeeds, on NFS too. That is the whole point of the layout: a CAS record rewritten by
rename(2) under a lock lets a holder that was stopped between its last check and its rename
land that rename after a successor took over, clobbering the successor's record and
carrying on as if it still held the lease. An exclusive create has no such window.

* acquire: a free lease is taken by appending an entry with generation + 1. A held lease
  is taken over only when its holder is provably dead on this host (pid gone), or when the
  head has not moved for `ttl` seconds on the contender's *own monotonic clock*
  (renewals move it).
* renew: append the next entry. If it already exists, someone took the lease over or an
  operator broke it: `DeposedError`.
* Whoever appends entry n + 1 then unlinks entry n, so the directory holds the head alone
  (two entries for a moment), and a holder's own entry exists exactly as long as nobody
  followed it.
* assert_held: our entry still exists (checked by open(2): NFS revalidates an open against
  the server, where a stat may answer from its attribute cache) and the next one does not
  (which catches an appender that died before its unlink). Callers (the coordinator) pass
  it as the `fence` of their CAS state writes, so it runs inside the state lock, right
  before the write: a holder that was stopped (SIGSTOP) past its ttl and resumed learns it
  was deposed before it writes anything.
* break: operators clear a lease (``--break-lease``); it is logged and appended to
  ``<path>.log`` next to the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from .atomic import HOST, Durability, create_exclusive
from .errors import CorruptRecordError, DeposedError, LayoutError, LeaseHeldError, StorageError
from .liveness import local_process_gone, process_start_token

log = logging.getLogger("spool.lease")

_WIDTH = 16  # digits in an entry name, so names sort like their numbers


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseInfo:
    holder: str | None
    host: str | None
    pid: int | None
    generation: int
    renewals: int
    renewed_at: float | None  # holder's wall clock, display only
    ttl: float | None
    version: int  # the head entry's number: moves on every change

    @property
    def held(self) -> bool:
        return self.holder is not None


def _info(value: dict[str, Any], version: int) -> LeaseInfo:
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
    """A contender for (and possibly the holder of) the lease at directory `path`.

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
    ):
        self.path = path
        self.holder = holder
        self.ttl = ttl
        self.durability = durability
        self.clock = clock
        self.fast_takeover = fast_takeover
        self.nonce = secrets.token_hex(8)
        self.generation: int | None = None
        self._value: dict[str, Any] | None = None
        self._version: int | None = None  # our head entry while we hold the lease
        self._renewed_at: float | None = None
        self._observed: tuple[int, float] | None = None
        self._hint = 0  # the highest entry seen so far: probing starts there

    # ---------------------------------------------------------------- entries
    def _entry(self, n: int) -> str:
        return f"{self.path}/{n:0{_WIDTH}d}"

    def _read(self, n: int) -> dict[str, Any] | None:
        path = self._entry(n)
        try:
            with open(path, "rb") as f:
                raw = f.read(1 << 16)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise self._legacy() from None
        except OSError as e:
            raise StorageError.from_os("read", path, e) from e
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise CorruptRecordError(f"{path}: lease entry is not JSON ({e})", path=path) from None
        if not isinstance(value, dict):
            raise CorruptRecordError(f"{path}: lease entry is not an object", path=path)
        return value

    def _legacy(self) -> LayoutError:
        return LayoutError(
            f"{self.path} is a lease record from an earlier tuiflow (a file, not a directory): "
            "stop the coordinator that uses it, then delete the file",
            path=self.path,
        )

    def _listed_head(self) -> int:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return 0
        except NotADirectoryError:
            raise self._legacy() from None
        except OSError as e:
            raise StorageError.from_os("list", self.path, e) from e
        return max((int(n) for n in names if len(n) == _WIDTH and n.isdigit()), default=0)

    def _head(self) -> tuple[int, dict[str, Any] | None]:
        """(n, value) of the head entry; (0, None) if nothing was ever written."""
        n = self._hint
        while True:
            if not n or not os.path.exists(self._entry(n)):
                n = self._listed_head()  # a fresh reader, or the head moved on since we looked
            while os.path.exists(self._entry(n + 1)):
                n += 1
            if n == 0:
                return 0, None
            value = self._read(n)
            if value is not None:
                self._hint = n
                return n, value
            n = 0  # RACE: followed (and unlinked) between the probe and the read; list again

    def _append(self, n: int, value: dict[str, Any]) -> bool:
        """Create entry `n`; False if it exists already (someone else appended it)."""
        data = json.dumps(value, separators=(",", ":")).encode()
        try:
            os.makedirs(self.path, exist_ok=True)
        except FileExistsError:
            raise self._legacy() from None
        except OSError as e:
            raise StorageError.from_os("create", self.path, e) from e
        if not create_exclusive(self._entry(n), data, self.durability):
            return False
        self._hint = max(self._hint, n)
        with contextlib.suppress(OSError):  # a leftover is caught by assert_held's second check
            os.unlink(self._entry(n - 1))
        return True

    # ------------------------------------------------------------------ query
    def inspect(self) -> LeaseInfo | None:
        n, value = self._head()
        return None if value is None else _info(value, n)

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
        version, value = self._head()
        now = self.clock()
        if value is not None and value.get("holder") is not None:
            dead_here = (
                self.fast_takeover
                and value.get("host") == HOST
                and local_process_gone(int(value.get("pid") or 0), value.get("start"))
            )
            if not dead_here:
                # Liveness by change: the head moves on every renewal. Timed on our clock.
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
        generation = int(value.get("generation", 0)) + 1 if value is not None else 1
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
        self._observed = None
        if not self._append(version + 1, new):
            return False  # RACE: another contender won, or the holder renewed
        self._version = version + 1
        self._value = new
        self.generation = generation
        self._renewed_at = self.clock()
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
        if not self._append(self._version + 1, new):
            self._lose()
        self._version += 1
        self._value = new
        self._renewed_at = self.clock()

    def assert_held(self) -> None:
        """DeposedError unless our entry is still the head (an open and a stat)."""
        if self._version is None:
            raise DeposedError(f"{self.path}: not holding the lease", path=self.path)
        try:
            os.close(os.open(self._entry(self._version), os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            self._lose()
        if os.path.exists(self._entry(self._version + 1)):
            self._lose()

    def _lose(self) -> None:
        _, value = self._head()
        self._version = self._value = self._renewed_at = None
        who = "nobody (it was broken by an operator)"
        if value is not None and value.get("holder"):
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
        self._append(self._version + 1, dict(self._value, holder=None, nonce=None, pid=None, released=True))
        self._version = self._value = self._renewed_at = None

    # ---------------------------------------------------------------- operate
    def break_lease(self, reason: str = "operator request") -> LeaseInfo | None:
        """Clear whoever holds the lease (operators only). Logged; returns what was broken."""
        while True:
            version, value = self._head()
            cleared = (
                {"holder": None, "generation": 0}
                if value is None
                else dict(value, holder=None, nonce=None, pid=None, broken=reason)
            )
            if self._append(version + 1, cleared):
                break
        broken = None if value is None else _info(value, version)
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

    def entry_path(self, version: int) -> str:
        """The file of entry `version` (`LeaseInfo.version`): its mtime is when it was made."""
        return self._entry(version)
