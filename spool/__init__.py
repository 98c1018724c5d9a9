"""spool: the filesystem substrate of tuiflow.

Everything tuiflow shares between processes and machines goes through this package:
atomic publication of files (`atomic`), the home directory layout (`home`), spool
queues claimed by rename (`queue`), heartbeats and liveness (`liveness`), versioned
records updated by compare-and-swap under a lock file (`cas`, `lock`), the coordinator
lease (`lease`), and waiting for changes (`watch`). It imports nothing from the other
tuiflow packages. The on-disk formats and the races each step tolerates are specified in
the docstrings of those modules; docs/protocols.md collects them.

Names are exported lazily: a task process that only needs `spool.names` must not pay
for filelock, watchfiles and multiprocessing (a third of a python executor's start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> submodule that defines it (no name may equal a submodule's: importing the
# submodule would bind the module object over it)
_EXPORTS = {
    "Durability": "atomic",
    "atomic_write": "atomic",
    "create_exclusive": "atomic",
    "read_bytes": "atomic",
    "CasRecord": "cas",
    "ConflictError": "errors",
    "CorruptRecordError": "errors",
    "DeposedError": "errors",
    "InvalidNameError": "errors",
    "LayoutError": "errors",
    "LeaseError": "errors",
    "LeaseHeldError": "errors",
    "LockLostError": "errors",
    "LockTimeout": "errors",
    "MessageTooLargeError": "errors",
    "SpoolError": "errors",
    "StorageError": "errors",
    "Home": "home",
    "Settings": "home",
    "resolve_root": "home",
    "Lease": "lease",
    "LeaseInfo": "lease",
    "HeartbeatWriter": "liveness",
    "LivenessTracker": "liveness",
    "fs_age": "liveness",
    "SpoolLock": "lock",
    "check_component": "names",
    "encode_component": "names",
    "Message": "queue",
    "SpoolQueue": "queue",
    "ChangeWaiter": "watch",
    "wait_for_change": "watch",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spool' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # next time without the detour
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
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
