"""Who may read and write what tuiflow creates: the modes of the home's files and
directories, from the home's `sharing` setting, never from the creating process's umask.

    private   files 0600, directories 0700: the user alone
    group     files 0660, directories 2770 (setgid: new files and directories belong to
              the directory's group, the cluster group the home was made for)

`apply(sharing)` is called once a process opens a home (`spool.home.Home.open`); every
creation in `spool`, `workers` and the engine then asks `FILE_MODE` / `DIR_MODE` here or
uses `mkdir` / `makedirs`. A mode passed to open(2) or mkdir(2) can only lose bits to the
umask, so where the umask would take bits the setting grants (a group home, umask 022),
`fix` restores them on what this process just created; where it would take nothing (the
common case) nothing more is done.
"""

from __future__ import annotations

import os

_MODES = {"private": (0o600, 0o700), "group": (0o660, 0o2770)}

FILE_MODE = 0o600
DIR_MODE = 0o700
_UMASK_TAKES = False  # whether the process umask removes bits the modes grant


def apply(sharing: str) -> None:
    """Use the modes of `sharing` ("private" or "group") for what this process creates."""
    global FILE_MODE, DIR_MODE, _UMASK_TAKES
    FILE_MODE, DIR_MODE = _MODES[sharing]
    umask = os.umask(0)
    os.umask(umask)
    _UMASK_TAKES = bool(umask & (FILE_MODE | DIR_MODE) & 0o777)


def fix(path_or_fd: str | int, directory: bool = False) -> None:
    """Give what this process just created the setting's mode if the umask took bits."""
    if _UMASK_TAKES:
        os.chmod(path_or_fd, DIR_MODE if directory else FILE_MODE)


def mkdir(path: str) -> None:
    """mkdir(2) with the setting's mode (FileExistsError if it exists)."""
    os.mkdir(path, DIR_MODE)
    fix(path, directory=True)


def makedirs(path: str) -> None:
    """Create `path` and its missing parents with the setting's mode (no error if it exists)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        makedirs(parent)
    try:
        mkdir(path)
    except FileExistsError:
        pass
