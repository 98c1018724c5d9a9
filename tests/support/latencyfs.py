"""A passthrough FUSE filesystem that behaves like an NFS client: slow, and now and then wrong.

A stand-in for NFS in tests and benchmarks. It mirrors SOURCE_DIR at MOUNTPOINT and adds
the latency and the faults that a real NFS client shows; several instances over the same
SOURCE_DIR behave like several NFS clients of one server, each with its own kernel caches.

    python tests/support/latencyfs.py SOURCE_DIR MOUNTPOINT [--latency-ms 1]
        [--lost-reply P] [--estale P] [--negative-cache S]
        [--audit FILE] [--seed N] [--faults-off-file PATH] [--count FILE]

Always on, as on NFS:

* renameat2 flags (RENAME_EXCHANGE / RENAME_NOREPLACE) are refused with EINVAL;
* a file unlinked while open lingers as ``.fuse_hidden*`` (NFS's "silly rename" ``.nfs*``);
* the kernel caches positive lookups and attributes for 1 s (libfuse's entry/attr timeouts),
  like NFS's attribute cache (acregmin/acdirmin); ``--attr-cache`` changes it.

Options:

``--latency-ms MS`` (default 1)
    Every metadata operation (lookup, getattr, create, open, rename, link, unlink, mkdir,
    rmdir, readdir, ...) sleeps MS milliseconds first, like an RPC round trip to the server.
    Reads and writes of file data are not delayed.

``--lost-reply P`` (default 0)
    With probability P a successful rename(2) or link(2) is *performed* on SOURCE_DIR and then
    reported as failed: rename with ENOENT, link with EEXIST. This is what an NFS client sees
    when the reply to a non-idempotent RENAME or LINK is lost, the client retransmits it, and
    the server's duplicate-request cache misses (it was evicted, or the server restarted): the
    server executes the retransmission against the new state and answers it with the error of
    a second execution (the source name is gone; the link name already exists). The caller
    sees a failure although its operation took effect.

``--estale P`` (default 0)
    With probability P an open(2) of an existing file, or an opendir(2), fails with ESTALE and
    does nothing: the file handle the client had cached for the path no longer refers to a
    file on the server (another client replaced or removed it, or the server export changed).
    Opens that create a new file (O_CREAT of a name that does not exist) are never failed.
    Linux retries a path walk that hit ESTALE once with revalidation (LOOKUP_REVAL), as it
    does on NFS, so an open is failed only if both tries draw the fault (1.0 fails all).

``--negative-cache S`` (default 0)
    The kernel caches failed lookups ("no such file") for S seconds (FUSE negative_timeout):
    a name created behind this mount's back (directly in SOURCE_DIR, or through another
    mount) stays invisible to lookups through this mount for up to S seconds after a lookup
    through it failed; readdir still lists it. This models an NFS mount with
    ``lookupcache=all`` (the default), where negative dentries are trusted for the directory's
    attribute-cache time (acdirmin..acdirmax). Unlike NFS, a change of the directory's mtime
    does not revalidate them early.

``--attr-cache S`` (default 1)
    How long the kernel trusts a positive lookup or a file's attributes (FUSE entry and
    attribute timeouts). 0 models an NFS mount with ``noac`` / ``lookupcache=none``: every
    path component is looked up again at each use, every stat asks the server.

``--audit FILE``
    Append one line per mutating operation to FILE (O_APPEND, one write(2) per line, so that
    tests can read it while the filesystem runs and several instances can share a file)::

        <time_ns> <tgid> <tid> <op> <path> [<path2>] <result>

    ``time_ns`` is time.time_ns() when the operation finished. ``tid`` is the calling thread
    as FUSE reports it (fuse_get_context()), ``tgid`` its thread group, i.e. the process id,
    read from /proc/<tid>/status (-1 if it cannot be read, e.g. for requests the kernel makes
    on its own, with tid 0). ``op`` is one of create, write-open (an open for writing or
    truncating), mkdir, rename, link, unlink, rmdir, symlink, truncate, chmod, chown, utimens.
    Paths are relative to the mount and start with "/"; whitespace and backslashes in them are
    written as \\xNN. rename logs ``old new``, link ``existing new``, symlink ``link target``.
    ``result`` is "ok", "lost" (performed, but reported failed by --lost-reply) or the errno
    name of the failure (e.g. ENOENT, ESTALE, EINVAL).

``--count FILE``
    Count every request this filesystem serves (what an NFS client would send to its
    server: lookups, which reach it as getattr, opens, flushes, releases, renames, reads,
    writes...) and keep FILE up to date with the totals, rewritten atomically at most every
    50 ms while they change, as JSON::

        {"total": N, "by_op": {"getattr": N, ...}, "by_path": {"getattr /q/ready/#": N, ...}}

    ``by_path`` groups requests by operation and path shape: runs of digits and hex ids
    of 8 or more characters become ``#``, so the shapes say which files the requests are
    for. Requests the kernel answers from its own caches never reach the filesystem and
    are not counted, as on NFS.

``--seed N``
    Seed of the random generator that draws the faults (default: random). The draws are
    shared by all threads (libfuse serves requests on several), so the outcome of a given
    operation also depends on the interleaving.

``--faults-off-file PATH``
    While PATH exists no fault is injected (latency and the negative cache stay), so a test
    can set things up cleanly and then turn faults on by deleting PATH. PATH should lie
    outside the mount.
"""

from __future__ import annotations

import argparse
import collections
import errno
import functools
import json
import os
import random
import re
import threading
import time

import mfusepy as fuse

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
_VARYING = re.compile(r"[0-9a-f]{8,}|[0-9]+")


class RequestCounter:
    """Requests served, by operation and by path shape, published to a JSON file."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._by_path: collections.Counter[str] = collections.Counter()
        self._changed = threading.Event()
        threading.Thread(target=self._publish_forever, daemon=True).start()

    def add(self, op: str, path: str | None) -> None:
        key = f"{op} {_VARYING.sub('#', path or '-')}"
        with self._lock:
            self._by_path[key] += 1
        self._changed.set()

    def snapshot(self) -> dict:
        with self._lock:
            by_path = dict(self._by_path)
        by_op: collections.Counter[str] = collections.Counter()
        for key, n in by_path.items():
            by_op[key.split(" ", 1)[0]] += n
        return {"total": sum(by_op.values()), "by_op": dict(by_op), "by_path": by_path}

    def publish(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.snapshot(), f)
        os.replace(tmp, self.path)

    def _publish_forever(self) -> None:
        self.publish()
        while True:
            self._changed.wait()
            self._changed.clear()
            self.publish()
            time.sleep(0.05)


def _counted(method):
    """Count each call of a FUSE operation (its first argument is the path)."""
    op = method.__name__

    @functools.wraps(method)
    def counting(self, path, *args, **kwargs):
        if self.counter is not None:
            self.counter.add(op, path)
        return method(self, path, *args, **kwargs)

    return counting


class _Fuse(fuse.FUSE):
    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        if flags:
            # as NFS does for RENAME_EXCHANGE / RENAME_NOREPLACE
            self.operations.audit_refused_rename(
                old.decode(errors="surrogateescape"), new.decode(errors="surrogateescape")
            )
            return -errno.EINVAL
        return self.rename_fuse_2(old, new)


def _tgid(tid: int) -> int:
    if tid <= 0:
        return -1
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def _quote(path: str) -> str:
    return "".join(f"\\x{ord(c):02x}" if c.isspace() or c == "\\" else c for c in path)


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e.errno, int) else "EIO"


class LatencyFS(fuse.Operations):
    use_ns = True

    def __init__(
        self,
        root: str,
        latency: float,
        *,
        lost_reply: float = 0.0,
        estale: float = 0.0,
        negative_cache: float = 0.0,
        attr_cache: float = 1.0,
        audit: str | None = None,
        seed: int | None = None,
        faults_off_file: str | None = None,
        count: str | None = None,
    ):
        self.root = os.path.realpath(root)
        self.latency = latency
        self.lost_reply = lost_reply
        self.estale = estale
        self.negative_cache = negative_cache
        self.attr_cache = attr_cache
        self.faults_off_file = faults_off_file
        self.counter = RequestCounter(count) if count else None
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._audit_fd = (
            os.open(audit, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) if audit else None
        )

    def init_with_config(self, conn_info, config_3):
        if config_3 is not None:
            config_3.negative_timeout = float(self.negative_cache)
            config_3.entry_timeout = config_3.attr_timeout = float(self.attr_cache)

    def _p(self, path: str) -> str:
        return self.root + path

    def _wait(self) -> None:
        if self.latency:
            time.sleep(self.latency)

    # faults and audit
    def _fault(self, probability: float) -> bool:
        """Draw a fault of the given probability (thread-safe); never while the faults-off file exists."""
        if probability <= 0:
            return False
        if self.faults_off_file and os.path.lexists(self.faults_off_file):
            return False
        with self._rng_lock:
            return self._rng.random() < probability

    def _caller(self) -> tuple[int, int] | None:
        if self._audit_fd is None:
            return None
        tid = fuse.fuse_get_context()[2]
        return _tgid(tid), tid  # read now, while the caller is blocked in its system call

    def _log(self, caller: tuple[int, int] | None, op: str, paths: tuple[str, ...], result: str) -> None:
        if caller is None:
            return
        fields = [str(time.time_ns()), str(caller[0]), str(caller[1]), op, *map(_quote, paths), result]
        os.write(self._audit_fd, (" ".join(fields) + "\n").encode(errors="surrogateescape"))

    def _audited(self, op: str, paths: tuple[str, ...], action, lost_errno: int | None = None):
        """Run `action` and log it; with --lost-reply, report `lost_errno` after it succeeded."""
        caller = self._caller()
        try:
            out = action()
        except OSError as e:
            self._log(caller, op, paths, _errname(e))
            raise
        if lost_errno is not None and self._fault(self.lost_reply):
            self._log(caller, op, paths, "lost")
            raise fuse.FuseOSError(lost_errno)
        self._log(caller, op, paths, "ok")
        return out

    def _stale(self, op: str, path: str, audited: bool) -> None:
        if self._fault(self.estale):
            if audited:
                self._log(self._caller(), op, (path,), "ESTALE")
            raise fuse.FuseOSError(errno.ESTALE)

    def audit_refused_rename(self, old: str, new: str) -> None:
        self._log(self._caller(), "rename", (old, new), "EINVAL")

    # metadata (delayed)
    @_counted
    def access(self, path, amode):
        self._wait()
        if not os.access(self._p(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    @_counted
    def getattr(self, path, fh=None):
        self._wait()
        st = os.fstat(fh) if fh is not None else os.lstat(self._p(path))
        out = {
            k: getattr(st, k)
            for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_dev", "st_blocks")
        }
        out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return out

    @_counted
    def opendir(self, path):
        self._stale("opendir", path, audited=False)
        return 0

    @_counted
    def releasedir(self, path, fh):
        return 0

    @_counted
    def readdir(self, path, fh):
        self._wait()
        # With use_ino the inode must be filled in: readdir(3) skips entries whose d_ino is 0.
        full = self._p(path)
        out = [(".", {"st_ino": os.lstat(full).st_ino, "st_mode": 0o040000}, 0), ("..", {"st_ino": 1}, 0)]
        with os.scandir(full) as entries:
            for e in entries:
                mode = 0o040000 if e.is_dir(follow_symlinks=False) else 0o100000
                out.append((e.name, {"st_ino": e.inode(), "st_mode": mode}, 0))
        return out

    @_counted
    def create(self, path, mode, flags):
        self._wait()
        if not flags & os.O_EXCL and os.path.lexists(self._p(path)):
            self._stale("create", path, audited=True)  # an O_CREAT open of an existing file
        return self._audited("create", (path,), lambda: os.open(self._p(path), flags | os.O_CREAT, mode))

    @_counted
    def open(self, path, flags):
        self._wait()
        writing = bool(flags & _WRITE_FLAGS)
        self._stale("write-open", path, audited=writing)
        if not writing:
            return os.open(self._p(path), flags)
        return self._audited("write-open", (path,), lambda: os.open(self._p(path), flags))

    @_counted
    def rename(self, old, new):
        self._wait()
        # libfuse hides a file unlinked while open by renaming it; that rename is part of an
        # unlink, not the caller's rename, so no reply of it is lost.
        hiding = os.path.basename(new).startswith(".fuse_hidden")
        lost = None if hiding else errno.ENOENT
        self._audited("rename", (old, new), lambda: os.rename(self._p(old), self._p(new)), lost)
        return 0

    @_counted
    def link(self, target, source):
        self._wait()
        self._audited(
            "link", (source, target), lambda: os.link(self._p(source), self._p(target)), errno.EEXIST
        )
        return 0

    @_counted
    def unlink(self, path):
        self._wait()
        self._audited("unlink", (path,), lambda: os.unlink(self._p(path)))
        return 0

    @_counted
    def mkdir(self, path, mode):
        self._wait()
        self._audited("mkdir", (path,), lambda: os.mkdir(self._p(path), mode))
        return 0

    @_counted
    def rmdir(self, path):
        self._wait()
        self._audited("rmdir", (path,), lambda: os.rmdir(self._p(path)))
        return 0

    @_counted
    def chmod(self, path, mode):
        self._wait()
        self._audited("chmod", (path,), lambda: os.chmod(self._p(path), mode))
        return 0

    @_counted
    def chown(self, path, uid, gid):
        self._wait()
        self._audited("chown", (path,), lambda: os.chown(self._p(path), uid, gid))
        return 0

    @_counted
    def utimens(self, path, times=None):
        self._wait()
        self._audited("utimens", (path,), lambda: os.utime(self._p(path), ns=times))
        return 0

    @_counted
    def truncate(self, path, length, fh=None):
        self._wait()
        if fh is not None:
            self._audited("truncate", (path,), lambda: os.ftruncate(fh, length))
        else:
            self._audited("truncate", (path,), lambda: os.truncate(self._p(path), length))
        return 0

    @_counted
    def symlink(self, target, source):
        self._wait()
        self._audited("symlink", (target, source), lambda: os.symlink(source, self._p(target)))
        return 0

    @_counted
    def readlink(self, path):
        self._wait()
        return os.readlink(self._p(path))

    @_counted
    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {
            k: getattr(st, k)
            for k in (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
                "f_files",
                "f_flag",
                "f_frsize",
                "f_namemax",
            )
        }

    # data (not delayed)
    @_counted
    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    @_counted
    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    @_counted
    def flush(self, path, fh):
        return 0

    @_counted
    def fsync(self, path, datasync, fh):
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    @_counted
    def release(self, path, fh):
        os.close(fh)
        return 0


def _probability(text: str) -> float:
    p = float(text)
    if not 0 <= p <= 1:
        raise argparse.ArgumentTypeError(f"a probability must lie in 0..1, not {text}")
    return p


def _seconds(text: str) -> float:
    s = float(text)
    if s < 0:
        raise argparse.ArgumentTypeError(f"a duration must not be negative, not {text}")
    return s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--latency-ms", type=float, default=1.0, help="delay of each metadata op (ms)")
    parser.add_argument(
        "--lost-reply", type=_probability, default=0.0, metavar="P", help="rename/link done, then failed"
    )
    parser.add_argument(
        "--estale", type=_probability, default=0.0, metavar="P", help="open/opendir fail with ESTALE"
    )
    parser.add_argument(
        "--negative-cache", type=_seconds, default=0.0, metavar="S", help="negative lookup cache time"
    )
    parser.add_argument(
        "--attr-cache", type=_seconds, default=1.0, metavar="S", help="positive lookup/attribute cache time"
    )
    parser.add_argument("--audit", metavar="FILE", help="append one line per mutating op")
    parser.add_argument("--seed", type=int, help="seed of the fault RNG (default: random)")
    parser.add_argument("--faults-off-file", metavar="PATH", help="no faults while PATH exists")
    parser.add_argument("--count", metavar="FILE", help="keep FILE up to date with request counts")
    args = parser.parse_args()
    _Fuse(
        LatencyFS(
            args.source,
            args.latency_ms / 1000,
            lost_reply=args.lost_reply,
            estale=args.estale,
            negative_cache=args.negative_cache,
            attr_cache=args.attr_cache,
            audit=args.audit and os.path.abspath(args.audit),
            seed=args.seed,
            faults_off_file=args.faults_off_file and os.path.abspath(args.faults_off_file),
            count=args.count and os.path.abspath(args.count),
        ),
        args.mountpoint,
        foreground=True,
        nothreads=False,
        use_ino=True,
        fsname="latencyfs",
        subtype="latencyfs",
    )


if __name__ == "__main__":
    main()
