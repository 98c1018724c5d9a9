"""A passthrough FUSE filesystem that sleeps on every metadata operation.

A stand-in for NFS in tests and benchmarks: every lookup, create, rename, unlink, link,
mkdir, readdir and getattr costs `--latency-ms` (default 1 ms), like a round trip to a
file server. Like NFS it refuses renameat2 flags (RENAME_EXCHANGE / RENAME_NOREPLACE), and
files unlinked while open linger as ``.fuse_hidden*`` names (NFS's ``.nfs*``).

    python tests/support/latencyfs.py SOURCE_DIR MOUNTPOINT [--latency-ms 1]
"""

from __future__ import annotations

import argparse
import errno
import os
import time

import mfusepy as fuse


class _Fuse(fuse.FUSE):
    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        if flags:
            return -errno.EINVAL  # as NFS does for RENAME_EXCHANGE / RENAME_NOREPLACE
        return self.rename_fuse_2(old, new)


class LatencyFS(fuse.Operations):
    use_ns = True

    def __init__(self, root: str, latency: float):
        self.root = os.path.realpath(root)
        self.latency = latency

    def _p(self, path: str) -> str:
        return self.root + path

    def _wait(self) -> None:
        if self.latency:
            time.sleep(self.latency)

    # metadata (delayed)
    def access(self, path, amode):
        self._wait()
        if not os.access(self._p(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def getattr(self, path, fh=None):
        self._wait()
        st = os.fstat(fh) if fh is not None else os.lstat(self._p(path))
        out = {
            k: getattr(st, k)
            for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_dev", "st_blocks")
        }
        out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return out

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

    def create(self, path, mode, flags):
        self._wait()
        return os.open(self._p(path), flags | os.O_CREAT, mode)

    def open(self, path, flags):
        self._wait()
        return os.open(self._p(path), flags)

    def rename(self, old, new):
        self._wait()
        os.rename(self._p(old), self._p(new))
        return 0

    def link(self, target, source):
        self._wait()
        os.link(self._p(source), self._p(target))
        return 0

    def unlink(self, path):
        self._wait()
        os.unlink(self._p(path))
        return 0

    def mkdir(self, path, mode):
        self._wait()
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path):
        self._wait()
        os.rmdir(self._p(path))
        return 0

    def chmod(self, path, mode):
        self._wait()
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path, uid, gid):
        self._wait()
        os.chown(self._p(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        self._wait()
        os.utime(self._p(path), ns=times)
        return 0

    def truncate(self, path, length, fh=None):
        self._wait()
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._p(path), length)
        return 0

    def symlink(self, target, source):
        self._wait()
        os.symlink(source, self._p(target))
        return 0

    def readlink(self, path):
        self._wait()
        return os.readlink(self._p(path))

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
    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--latency-ms", type=float, default=1.0)
    args = parser.parse_args()
    _Fuse(
        LatencyFS(args.source, args.latency_ms / 1000),
        args.mountpoint,
        foreground=True,
        nothreads=False,
        use_ino=True,
        fsname="latencyfs",
        subtype="latencyfs",
    )


if __name__ == "__main__":
    main()
