"""The coordinator lease: at most one live holder, fenced by a generation number.

The lease is a directory of *entries*, ``<path>/<n>`` with n zero-padded, each created
exclusively (link(2) of a complete temporary file, which never replaces anything) and never
rewritten. The *head* is the entry with the highest number in a listing of the directory;
it says who holds the lease::

    {"holder", "host", "pid", "start", "nonce", "generation", "renewals", "renewed_at", "ttl"}

or ``holder: null`` once released or broken (the generation is kept, so the next holder
gets generation + 1 and everything it writes can be told apart from its predecessor's).

Every change appends an entry: of several processes creating the same n exactly one
succeeds, on NFS too. An append only counts once a fresh listing shows the new entry as
the head (`_append`): a process that was stopped for a while may create a number that
was in use long ago and has since been removed, but it can never create one above the
head without having seen the head, so such an entry is never the head and changes nothing.

* acquire: a free lease is taken by appending an entry with generation + 1. A held lease
  is taken over only when its holder is provably dead on this host (pid gone), or when the
  head has not moved for `ttl` seconds on the contender's *own monotonic clock* (renewals
  move it).
* renew: append the next entry. If it exists already, or the listing after the append
  shows a higher entry, someone took the lease over or an operator broke it: `DeposedError`.
* assert_held, the fence of every state write (it runs inside the record's lock, right
  before the write): the holder's entry is the head of a fresh listing. Before that, a
  holder whose last renewal is older than half the ttl on its own clock renews first, so a
  holder that was stopped (SIGSTOP) past its ttl learns it was deposed without trusting a
  listing its file system may have cached.
* renew_if_older_than: the cheap check of the hot paths (claiming, queueing a task): no
  file is touched unless the last renewal is older than the bound. A contender takes over
  only after seeing the head unchanged for a whole ttl, so within ttl of a renewal that
  this holder made, nobody else holds the lease.
* The holder removes entries more than `KEEP` below its head; they only make an append
  by a long-stopped process fail at once instead of at the listing.
* break: operators clear a lease (``--break-lease``). Breaks, takeovers and depositions
  are appended to ``<path>.log`` next to the directory.

docs/protocols.md has the argument for why two holders can never both pass the fence.
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

from . import perms
from .atomic import HOST, Durability, append, create_exclusive, read_bytes
from .errors import CorruptRecordError, DeposedError, LayoutError, LeaseHeldError, SpoolError, StorageError
from .fsops import listdir
from .liveness import local_process_gone, process_start_token

log = logging.getLogger("spool.lease")

_WIDTH = 16  # digits in an entry name, so names sort like their numbers
#: entries kept below the head (about KEEP renewals of history)
KEEP = 32


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
    start: int | None = None  # the holder's process start token (tells a reused pid apart)
    readable: bool = True  # False: the head entry does not decode (see `Lease._read`)

    @property
    def held(self) -> bool:
        return self.holder is not None

    @property
    def gone_here(self) -> bool:
        """Whether the holder is a process of this host that has provably exited."""
        return (
            self.holder is not None
            and self.host == HOST
            and self.pid is not None
            and local_process_gone(int(self.pid), self.start)
        )


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
        value.get("start"),
        "unreadable" not in value,
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
        self._renewed_at: float | None = None  # when our last confirmed append began (our clock)
        self._observed: tuple[int, float] | None = None

    # ---------------------------------------------------------------- entries
    def _entry(self, n: int) -> str:
        return f"{self.path}/{n:0{_WIDTH}d}"

    def _read(self, n: int) -> dict[str, Any] | None:
        """Entry `n`'s value; None if it is gone. An entry that does not decode (a disk
        fault, a hand edit) reads as held by an unknown holder that never renews, of a
        generation above every readable entry below it (it may have been a takeover):
        contenders take it over after the ttl like a silent holder, and an operator's break
        clears it at once. Generations only grow, whatever the entry held."""
        path = self._entry(n)
        try:
            raw = read_bytes(path, max_bytes=1 << 16)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise self._legacy() from None
        except CorruptRecordError:
            return self._unreadable(n, "larger than 64 KiB")
        except OSError as e:
            raise StorageError.from_os("read", path, e) from e
        try:
            value = json.loads(raw)
        except ValueError as e:
            return self._unreadable(n, f"not JSON ({e})")
        if not isinstance(value, dict) or not isinstance(value.get("generation", 0), int):
            return self._unreadable(n, "not a lease entry")
        return value

    def _unreadable(self, n: int, why: str) -> dict[str, Any]:
        log.error(
            "lease entry %s is unreadable (%s): treated as a holder that never renews", self._entry(n), why
        )
        generation = 0
        for below in sorted((m for m in self._numbers() if m < n), reverse=True):
            try:
                value = json.loads(read_bytes(self._entry(below), max_bytes=1 << 16))
                generation = int(value["generation"]) + 1
                break
            except (OSError, SpoolError, ValueError, KeyError, TypeError):
                continue
        return {
            "holder": f"an unreadable entry ({self._entry(n)}: {why})",
            "generation": generation,
            "unreadable": why,
        }

    def _legacy(self) -> LayoutError:
        return LayoutError(
            f"{self.path} is a lease record from an earlier tuiflow (a file, not a directory): "
            "stop the coordinator that uses it, then delete the file",
            path=self.path,
        )

    def _numbers(self) -> list[int]:
        """The entry numbers of a fresh listing (a listing asks the server; a lookup of one
        name may be answered from a cache)."""
        try:
            names = listdir(self.path)
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise self._legacy() from None
        except OSError as e:
            raise StorageError.from_os("list", self.path, e) from e
        return [int(n) for n in names if len(n) == _WIDTH and n.isdigit()]

    def _head(self) -> tuple[int, dict[str, Any] | None]:
        """(n, value) of the head entry; (0, None) if nothing was ever written."""
        for _ in range(100):
            n = max(self._numbers(), default=0)
            if n == 0:
                return 0, None
            value = self._read(n)
            if value is not None:
                return n, value
            # RACE: removed between the listing and the read (an operator, or a junk entry of
            # a stopped process that saw itself below the head): list again.
        raise StorageError(f"{self.path}: the head entry keeps vanishing while it is read", path=self.path)

    def _append(self, n: int, value: dict[str, Any]) -> bool:
        """Create entry `n` and confirm it is the head; False if it is not (someone else
        appended n, or the head is beyond it)."""
        data = json.dumps(value, separators=(",", ":")).encode()
        try:
            perms.makedirs(self.path)
        except FileExistsError:
            raise self._legacy() from None
        except OSError as e:
            raise StorageError.from_os("create", self.path, e) from e
        if not create_exclusive(self._entry(n), data, self.durability):
            return False
        numbers = self._numbers()
        if max(numbers, default=0) != n:
            # A number freed long ago, created by a process that was stopped while others
            # went on: never the head, so it means nothing. Ours to remove.
            with contextlib.suppress(OSError):
                os.unlink(self._entry(n))
            return False
        for old in numbers:
            if old <= n - KEEP:
                with contextlib.suppress(OSError):  # RACE: another holder's cleanup got there first
                    os.unlink(self._entry(old))
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
            try:
                self.assert_held()
                return True
            except DeposedError:
                pass  # lost meanwhile: contend again like anyone else
        version, value = self._head()
        now = self.clock()
        if value is not None and value.get("holder") is not None and value.get("nonce") == self.nonce:
            # RACE (NFS): our own append, whose reply was lost: we hold it already.
            self._adopt(version, value, now)
            return True
        taking_over = ""
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
            taking_over = (
                "its process is gone" if dead_here else f"not renewed for {now - self._observed[1]:.1f} s"
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
        self._adopt(version + 1, new, now)
        if taking_over:
            log.warning(
                "took over lease %s (generation %s) from %s (pid %s on %s, generation %s): %s",
                self.path,
                generation,
                value.get("holder"),
                value.get("pid"),
                value.get("host"),
                value.get("generation"),
                taking_over,
            )
            self.log_event("takeover", reason=taking_over, previous=_info(value, version))
        return True

    def _adopt(self, version: int, value: dict[str, Any], renewed_at: float) -> None:
        self._version = version
        self._value = value
        self.generation = int(value["generation"])
        self._renewed_at = renewed_at

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
        began = self.clock()
        new = dict(self._value, renewals=self._value["renewals"] + 1, renewed_at=time.time())
        if not self._append(self._version + 1, new):
            self._lose()
        self._version += 1
        self._value = new
        self._renewed_at = began

    def renew_if_older_than(self, seconds: float) -> None:
        """Renew unless the last renewal began less than `seconds` ago on this process's clock
        (then nothing is read or written). DeposedError if the lease was lost."""
        if self._renewed_at is None:
            raise DeposedError(f"{self.path}: not holding the lease", path=self.path)
        # A loop: a renewal that took that long (or was stopped half-way) is not fresh either.
        while self.clock() - self._renewed_at >= seconds:
            self.renew()

    def assert_held(self) -> None:
        """DeposedError unless our entry is the head of a fresh listing (after renewing, if
        the last renewal is older than half the ttl)."""
        if self._version is None or self._renewed_at is None:
            raise DeposedError(f"{self.path}: not holding the lease", path=self.path)
        if self.clock() - self._renewed_at >= self.ttl / 2:
            self.renew()  # its append is confirmed by a fresh listing
        elif max(self._numbers(), default=0) != self._version:
            self._lose()
        # Last, with no file access after it: a holder stopped during the listing or the
        # renewal above is judged by the time it resumes, not by what it saw before.
        self.renew_if_older_than(self.ttl / 2)

    def _lose(self) -> None:
        try:
            _, value = self._head()
        except SpoolError:
            value = None
        lost = self.generation
        self._version = self._value = self._renewed_at = None
        who = "nobody (it was released or broken by an operator)"
        if value is not None and value.get("holder"):
            who = (
                f"{value['holder']} (pid {value.get('pid')} on {value.get('host')}, "
                f"generation {value.get('generation')})"
            )
        message = f"{self.path}: lease generation {lost} was taken over; now held by {who}"
        with contextlib.suppress(OSError):
            self.log_event("deposed", reason=message)
        raise DeposedError(message, path=self.path)

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
        log.warning("lease %s broken by %s: %s (was %s)", self.path, self.holder, reason, broken)
        self.log_event("break", reason=reason, previous=broken)
        return broken

    def log_event(self, event: str, *, reason: str, previous: LeaseInfo | None = None) -> None:
        """Append one line to ``<path>.log``: what happened to the lease, by whom, and why."""
        entry = {
            "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            "event": event,
            "by": f"{self.holder} (pid {os.getpid()} on {HOST})",
            "generation": self.generation,
            "reason": reason,
            "previous": dataclasses.asdict(previous) if previous else None,
        }
        append(f"{self.path}.log", (json.dumps(entry) + "\n").encode())

    def entry_path(self, version: int) -> str:
        """The file of entry `version` (`LeaseInfo.version`): its mtime is when it was made."""
        return self._entry(version)
