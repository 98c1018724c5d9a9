"""A claimer's cached listings of a queue's ready shards, and the order it takes names in.

A claimer does not list sixteen directories for every claim: it keeps a sorted listing of
each shard and takes the oldest head of the best priority. A listing is made again after
`listing_ttl` seconds (longer for a huge queue, so that listing stays ~2 % of the work),
when every cached listing is used up and the shard's directory changed since, at once
after a lost rename in that shard, or when a put with a raised priority touched the
queue's hint (`expire`).

Under contention (this claimer lost renames lately) taking the heads makes claimers
collide, and each one's listing goes stale with what the others took. A contended claimer
walks instead: from a random place among the first `spread` names of the best priority in
one shard, on through that shard, and from another random place after each loss; the
window doubles with each loss and narrows by one after 16 wins in a row. Order within a
priority is then kept only over that window, and only while claimers contend. A loss in a
shard that then lists empty means the queue is draining under the others: every cached
listing is as stale, and all are dropped.

Shards are listed through descriptors held in a `DirFds` (no walk of their paths).
"""

from __future__ import annotations

import collections
import heapq
import os
import random
import time

from . import perms
from .dirfds import DirFds, stat_and_list

_MAX_SPREAD = 1024  # names a contended claimer picks among (of the best priority)
_MIN_SPREAD = 16  # where a first lost rename takes the spread from 1
_RANK = 5  # a name's first characters: its priority


class ShardListings:
    """The cached listings of the ready shards `directories` (one claimer's, one thread's)."""

    def __init__(self, directories: list[str], dirs: DirFds, listing_ttl: float):
        self.directories = directories
        self.dirs = dirs
        self.listing_ttl = listing_ttl
        n = len(directories)
        self._listing: list[collections.deque[str]] = [collections.deque() for _ in range(n)]
        self._heads: list[tuple[str, int]] = []  # (first name, shard) of each non-empty listing
        self._listed_at = [float("-inf")] * n
        self._ttl = [listing_ttl] * n
        self._seen: list[tuple[int, int] | None] = [None] * n  # (mtime, inode) when listed
        self._next_refresh = float("-inf")
        #: names a contended claimer picks among; 1: not contended, the oldest head
        self.spread = 1
        self._walk: tuple[int, int] | None = None  # (shard, index) of a contended walk
        self._wins = 0  # in a row, since the last loss

    def expire(self) -> None:
        """List every shard again at the next `refresh` (a raised priority was put)."""
        self._next_refresh = float("-inf")
        self._listed_at = [float("-inf")] * len(self.directories)

    def refresh(self, now: float) -> None:
        """List again the shards whose listing is older than its time to live."""
        if now < self._next_refresh:
            return
        for shard in range(len(self.directories)):
            if now - self._listed_at[shard] > self._ttl[shard]:
                self._relist(shard, now)
        self._next_refresh = min(at + ttl for at, ttl in zip(self._listed_at, self._ttl, strict=True))

    def relist_changed(self, now: float) -> None:
        """List again the shards whose directory changed since their last listing (an
        fstat each: an idle claimer stays cheap)."""
        for shard in range(len(self.directories)):
            if self._changed(shard):
                self._relist(shard, now)

    def pick(self) -> tuple[str, int] | None:
        """The next name to try and its shard, taken out of the listings; None if none is left."""
        heads = self._heads
        if not heads:
            return None
        if self.spread > 1:
            return self._pick_spread(heads)
        name, shard = heapq.heappop(heads)
        dq = self._listing[shard]
        dq.popleft()
        if dq:
            heapq.heappush(heads, (dq[0], shard))
        return name, shard

    def lost(self, shard: int, now: float) -> None:
        """The name picked from `shard` was gone: another claimer took it."""
        self._walk = None
        self._wins = 0
        self.spread = min(_MAX_SPREAD, max(self.spread * 2, _MIN_SPREAD))
        self._relist(shard, now)
        if not self._listing[shard]:
            # That shard ran dry while we held a listing of it: the queue is draining under
            # other claimers, and our listings of the other shards are as stale. Drop them,
            # and what they were listed at, so that every shard is listed again.
            for dq in self._listing:
                dq.clear()
            self._heads = []
            self._seen = [None] * len(self.directories)

    def won(self) -> None:
        """The name picked was ours."""
        if self.spread > 1:
            self._wins += 1
            if self._wins >= 16:
                self.spread -= 1
                self._wins = 0

    def _pick_spread(self, heads: list[tuple[str, int]]) -> tuple[str, int]:
        rank = heads[0][0][:_RANK]
        walk = self._walk
        if walk is not None and walk[1] < len(self._listing[walk[0]]):
            shard, i = walk
        else:
            shard = random.choice([s for n, s in heads if n[:_RANK] == rank])
            i = random.randrange(min(len(self._listing[shard]), self.spread))
        dq = self._listing[shard]
        if dq[i][:_RANK] != rank:
            shard, i = heads[0][1], 0  # past the best priority here: back to the best head
            dq = self._listing[shard]
        name = dq[i]
        if i:
            del dq[i]
        else:
            heads.remove((name, shard))
            heapq.heapify(heads)
            dq.popleft()
            if dq:
                heapq.heappush(heads, (dq[0], shard))
        self._walk = (shard, i)
        return name, shard

    def _changed(self, shard: int) -> bool:
        directory = self.directories[shard]
        fd = self.dirs.fd(directory)
        try:
            st = os.stat(directory if fd is None else fd)
        except FileNotFoundError:
            return True
        # a held directory removed since (nlink 0) or replaced (another inode) shows as changed
        return st.st_nlink == 0 or (st.st_mtime_ns, st.st_ino) != self._seen[shard]

    def _relist(self, shard: int, now: float) -> None:
        directory = self.directories[shard]
        t0 = time.perf_counter()
        try:
            st, names = stat_and_list(self.dirs, directory)
            self._seen[shard] = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            perms.makedirs(directory)  # deleted by hand: repaired rather than wedged
            names = []
            self._seen[shard] = None
        names.sort()
        self._listing[shard] = collections.deque(names)
        self._walk = None
        self._listed_at[shard] = now
        # Keep re-listing all shards under ~2 % of the time: a deep queue (100k messages) is
        # re-listed less often, so its claim cost does not grow with its depth. Messages put
        # with a raised priority do not wait for that: they touch the priority hint.
        n = len(self.directories)
        self._ttl[shard] = max(self.listing_ttl, 50 * n * (time.perf_counter() - t0))
        self._next_refresh = min(self._next_refresh, now + self._ttl[shard])
        self._heads = [(dq[0], s) for s, dq in enumerate(self._listing) if dq]
        heapq.heapify(self._heads)


__all__ = ["ShardListings"]
