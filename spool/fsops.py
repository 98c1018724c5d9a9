"""Filesystem calls that survive what NFS clients do to them.

Two faults of real NFS clients are handled here, and nowhere else: every read of a shared
file and every rename or link of one goes through this module.

**ESTALE.** A file handle the client holds no longer names a file on the server (another
client replaced or removed it, or the server restarted and forgot it). Opening the path
again resolves it afresh. `read_bytes`, `read_head`, `listdir` and the renames retry a
call that fails with ESTALE up to `STALE_RETRIES` times, with a short doubling backoff
(5 ms, 10 ms, ... 160 ms in all), and then raise one `StorageError` that names the path.

**Lost replies.** RENAME and LINK are not idempotent. When the reply to one is lost, the
client sends it again; the server has already done it, and unless its duplicate-request
cache remembers the first one it answers the second as a fresh request: ENOENT (the
source of the rename is gone) or EEXIST (the link's name exists). The caller would
conclude that an operation failed although it happened. Every such call here settles the
question from evidence only this caller can have:

* `take(src, dst)` moves a file that others may be moving too (a claim, a promotion, a
  reap), to a destination only this caller uses: on ENOENT, the file is ours if it is at
  `dst`.
* `place(tmp, dst)` renames a temporary file (a name nobody else knows, `atomic`) into
  place, replacing what is there: on ENOENT, it happened if `tmp` is gone.
* `link_new(tmp, dst)` creates `dst` as a second name of `tmp` unless `dst` exists
  (put-if-absent): on EEXIST, it is ours if `dst` is the same file as `tmp`.

A lookup may be answered from the client's cache (a negative dentry says "no such file"
for up to `acdirmin` seconds after another client created it; FUSE keeps both positive
and negative entries), so the evidence comes from a listing of the directory, which asks
the server. Listings are costly in big directories, but they are made only when a call
failed, never on the way a call succeeds.

O_EXCL creates need no such care: NFSv3 and v4 make an exclusive create idempotent with a
verifier the client sends, so a retransmitted one succeeds.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import StorageError

#: attempts of a call that fails with ESTALE before it is reported
STALE_RETRIES = 6
_BACKOFF = 0.005

T = TypeVar("T")


def retry_stale(call: Callable[[], T], action: str, path: str) -> T:
    """`call()`, again while it fails with ESTALE; then `StorageError` naming `path`.

    Every other error is raised unchanged (callers decide what ENOENT means).
    """
    delay = _BACKOFF
    for _ in range(STALE_RETRIES - 1):
        try:
            return call()
        except OSError as e:
            if e.errno != errno.ESTALE:
                raise
        time.sleep(delay)
        delay *= 2
    try:
        return call()
    except OSError as e:
        if e.errno != errno.ESTALE:
            raise
        raise StorageError(
            f"cannot {action} {path}: stale file handle (ESTALE) {STALE_RETRIES} times in a row; "
            "the file server may be failing over",
            path=path,
            errno=e.errno,
        ) from e


def listdir(path: str) -> list[str]:
    """The names in directory `path` (ESTALE retried). FileNotFoundError passes through."""
    return retry_stale(lambda: os.listdir(path), "list", path)


def listed(path: str) -> bool | None:
    """Whether the server lists `path` in its directory; None if the directory is gone.
    (A lookup of the name alone may be answered from a cache.)"""
    directory, name = os.path.split(path)
    try:
        return name in listdir(directory or ".")
    except (FileNotFoundError, NotADirectoryError):
        return None


def _rename(src: str, dst: str, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
    if src_dir_fd is None and dst_dir_fd is None:
        retry_stale(lambda: os.rename(src, dst), "rename", src)
        return
    # relative to held directories (`spool.dirfds`): the names alone are looked up
    a = src if src_dir_fd is None else os.path.basename(src)
    b = dst if dst_dir_fd is None else os.path.basename(dst)
    retry_stale(lambda: os.rename(a, b, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd), "rename", src)


def _lexists(path: str, dir_fd: int | None) -> bool:
    try:
        if dir_fd is None:
            os.lstat(path)
        else:
            os.lstat(os.path.basename(path), dir_fd=dir_fd)
        return True
    except OSError:
        return False


def take(src: str, dst: str, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> bool:
    """Move `src` to `dst`, a name only this caller uses. True if this call moved it (also
    when the reply said ENOENT but it happened); False if `src` was gone (someone else moved
    it first). Other errors raise OSError.

    Parameters:
        src_dir_fd, dst_dir_fd: descriptors of the directories of `src` and `dst`, held by
            the caller: the rename then names the files relative to them.
    """
    try:
        _rename(src, dst, src_dir_fd, dst_dir_fd)
        return True
    except FileNotFoundError:
        pass
    # RACE: another taker won, or (NFS) ours happened and only its reply was lost: the
    # destination is ours alone, so finding the file there proves the second.
    return _lexists(dst, dst_dir_fd) or listed(dst) is True


def place(tmp: str, dst: str, dir_fd: int | None = None) -> None:
    """Rename the temporary file `tmp` (a name only this caller knows) over `dst`.

    Parameters:
        dir_fd: a held descriptor of the directory of both (names relative to it).

    Raises OSError if it did not happen (ENOENT: `dst`'s directory is gone).
    """
    try:
        _rename(tmp, dst, dir_fd, dir_fd)
        return
    except FileNotFoundError:
        # RACE (NFS): a lost reply. Nobody else knows the temporary name, so if it is gone
        # from its directory only our rename can have moved it.
        if listed(tmp) is False:
            return
        raise


def link_new(tmp: str, dst: str) -> bool:
    """Make `dst` a second name of `tmp` unless `dst` exists. True if this call created it
    (also when the reply said EEXIST but it happened); False if another file has the name."""
    try:
        retry_stale(lambda: os.link(tmp, dst), "link", dst)
        return True
    except FileExistsError:
        pass
    # RACE: someone else created dst, or (NFS) our link happened and only its reply was
    # lost. Then dst is our file: tmp has a second link, and dst's inode is tmp's.
    try:
        st = os.stat(tmp)
    except OSError:
        return False
    if st.st_nlink > 1:
        return True
    directory, name = os.path.split(dst)
    try:
        with os.scandir(directory or ".") as entries:
            return any(e.name == name and e.inode() == st.st_ino for e in entries)
    except OSError:
        return False


__all__ = ["STALE_RETRIES", "link_new", "listdir", "listed", "place", "retry_stale", "take"]
