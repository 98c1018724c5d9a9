"""Where the filesystem puts a directory's contents: placement hints for churning spools.

On ext4 without a journal (many VM disks, this project's CI machine among them) inode
allocation skips, one by one, every inode of the block group freed in the last minute (five
while its inode table is not written back). A spool frees an inode per message, so every
file created in the same group after a burst of acks pays for all of them. Keeping the
churning directories in groups of their own, and spreading one spool's shards over several
groups, keeps those scans short.
"""

from __future__ import annotations

import os
import sys

_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000


def spread_subdirectories(directory: str) -> bool:
    """Ask ext2/3/4 to place `directory`'s subdirectories in block groups of their own
    (`chattr +T`: the top of a hierarchy, for the Orlov allocator). Best effort: False where
    the filesystem or platform has no such flag.

    Set on the home, it keeps attempt directories and spans files out of the queues' groups:
    there they paid for every message acked before them (a fifth to a quarter of a no-op
    task's CPU in the fan-out benchmark, by perf). Must be set before the subdirectories
    are made.
    """
    if not sys.platform.startswith("linux"):
        return False  # the ioctl numbers are Linux's
    try:
        import array
        import fcntl

        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (ImportError, OSError):
        return False
    try:
        flags = array.array("i", [0])  # the kernel reads and writes an int, whatever the ioctl's name says
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & _FS_TOPDIR_FL:
            flags[0] |= _FS_TOPDIR_FL
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError:
        return False  # not ext2/3/4 (ENOTTY, EOPNOTSUPP), or not ours to change (EPERM)
    finally:
        os.close(fd)
