"""spool: the filesystem substrate of tuiflow.

Everything tuiflow shares between processes and machines goes through this package:
atomic publication of files (`atomic`), the home directory layout (`home`), spool
queues claimed by rename (`queue`), heartbeats and liveness (`liveness`), versioned
records updated by compare-and-swap under a lock file (`cas`, `lock`), the coordinator
lease (`lease`), and waiting for changes (`watch`). It imports nothing from the other
tuiflow packages. The on-disk formats and the races each step tolerates are specified in
the docstrings of those modules; docs/protocols.md collects them.
"""

from .atomic import Durability, atomic_write, create_exclusive, read_bytes
from .cas import CasRecord
from .errors import (
    ConflictError,
    CorruptRecordError,
    DeposedError,
    InvalidNameError,
    LayoutError,
    LeaseError,
    LeaseHeldError,
    LockLostError,
    LockTimeout,
    MessageTooLargeError,
    SpoolError,
    StorageError,
)
from .home import Home, Settings, resolve_root
from .lease import Lease, LeaseInfo
from .liveness import HeartbeatWriter, LivenessTracker, fs_age
from .lock import SpoolLock
from .names import check_component, encode_component
from .queue import Message, SpoolQueue
from .watch import ChangeWaiter, wait_for_change

__all__ = [
    "CasRecord",
    "ChangeWaiter",
    "ConflictError",
    "CorruptRecordError",
    "DeposedError",
    "Durability",
    "HeartbeatWriter",
    "Home",
    "InvalidNameError",
    "LayoutError",
    "Lease",
    "LeaseError",
    "LeaseHeldError",
    "LeaseInfo",
    "LivenessTracker",
    "LockLostError",
    "LockTimeout",
    "Message",
    "MessageTooLargeError",
    "Settings",
    "SpoolError",
    "SpoolLock",
    "SpoolQueue",
    "StorageError",
    "atomic_write",
    "check_component",
    "create_exclusive",
    "encode_component",
    "fs_age",
    "read_bytes",
    "resolve_root",
    "wait_for_change",
]
