"""Spool queues: directories of message files, claimed by rename(2).

Layout of one queue (its root is ``<home>/queues/<name>``, ``<home>/completions`` or
``<home>/control``)::

    queue.json                    {"version": 1, "shards": S}, created put-if-absent
    priority.hint                 touched by every put with priority > 0
    ready/<ss>/<name>             S shard directories (ss = 2 hex digits)
    claimed/<worker>/<name>       claimed messages, one directory per claimant
    delayed/d<delay_ms>~<name>    put or nacked with a delay; promoted to ready/ once it has
                                  waited that long (on the promoter's own clock)
    dead/<name>                   quarantined messages (undecodable, oversized, malformed)
    dead/<name>.reason.json       why, when and by whom

Message names sort into service order::

    <rank:5>-<put_ns:19>-<id>.<attempt>.msg
      rank    = 32767 - priority   (priority in [-32768, 32767]; higher is served first)
      put_ns  = the putter's time.time_ns(); FIFO within a priority
      id      = [A-Za-z0-9_~=+@-]{1,100}: the caller's, or process token + counter; an id
                ending in "+<n>" names a message that carries n items (a multi-item message), which
                `counts` counts as n
      attempt = how many times the message was handed out and came back (nack / reap)

A message file is msgpack ``[1, payload]`` (1 = format version). It is written under a
temporary name in its shard and renamed into place (`spool.atomic`), so a listing never
shows a partial message. Names starting with a dot (temp files, NFS ``.nfsXXXX``) are
ignored everywhere.

Protocol and races:

* put: round-robin over shards, so many claimers do not all list one directory.
* claim: ``rename(ready/ss/N, claimed/<worker>/N)``. Of concurrent claimers exactly one
  rename succeeds. ENOENT means another claimer won, or (NFS) our rename succeeded and only
  its reply was lost: we check our own destination before giving up (R3).
* Claimers keep a sorted listing of each shard and serve the oldest head of the best
  priority (`spool.listings`): a listing is refreshed after `listing_ttl` seconds (longer
  for huge queues), when every cached listing is exhausted, after a lost rename in its
  shard, or within 0.1 s of a put with a raised priority (it touches priority.hint, which
  claimers stat every 0.1 s). A claimer that loses races walks a window of the oldest
  names of the best priority from a random place instead (FIFO to within that window),
  which spreads claimers apart instead of herding them onto the same names.
* ack: unlink the claimed file. nack: rename back to ready (or delayed) with attempt + 1.
  release: rename back to ready, attempt unchanged (it never ran). reap: a dead claimant's
  messages go back to ready with attempt + 1. Every transition is one rename, so a message
  is never lost or duplicated by a crash between steps.
* Poison (undecodable, over the size limit, malformed name) is moved to dead/ with a reason
  file written first; it never blocks the queue and is never silently dropped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import itertools
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgpack

from . import perms
from .atomic import (
    Durability,
    create_exclusive,
    fsync_dir,
    process_token,
    publish,
    publish_in,
    read_bytes,
    write_temp,
)
from .dirfds import DirFds, stat_and_list
from .errors import CorruptRecordError, InvalidNameError, MessageTooLargeError, StorageError
from .fsops import listdir, listed, take
from .layout import CLAIMED_DIR, DEAD_DIR, DELAYED_DIR, PRIORITY_HINT, QUEUE_META, READY_DIR, REASON_SUFFIX
from .listings import ShardListings
from .names import check_component

log = logging.getLogger("spool.queue")

QUEUE_FORMAT = 1
MESSAGE_FORMAT = 1
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767
_DELAYED_CHECK_INTERVAL = 0.1
_ID_RE = re.compile(r"[A-Za-z0-9_~=+@-]{1,100}\Z")
_HEAD_LEN = 26  # "<rank:5>-<put_ns:19>-"
_DEFAULT_PREFIX = f"{MAX_PRIORITY:05d}-"
_DELAY_MARK = "d"  # delayed/d<delay_ms>~<name>
_UNREAD_RETRY = 0.05  # seconds between tries to read a claimed message the client cannot see yet


class Message(NamedTuple):
    """A claimed message. `path` is where it lies now (under claimed/<worker>/)."""

    name: str
    path: str
    worker: str
    attempt: int
    payload: Any

    # Decoded from the name only when asked: the claim hot path needs just the attempt.
    @property
    def priority(self) -> int:
        return MAX_PRIORITY - int(self.name[:5])

    @property
    def put_ns(self) -> int:
        return int(self.name[6:25])

    @property
    def id(self) -> str:
        return self.name[_HEAD_LEN : self.name.rfind(".", _HEAD_LEN, -4)]


@dataclasses.dataclass(frozen=True, slots=True)
class DeadMessage:
    name: str
    path: str
    reason: str | None
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCounts:
    ready: int
    delayed: int
    claimed: dict[str, int]
    dead: int

    @property
    def claimed_total(self) -> int:
        return sum(self.claimed.values())


def items_in(name: str) -> int:
    """How many items the message `name` carries: n if its id ends in "+<n>", else 1."""
    dot = name.rfind(".", _HEAD_LEN, -4)
    plus = name.rfind("+", _HEAD_LEN, dot)
    if plus < 0:
        return 1
    n = name[plus + 1 : dot]
    return int(n) if n.isdigit() and 0 < len(n) < 7 else 1


def _count(names: Iterable[str]) -> int:
    return sum(items_in(n) if "+" in n else 1 for n in names)


def _listdir(directory: str) -> list[str]:
    try:
        return [n for n in listdir(directory) if n[0] != "."]
    except FileNotFoundError:
        return []


def parse_name(name: str) -> tuple[int, int, str, int] | None:
    """(priority, put_ns, id, attempt) of a message name, or None if malformed."""
    if len(name) < _HEAD_LEN + 7 or name[5] != "-" or name[25] != "-" or name[-4:] != ".msg":
        return None
    dot = name.rfind(".", _HEAD_LEN, -4)
    msg_id = name[_HEAD_LEN:dot]
    try:
        rank, put_ns, attempt = int(name[:5]), int(name[6:25]), int(name[dot + 1 : -4])
    except ValueError:
        return None
    if dot <= _HEAD_LEN or rank < 0 or attempt < 0 or put_ns < 0 or not _ID_RE.match(msg_id):
        return None
    return MAX_PRIORITY - rank, put_ns, msg_id, attempt


def _with_attempt(name: str, attempt: int) -> str:
    stem = name[:-4]
    return f"{stem[: stem.rfind('.')]}.{attempt}.msg"


def _attempt_of(name: str) -> int:
    """The attempt of a well-formed name, -1 otherwise (a cheap check for the claim path;
    `parse_name` is the full one)."""
    if len(name) < _HEAD_LEN + 7 or name[5] != "-" or name[25] != "-" or name[-4:] != ".msg":
        return -1
    dot = name.rfind(".", _HEAD_LEN + 1, -4)
    attempt = name[dot + 1 : -4]
    if dot < 0 or not (attempt.isdigit() and name[:5].isdigit() and name[6:25].isdigit()):
        return -1
    return int(attempt)


class SpoolQueue:
    """One spool queue. Safe to use from many processes on many hosts at once.

    A `SpoolQueue` object keeps per-process caches (shard listings, round-robin position);
    use one per process (or thread), not shared between threads.
    """

    def __init__(
        self,
        root: str,
        *,
        durability: Durability = Durability.PROCESS,
        shards: int = 16,
        max_message_bytes: int = 8 << 20,
        listing_ttl: float = 1.0,
    ):
        self.root = root
        self.durability = durability
        self.max_message_bytes = max_message_bytes
        self.listing_ttl = listing_ttl
        self.shards = self._open_layout(shards)
        self._ready = [f"{root}/{READY_DIR}/{s:02x}" for s in range(self.shards)]
        self._ready_set = frozenset(self._ready)
        self._claimed_root = f"{root}/{CLAIMED_DIR}"
        self._delayed = f"{root}/{DELAYED_DIR}"
        self._dead = f"{root}/{DEAD_DIR}"
        self._hint = f"{root}/{PRIORITY_HINT}"
        self._hint_seen: tuple[int, int] | None = None
        self._ids = itertools.count()
        self._packer = msgpack.Packer(use_bin_type=True)
        self._put_shard = random.randrange(self.shards)
        self._claim_dirs: dict[str, str] = {}
        # ready shards, claim directories and the root, held open: a message is then reached
        # by a lookup of its name, not a walk of its path (a round trip per component on NFS)
        self._dirs = DirFds()
        self.listings = ShardListings(self._ready, self._dirs, listing_ttl)  # the claim side's
        self._next_delayed_check = 0.0
        # claimed (the rename happened) but not readable yet: path -> (name, claimant)
        self._unread: dict[str, tuple[str, str]] = {}
        self._next_unread_check = 0.0
        self._delayed_seen_dir: tuple[int, int] | None = None  # delayed/'s times at its last listing
        self._delayed_names: list[str] = []
        self._delayed_listed_at = float("-inf")
        self._delayed_seen: dict[str, float] = {}  # delayed entry -> when its age started (monotonic)
        #: called right before every rename or publication this object makes; a holder of
        #: the coordinator lease sets it, so that once deposed it moves no message
        self.fence: Callable[[], None] | None = None

    # ----------------------------------------------------------------- layout
    def _open_layout(self, shards: int) -> int:
        meta = f"{self.root}/{QUEUE_META}"
        try:
            return self._read_meta(meta)
        except FileNotFoundError:
            pass
        try:
            for sub in (CLAIMED_DIR, DELAYED_DIR, DEAD_DIR):
                perms.makedirs(f"{self.root}/{sub}")
            for s in range(shards):
                perms.makedirs(f"{self.root}/{READY_DIR}/{s:02x}")
        except OSError as e:
            raise StorageError.from_os("create queue directories in", self.root, e) from e
        data = json.dumps({"version": QUEUE_FORMAT, "shards": shards}).encode()
        # RACE: concurrent first users: the first link(2) wins and everyone adopts its shard count.
        create_exclusive(meta, data, self.durability)
        return self._read_meta(meta)

    def _read_meta(self, meta: str) -> int:
        raw = read_bytes(meta, max_bytes=65536)
        try:
            info = json.loads(raw)
            version, shards = info["version"], info["shards"]
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptRecordError(f"{meta} is corrupt: {e}", path=meta) from None
        if version != QUEUE_FORMAT or not isinstance(shards, int) or not 1 <= shards <= 256:
            raise CorruptRecordError(f"{meta}: unsupported queue format {info!r}", path=meta)
        for s in range(shards):
            # A queue whose shard directories were deleted by hand is repaired rather than wedged.
            if not os.path.isdir(f"{self.root}/{READY_DIR}/{s:02x}"):
                perms.makedirs(f"{self.root}/{READY_DIR}/{s:02x}")
        for sub in (CLAIMED_DIR, DELAYED_DIR, DEAD_DIR):
            perms.makedirs(f"{self.root}/{sub}")
        return shards

    # -------------------------------------------------------------------- put
    def encode(self, payload: Any) -> bytes:
        """The message file for `payload` (checked against the size limit)."""
        try:
            data = self._packer.pack([MESSAGE_FORMAT, payload])
        except (TypeError, ValueError, OverflowError) as e:
            self._packer.reset()
            raise TypeError(f"{self.root}: payload cannot be encoded as msgpack: {e}") from e
        if len(data) > self.max_message_bytes:
            raise MessageTooLargeError(
                f"{self.root}: message of {len(data)} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes; nothing was written",
                path=self.root,
            )
        return data

    def _name_prefix(self, priority: int) -> str:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority {priority} is outside [{MIN_PRIORITY}, {MAX_PRIORITY}]")
        return f"{MAX_PRIORITY - priority:05d}-"

    def put(
        self,
        payload: Any,
        priority: int = 0,
        *,
        msg_id: str | None = None,
        delay: float = 0.0,
        order_ns: int | None = None,
    ) -> str:
        """Enqueue `payload` (anything msgpack encodes); return the message name.

        Parameters:
            delay: seconds before it may be claimed (it waits in delayed/ until a claimer
                promotes it: see `promote_due`).
            order_ns: the put time it is served by (default: now); an item taken out of
                a multi-item message and queued alone keeps that message's place with it.

        Raises:
            MessageTooLargeError: the encoded message exceeds `max_message_bytes`.
            StorageError: the write failed (e.g. ENOSPC); no partial message is visible.
        """
        return self.put_encoded(self.encode(payload), priority, msg_id, delay=delay, order_ns=order_ns)

    def put_encoded(
        self,
        data: bytes,
        priority: int = 0,
        msg_id: str | None = None,
        *,
        delay: float = 0.0,
        order_ns: int | None = None,
    ) -> str:
        """Enqueue a message file made by `encode`."""
        prefix = _DEFAULT_PREFIX if priority == 0 and type(priority) is int else self._name_prefix(priority)
        if msg_id is None:
            msg_id = f"{process_token()}{next(self._ids):x}"
        elif not isinstance(msg_id, str) or not _ID_RE.match(msg_id):
            raise InvalidNameError(
                f"message id {msg_id!r} is not allowed: use [A-Za-z0-9_~=+@-], 1-100 chars"
            )
        # time_ns() has 19 digits from 2001 to 2286: the width of the field without formatting.
        if order_ns is None:
            order_ns = time.time_ns()
        elif not 10**18 <= order_ns < 10**19:
            raise ValueError(f"order_ns {order_ns!r} is not a time in nanoseconds from 2001 to 2286")
        name = f"{prefix}{order_ns}-{msg_id}.0.msg"
        if delay > 0:
            publish_in(self._delayed, self._delayed_entry(name, delay), data, self.durability, self.fence)
            return name
        shard = self._put_shard
        self._put_shard = (shard + 1) % self.shards
        self._publish(self._ready[shard], name, data)
        if priority > 0:
            self._touch_hint()
        return name

    def _publish(self, directory: str, name: str, data: bytes) -> None:
        try:
            publish_in(directory, name, data, self.durability, self.fence, self._dirs.fd(directory))
        except StorageError:
            if not self._dirs.gone(directory):
                raise
            # the held descriptor names a directory removed (and maybe made again) since
            self._dirs.forget(directory)
            publish_in(directory, name, data, self.durability, self.fence, self._dirs.fd(directory))

    def _touch_hint(self) -> None:
        """Tell claimers a message may overtake what they have cached (checked every 0.1 s)."""
        try:
            os.utime(self._hint)
        except FileNotFoundError:
            fd = os.open(self._hint, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, perms.FILE_MODE)
            perms.fix(fd)
            os.close(fd)

    def put_many(self, payloads: Iterable[Any], priority: int = 0) -> list[str]:
        """Enqueue several payloads; with `machine` durability each directory is fsynced once."""
        encoded = [self.encode(p) for p in payloads]
        if self.durability is not Durability.MACHINE:
            return [self.put_encoded(data, priority) for data in encoded]
        prefix = self._name_prefix(priority)
        staged = []
        for data in encoded:
            directory = self._ready[self._next_put_shard()]
            name = f"{prefix}{time.time_ns():019d}-{process_token()}{next(self._ids):x}.0.msg"
            staged.append((write_temp(directory, data, Durability.MACHINE), directory, name))
        for tmp, directory, name in staged:
            publish(tmp, f"{directory}/{name}", Durability.PROCESS, self.fence)
        for directory in {d for _, d, _ in staged}:
            fsync_dir(directory)
        if priority > 0:
            self._touch_hint()
        return [name for _, _, name in staged]

    def _next_put_shard(self) -> int:
        shard = self._put_shard
        self._put_shard = (shard + 1) % self.shards
        return shard

    # ------------------------------------------------------------------ claim
    def _claim_dir(self, worker: str) -> str:
        directory = self._claim_dirs.get(worker)
        if directory is None:
            directory = f"{self._claimed_root}/{check_component(worker, 'worker id')}"
            perms.makedirs(directory)
            self._claim_dirs[worker] = directory
        return directory

    def claim(self, worker: str, max_n: int = 1) -> list[Message]:
        """Claim up to `max_n` messages for `worker`; returns them in service order.

        Each returned message now lies in claimed/<worker>/ and belongs to this claimant
        until it is acked, nacked, released or reaped.
        """
        claim_dir = self._claim_dirs.get(worker) or self._claim_dir(worker)
        now = time.monotonic()
        if now >= self._next_delayed_check:
            self._next_delayed_check = now + _DELAYED_CHECK_INTERVAL
            self.promote_due()
            try:
                root_fd = self._dirs.fd(self.root)
                st = os.stat(self._hint) if root_fd is None else os.stat(PRIORITY_HINT, dir_fd=root_fd)
                hint = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                hint = None
            if hint != self._hint_seen:
                self._hint_seen = hint
                self.listings.expire()
        listings = self.listings
        listings.refresh(now)
        out: list[Message] = []
        if self._unread and now >= self._next_unread_check:
            out = self._load_unread(worker, max_n)
            self._next_unread_check = now + _UNREAD_RETRY
        relisted_all = False
        while len(out) < max_n:
            picked = listings.pick()
            if picked is None:
                if relisted_all:
                    break
                relisted_all = True
                listings.relist_changed(now)
                continue
            name, shard = picked
            dst = f"{claim_dir}/{name}"
            if self.fence is not None:
                self.fence()
            ready, claim_fd = self._ready[shard], self._dirs.fd(claim_dir)
            try:
                # RACE: another claimer may rename it first; a reply lost on NFS is told apart
                # by our own destination (`fsops.take`).
                won = take(f"{ready}/{name}", dst, self._dirs.fd(ready), claim_fd)
            except OSError as e:
                self._dirs.forget_all()  # a handle went stale: the next claim opens them afresh
                raise StorageError.from_os("claim", f"{ready}/{name}", e) from e
            if not won:
                if self._dirs.gone(claim_dir):
                    self._dirs.forget(claim_dir)
                    perms.makedirs(claim_dir)  # a sweeper removed it: we were judged dead
                listings.lost(shard, now)
                continue
            listings.won()
            msg = self._load(dst, name, worker, claimed_now=True, dir_fd=claim_fd)
            if msg is not None:
                out.append(msg)
        return out

    def _load_unread(self, worker: str, max_n: int) -> list[Message]:
        """Messages this object claimed but could not read yet (see `_load`)."""
        out = []
        for path, (name, owner) in list(self._unread.items()):
            if len(out) >= max_n:
                break
            if owner != worker:
                continue
            del self._unread[path]
            msg = self._load(path, name, worker, claimed_now=True)  # back in _unread if still unreadable
            if msg is not None:
                out.append(msg)
        return out

    def _load(
        self, path: str, name: str, worker: str, *, claimed_now: bool = False, dir_fd: int | None = None
    ) -> Message | None:
        """The message at `path`; None if it is gone or poison (then quarantined).

        Parameters:
            claimed_now: this object just claimed it: if the server lists it although it
                cannot be read yet, keep it for a later claim (`_unread`).
            dir_fd: a held descriptor of its directory (it is opened relative to it).
        """
        attempt = _attempt_of(name)
        if attempt < 0:
            self.quarantine(path, f"malformed message name {name!r}")
            return None
        try:
            data = read_bytes(path, self.max_message_bytes, dir_fd=dir_fd)
        except FileNotFoundError:
            # RACE: reaped by a sweeper that judged us dead (it is back in ready/), or (NFS)
            # our lookup answered from a negative cache entry, made a moment ago when the
            # file was not there yet. A listing asks the server: if it is there, it is ours,
            # and a later claim loads it.
            if claimed_now and listed(path):
                self._unread[path] = (name, worker)
            return None
        except CorruptRecordError as e:
            self.quarantine(path, f"oversized: {e}")
            return None
        except OSError as e:
            raise StorageError.from_os("read", path, e) from e
        try:
            obj = msgpack.unpackb(data)
        except Exception as e:  # msgpack raises several unrelated types for garbage
            self.quarantine(path, f"undecodable msgpack: {type(e).__name__}: {e}")
            return None
        if type(obj) is not list or len(obj) != 2 or obj[0] != MESSAGE_FORMAT:
            self.quarantine(path, f"not a message of format {MESSAGE_FORMAT}")
            return None
        return Message(name, path, worker, attempt, obj[1])

    # ------------------------------------------------------- settle a message
    def ack(self, msg: Message) -> bool:
        """Remove a processed message. False if it was no longer ours (reaped meanwhile)."""
        claim_dir = self._claim_dirs.get(msg.worker)
        fd = self._dirs.fd(claim_dir) if claim_dir and msg.path == f"{claim_dir}/{msg.name}" else None
        try:
            if fd is None:
                os.unlink(msg.path)
            else:
                os.unlink(msg.name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False  # RACE: a sweeper reaped it after judging the claimant dead

    def nack(self, msg: Message, delay: float = 0.0) -> str | None:
        """Return a message that failed; attempt + 1. With `delay` > 0 it waits in delayed/
        (see `promote_due` for whose clock measures the delay).
        Returns the new name, or None if the message was no longer ours.
        """
        new_name = _with_attempt(msg.name, msg.attempt + 1)
        if delay > 0:
            dst = f"{self._delayed}/{self._delayed_entry(new_name, delay)}"
        else:
            dst = f"{self._ready[self._next_put_shard()]}/{new_name}"
        return new_name if self._move(msg.path, dst) else None

    def release(self, msg: Message) -> str | None:
        """Give back a message that was claimed but never started (attempt unchanged)."""
        return msg.name if self._move(msg.path, f"{self._ready[self._next_put_shard()]}/{msg.name}") else None

    def _move(self, src: str, dst: str) -> bool:
        if self.fence is not None:
            self.fence()
        try:
            if not take(src, dst):
                return False  # RACE: reaped, acked or promoted by someone else first
        except OSError as e:
            raise StorageError.from_os("move", src, e) from e
        if self.durability is Durability.MACHINE:
            fsync_dir(os.path.dirname(dst))
        return True

    def _delayed_entry(self, name: str, delay: float) -> str:
        """The delayed/ name of message `name` put back for `delay` seconds; this object
        starts its age now (it is the first to know of it)."""
        entry = f"{_DELAY_MARK}{max(1, round(delay * 1000))}~{name}"
        self._delayed_seen[entry] = time.monotonic()
        return entry

    def _delayed_due(self, entries: list[str], now: float) -> list[tuple[str, str, float]]:
        """(entry, message name, seconds until due on this process's clock) of well-formed
        delayed entries; malformed ones are quarantined. Entries first seen now start their
        age now (so a message is never promoted before its delay has passed)."""
        seen = self._delayed_seen
        out = []
        listed = set()
        for entry in entries:
            head, sep, name = entry.partition("~")
            if entry[0] == "." or not sep:
                continue
            if head[:1] == _DELAY_MARK and head[1:].isdigit() and parse_name(name) is not None:
                listed.add(entry)
                first = seen.setdefault(entry, now)
                out.append((entry, name, first + int(head[1:]) / 1000 - now))
            elif head.isdigit() and parse_name(name) is not None:
                # An earlier tuiflow's entry: due at this wall-clock time of its putter.
                out.append((entry, name, int(head) / 1000 - time.time()))
            else:
                self.quarantine(f"{self._delayed}/{entry}", f"malformed delayed entry {entry!r}")
        for gone in [e for e in seen if e not in listed]:
            del seen[gone]
        return out

    def _delayed_entries(self, now: float) -> list[str]:
        """The names in delayed/, listed again only when the directory changed (an fstat of
        its held descriptor: claimers look every 0.1 s, and on NFS a listing by path is a
        walk, an open, a read and a close), and at least every `listing_ttl` (a change in
        the same clock tick as the last listing leaves the times as they were).

        Raises FileNotFoundError if there is no delayed/ directory."""
        directory = self._delayed
        fd = self._dirs.fd(directory)
        if fd is not None:
            try:
                st = os.fstat(fd)
                if st.st_nlink:
                    seen = (st.st_mtime_ns, st.st_ctime_ns)
                    if seen == self._delayed_seen_dir and now - self._delayed_listed_at < self.listing_ttl:
                        return self._delayed_names
                    self._delayed_names = os.listdir(fd)
                    self._delayed_seen_dir, self._delayed_listed_at = seen, now
                    return self._delayed_names
            except OSError as e:
                if e.errno != errno.ESTALE:
                    raise
            self._dirs.forget(directory)  # removed since it was opened, or a stale handle
        self._delayed_seen_dir = None
        return listdir(directory)

    def promote_due(self, now: float | None = None) -> int:
        """Move delayed messages whose delay has passed into ready/; returns how many moved.

        A message's delay is judged by its age on *this process's* monotonic clock: from its
        put (or nack) if this object made it, else from when this object first listed it.
        No timestamp written on another host is compared with this host's clock, so a
        promoter whose clock is off never promotes early; one that did not put a message may
        promote it late by the time it took to notice it.

        Parameters:
            now: this process's `time.monotonic()` (injectable for tests).
        """
        now = time.monotonic() if now is None else now
        try:
            entries = self._delayed_entries(now)
        except FileNotFoundError:
            return 0
        moved = 0
        for entry, name, due_in in self._delayed_due(entries, now):
            if due_in <= 0 and self._move(
                f"{self._delayed}/{entry}", f"{self._ready[self._next_put_shard()]}/{name}"
            ):
                moved += 1  # RACE: several promoters: the rename picks one winner
                self._delayed_seen.pop(entry, None)
        return moved

    def next_due_in(self) -> float | None:
        """Seconds until the earliest delayed message is due (0 if overdue), None if none waits."""
        now = time.monotonic()
        try:
            dues = [due_in for _, _, due_in in self._delayed_due(self._delayed_entries(now), now)]
        except FileNotFoundError:
            return None
        if not dues:
            return None
        due = max(0.0, min(dues))
        # Whoever waits for this due time claims next: let that claim promote at once.
        self._next_delayed_check = min(self._next_delayed_check, now + due)
        return due

    def claimed_messages(self, worker: str) -> list[Message]:
        """The messages `worker` holds, loaded where they lie (for a sweeper that decides,
        message by message, to `release` or `ack` them after the worker died)."""
        directory = f"{self._claimed_root}/{check_component(worker, 'worker id')}"
        try:
            names = sorted(n for n in listdir(directory) if n[0] != ".")
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            msg = self._load(f"{directory}/{name}", name, worker)
            if msg is not None:
                out.append(msg)
        return out

    def forget_claimant(self, worker: str) -> None:
        """Remove a dead claimant's (empty) directory."""
        try:
            os.rmdir(f"{self._claimed_root}/{check_component(worker, 'worker id')}")
        except OSError:
            pass  # RACE: not empty after all (it is alive and claimed again)
        self._dirs.forget(f"{self._claimed_root}/{worker}")
        self._claim_dirs.pop(worker, None)

    def reap(self, worker: str) -> list[str]:
        """Return every message claimed by `worker` (judged dead) to ready/, attempt + 1."""
        directory = f"{self._claimed_root}/{check_component(worker, 'worker id')}"
        try:
            names = listdir(directory)
        except FileNotFoundError:
            return []
        requeued = []
        for name in sorted(names):
            if name[0] == ".":
                continue
            parsed = parse_name(name)
            if parsed is None:
                self.quarantine(f"{directory}/{name}", f"malformed message name {name!r}")
                continue
            new_name = _with_attempt(name, parsed[3] + 1)
            if self._move(f"{directory}/{name}", f"{self._ready[self._next_put_shard()]}/{new_name}"):
                requeued.append(new_name)
        try:
            os.rmdir(directory)
        except OSError:
            pass  # RACE: the worker is alive after all and claimed again; leave its directory
        self._dirs.forget(directory)
        self._claim_dirs.pop(worker, None)
        return requeued

    # ------------------------------------------------------------- quarantine
    def quarantine(self, path: str, reason: str) -> str:
        """Move the file at `path` into dead/ with a reason file; returns its new path."""
        name = os.path.basename(path)
        info = {
            "reason": reason,
            "queue": self.root,
            "from": os.path.relpath(path, self.root),
            "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            "by": f"{os.uname().nodename}:{os.getpid()}",
        }
        try:
            info["bytes"] = os.lstat(path).st_size
        except OSError:
            pass
        perms.makedirs(self._dead)
        # The reason goes first: a crash between the two steps leaves the message where it was
        # (it will be quarantined again), never a dead message without its reason.
        reason_path = f"{self._dead}/{name}{REASON_SUFFIX}"
        publish(
            write_temp(self._dead, json.dumps(info).encode(), self.durability), reason_path, self.durability
        )
        dst = f"{self._dead}/{name}"
        try:
            moved = take(path, dst)  # RACE: False when someone else quarantined or removed it first
        except OSError as e:
            raise StorageError.from_os("quarantine", path, e) from e
        if moved:
            log.warning("%s: message %s moved to %s: %s", self.root, name, dst, reason)
        return dst

    def dead(self) -> list[DeadMessage]:
        out = []
        try:
            names = sorted(listdir(self._dead))
        except FileNotFoundError:
            return out
        for name in names:
            if name[0] == "." or name.endswith(REASON_SUFFIX):
                continue
            info: dict[str, Any] = {}
            try:
                info = json.loads(read_bytes(f"{self._dead}/{name}{REASON_SUFFIX}", max_bytes=1 << 20))
            except (OSError, ValueError, CorruptRecordError):
                pass
            out.append(DeadMessage(name, f"{self._dead}/{name}", info.get("reason"), info))
        return out

    # -------------------------------------------------------------- inspection
    def claimants(self) -> list[str]:
        """Names of every claim directory (a claimant that has claimed here at least once)."""
        try:
            return [n for n in listdir(self._claimed_root) if n[0] != "."]
        except FileNotFoundError:
            return []

    def holds_any(self, worker: str) -> bool:
        """Whether `worker` holds a claimed message here now."""
        try:
            names = listdir(f"{self._claimed_root}/{check_component(worker, 'worker id')}")
        except (FileNotFoundError, NotADirectoryError):
            return False
        return any(n[0] != "." for n in names)

    def claimed(self) -> dict[str, list[str]]:
        """Names of claimed messages, per claimant."""
        out: dict[str, list[str]] = {}
        try:
            workers = listdir(self._claimed_root)
        except FileNotFoundError:
            return out
        for worker in workers:
            if worker[0] == ".":
                continue
            try:
                names = [n for n in listdir(f"{self._claimed_root}/{worker}") if n[0] != "."]
            except (FileNotFoundError, NotADirectoryError):
                continue
            if names:
                out[worker] = sorted(names)
        return out

    def all_names(self) -> list[str]:
        """Names of every message anywhere in the queue (ready, delayed, claimed)."""
        names = self.ready_names()
        try:
            names += [n.partition("~")[2] for n in listdir(self._delayed) if n[0] != "."]
        except FileNotFoundError:
            pass
        for claimed in self.claimed().values():
            names += claimed
        return names

    def payloads(
        self, ids: Iterable[str], each: Callable[[Any], None] | None = None
    ) -> tuple[list[Any], bool]:
        """The payloads of the messages with these ids, wherever they lie (read only), and
        whether every one was found where a listing had just seen it (False: one moved
        meanwhile, so the answer may be short; sweepers then look again later).

        Parameters:
            each: called with each payload as it is read, instead of collecting them (the
                list returned is then empty): a deep queue's payloads are never all in memory.
        """
        want = set(ids)
        places = [(d, n) for d in self._ready for n in self._shard_names(d)]
        places += [(self._delayed, n) for n in _listdir(self._delayed)]
        for worker, names in self.claimed().items():
            places += [(f"{self._claimed_root}/{worker}", n) for n in names]
        out: list[Any] = []
        complete = True
        for directory, name in places:
            parsed = parse_name(name.partition("~")[2] if directory == self._delayed else name)
            if parsed is None or parsed[2] not in want:
                continue
            try:
                held = self._dirs.fd(directory) if directory in self._ready_set else None
                obj = msgpack.unpackb(read_bytes(f"{directory}/{name}", self.max_message_bytes, dir_fd=held))
            except FileNotFoundError:
                complete = False
                continue
            except Exception:  # poison (a claimer quarantines it) or unreadable: not a payload
                continue
            if type(obj) is list and len(obj) == 2 and obj[0] == MESSAGE_FORMAT:
                if each is None:
                    out.append(obj[1])
                else:
                    each(obj[1])
        return out, complete

    def ready_names(self) -> list[str]:
        return sorted(n for d in self._ready for n in self._shard_names(d))

    def _shard_names(self, directory: str) -> list[str]:
        """The message names in a ready shard (none if it is missing), listed through its
        held descriptor: sweepers and dashboards list every shard often."""
        try:
            return stat_and_list(self._dirs, directory)[1]
        except FileNotFoundError:
            return []

    def counts(self) -> QueueCounts:
        """Depths by state, in items (a multi-item message counts as its items); costs one
        listing of every directory (use for dashboards, not hot paths)."""
        ready = sum(_count(self._shard_names(d)) for d in self._ready)
        delayed = _count(_listdir(self._delayed))
        dead = _count(n for n in _listdir(self._dead) if not n.endswith(REASON_SUFFIX))
        claimed = {w: _count(ns) for w, ns in self.claimed().items()}
        return QueueCounts(ready, delayed, claimed, dead)

    def directories(self) -> list[str]:
        """Every directory of the queue (for `spool.janitor`)."""
        return [*self._ready, self._delayed, self._dead, self._claimed_root] + [
            f"{self._claimed_root}/{w}" for w in self.claimants()
        ]

    def watch_paths(self) -> list[str]:
        """Directories whose change means new work may be ready (for `spool.watch`)."""
        return [*self._ready, self._delayed]
