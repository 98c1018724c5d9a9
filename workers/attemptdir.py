"""Attempt directories and their files, opened so that nothing leads a worker out of the home.

The home is shared by every user of a cluster: whoever may write in it can put a symbolic
link (or a hard link, a FIFO, a file of their own) where a worker is about to create a
directory or a file. Opened by path, ``workflows/<wf>/tasks/<t>`` as a link to another
user's directory, or ``stdout.log`` as a link to their ``~/.bashrc``, would make that
user's worker append to, read or truncate a file outside the home. So a worker never
resolves a path of an attempt through the names in the home:

* **Directories by descriptor.** `HomeDirs` opens ``<home>/workflows`` once (the home root
  is what the operator named, and is trusted: it may itself be a link); every directory
  below it is created with ``mkdirat`` and opened with ``openat(parent, name,
  O_DIRECTORY|O_NOFOLLOW)`` relative to its parent's descriptor. A link (or anything but a
  directory) in place of ``<wf>``, ``tasks``, ``<t>``, ``<n>`` or ``logs`` fails that open
  and is refused; a directory swapped for a link after it was opened changes nothing, since
  everything below is reached through the descriptor.
* **Files by descriptor, never following.** Every file of an attempt is opened relative to
  its directory's descriptor with ``O_NOFOLLOW|O_NONBLOCK`` (a FIFO must not hang the
  worker). Where the worker creates a file before the task runs, in a directory it has
  just created (``stdout.log``, ``stderr.log``, ``inputs.json``, ``logs/spans.jsonl`` of a
  fresh attempt), it creates it with ``O_EXCL``: anything already there was planted, and is
  refused. Where an existing file is legitimate (a rerun of the same attempt after a crash
  finds its directory and logs; the task itself may have written ``output.json`` or
  appended spans and assets), the open is followed by an ``fstat``: a regular file with a
  single link, else refused (a hard link to a file elsewhere has two).
* **Refusals** raise `workers.errors.UnsafePathError` naming the path; the runner fails the
  attempt with reason ``setup`` and the worker goes on. Nothing outside the home is
  opened, created, read or written.

What is created gets the modes of the home's ``sharing`` setting (`spool.perms`), never the
umask's; a file the task made (its ``output.json``, under its user's umask) gets them when
the worker opens it (one fchmod, only where the mode differs).

**Cost.** The descriptor of each workflow's ``tasks`` directory is kept (the 16 most recent
workflows), so a fan-out's attempt costs, beyond the three mkdir(2) it always made, one
open and one close for each of the task, attempt and logs directories; the spans file is
opened when the attempt starts rather than when it ends (the same calls). A descriptor held
on a directory that was removed meanwhile (a purged workflow; ESTALE on NFS) fails its
next use; the walk is then made again from ``<home>/workflows``, once.

What this module does not cover: the task's own code writes ``$TUIFLOW_OUTPUT`` (and
anything else) by path, as its user. `open_under` and `append_under` serve callers that
have only a path (the coordinator's spans of attempts that never ran, spans made inside a
task, readers of logs).
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import threading
import time
from types import TracebackType

from spool import layout, perms
from spool.fsops import retry_stale
from spool.names import check_component
from workers.errors import UnsafePathError
from workers.logcap import CappedLog
from workers.supervise import tail_text

#: ``max_log_bytes`` where no home says otherwise (`spool.home.Settings`)
DEFAULT_MAX_LOG_BYTES = 64 << 20
#: workflows whose ``tasks`` directory descriptor a worker keeps
TASKS_FDS_KEPT = 16

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# the home root is what the operator named: trusted, and may itself be a link
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What open(2) answers for a link with O_NOFOLLOW (ELOOP; EMLINK on FreeBSD), for one with
# O_DIRECTORY|O_NOFOLLOW or a non-directory (ENOTDIR), and for a FIFO with no reader (ENXIO).
_NOT_WHAT_WE_MADE = {errno.ELOOP, errno.EMLINK, errno.ENOTDIR, errno.ENXIO}


def _what_is(dir_fd: int, name: str) -> str:
    """What is at `name`, for a refusal's message ("a symbolic link", "a directory"...)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return "something the worker did not make"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    return "a FIFO, socket or device"


def _refused(path: str, what: str) -> UnsafePathError:
    return UnsafePathError(
        f"refused {path}: it {what}; tuiflow follows no link, and uses no file it did not make, in the home",
        path,
    )


def _mkdir(parent: int, name: str) -> bool:
    """mkdirat(2) with the home's mode; False if something is there already."""
    try:
        os.mkdir(name, perms.DIR_MODE, dir_fd=parent)
        return True
    except FileExistsError:
        return False  # RACE: another worker (or an earlier run of this attempt) made it: checked when opened


def _openat(name: str, flags: int, dir_fd: int | None, path: str) -> int:
    """openat(2), again while it fails with ESTALE (an NFS client's cached handle went
    stale: `spool.fsops.retry_stale`); the first try costs no more than a plain open."""
    try:
        return os.open(name, flags, perms.FILE_MODE, dir_fd=dir_fd)
    except OSError as e:
        if e.errno != errno.ESTALE:
            raise
    return retry_stale(lambda: os.open(name, flags, perms.FILE_MODE, dir_fd=dir_fd), "open", path)


def _open_dir(parent: int, name: str, path: str) -> int:
    try:
        return _openat(name, _DIR_FLAGS, parent, path)
    except OSError as e:
        if e.errno in _NOT_WHAT_WE_MADE:
            what = _what_is(parent, name)
            raise _refused(
                path, f"is {what}" if what == "a symbolic link" else f"is {what}, not a directory"
            ) from None
        raise


def open_dir(parent: int, name: str, path: str, *, create: bool, new: bool = True) -> tuple[int, bool]:
    """The descriptor of directory `name` in directory `parent` (`path`: its path, for
    messages), made first if `create`; and whether this call made it.

    Parameters:
        new: the directory is usually new (mkdir first) rather than there (open first).

    Raises:
        UnsafePathError: `name` is a link, or not a directory.
        OSError: it is missing (and not `create`), or the file system failed.
    """
    created = create and new and _mkdir(parent, name)
    try:
        fd = _open_dir(parent, name, path)
    except FileNotFoundError:
        if not create or new:
            raise
        created = _mkdir(parent, name)
        fd = _open_dir(parent, name, path)
    if created:
        perms.fix(fd, directory=True)
    return fd, created


def open_file(dir_fd: int, name: str, path: str, flags: int, *, new: bool = False) -> int:
    """Open file `name` of directory `dir_fd` (`path`: its path, for messages) without
    following a link: created exclusively if `new` (anything there is refused), else checked
    to be a regular file with a single link.

    Parameters:
        flags: the access mode and O_CREAT / O_APPEND / O_TRUNC as wanted.

    Raises:
        UnsafePathError: a link, a FIFO, a device, a hard link, or (`new`) anything already there.
        FileNotFoundError: missing (and not O_CREAT).
    """
    if new:
        flags |= os.O_CREAT | os.O_EXCL
    flags |= _FILE_FLAGS
    try:
        fd = _openat(name, flags, dir_fd, path)
    except FileExistsError:
        if not new:
            raise
        what = _what_is(dir_fd, name)
        raise _refused(path, f"was there before this attempt created it ({what}: planted)") from None
    except OSError as e:
        if e.errno in _NOT_WHAT_WE_MADE or e.errno == errno.EISDIR:
            what = _what_is(dir_fd, name)
            raise _refused(
                path, f"is {what}" if what == "a symbolic link" else f"is {what}, not a regular file"
            ) from None
        raise
    if new:
        perms.fix(fd)
        return fd
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refused(path, "is not a regular file")
        if st.st_nlink != 1:
            raise _refused(path, f"has {st.st_nlink} hard links (another may be outside the home)")
        if st.st_mode & 0o777 != perms.FILE_MODE & 0o777 and st.st_uid == os.geteuid():
            # Made by this call under a umask that took bits, or by the task (its output,
            # under whatever umask its user has): the home's mode, not the umask's.
            os.fchmod(fd, perms.FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class AttemptDir:
    """One attempt's directory, open (see the module docstring). Made by `HomeDirs.attempt`;
    closed once the attempt ended (`close`).

    Attributes:
        path: the directory's absolute path (what the task's environment and messages name).
        fresh: this worker made the directory for this run: nothing in it is legitimate yet.
        max_log_bytes: what `log` caps each log at.
    """

    def __init__(self, path: str, fd: int, logs_fd: int, fresh: bool, max_log_bytes: int):
        self.path = path
        self.fd = fd
        self.logs_fd = logs_fd
        self.fresh = fresh
        self.max_log_bytes = max_log_bytes

    def file_path(self, name: str) -> str:
        return layout.attempt_file(self.path, name)

    def log_path(self, name: str) -> str:
        return layout.attempt_log(self.path, name)

    def _where(self, name: str, logs: bool) -> tuple[int, str]:
        if logs:
            return self.logs_fd, self.log_path(name)
        return self.fd, self.file_path(name)

    # ------------------------------------------------------------------ files
    def log(self, name: str) -> CappedLog:
        """``stdout.log`` or ``stderr.log``, open for writing, capped at `max_log_bytes`.
        Created exclusively in a fresh directory; a rerun's is appended to."""
        fd = open_file(self.fd, name, self.file_path(name), os.O_RDWR | os.O_CREAT, new=self.fresh)
        size = 0 if self.fresh else os.lseek(fd, 0, os.SEEK_END)
        return CappedLog(fd, self.max_log_bytes, self.file_path(name), size)

    def open_append(self, name: str, *, logs: bool = False, new: bool | None = None) -> int:
        """A descriptor appending to `name` (in logs/ if `logs`); created exclusively when
        `new` (default: when the directory is fresh)."""
        dir_fd, path = self._where(name, logs)
        exclusive = self.fresh if new is None else new
        return open_file(dir_fd, name, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, new=exclusive)

    def append(self, name: str, data: bytes, *, logs: bool = True) -> None:
        """Append `data` with one write(2) (O_APPEND: lines of several writers never mix)."""
        fd = self.open_append(name, logs=logs, new=False)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes) -> None:
        """Make `name` a new file holding `data`, replacing whatever is there (a rerun's,
        the task's own, or something planted: removing a link touches only the link)."""
        if not self.fresh:
            self.remove(name)
        # RACE: something planted between the unlink and the create is refused, not followed
        fd = open_file(self.fd, name, self.file_path(name), os.O_WRONLY, new=True)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def remove(self, name: str) -> None:
        """Remove `name` if it is there (a link is removed, never followed)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise _refused(self.file_path(name), "is a directory") from None

    def read(self, name: str, *, wait_visible: float = 0.0) -> bytes | None:
        """The content of `name`, or None if there is none.

        Parameters:
            wait_visible: for a file that should be there (a task's output): an NFS client
                may answer "no such file" from its cache for a while after the file
                appeared; with this > 0, absence is only believed once a listing of the
                directory (which asks the server) agrees, or after this many seconds.
        """
        path = self.file_path(name)
        deadline = time.monotonic() + wait_visible
        delay = 0.01
        while True:
            try:
                fd = open_file(self.fd, name, path, os.O_RDONLY)
            except FileNotFoundError:
                # Listed through the directory's descriptor: a listing by path walks every
                # component of it first (a round trip each on NFS without an attribute
                # cache), on every task that writes no output; the descriptor's costs are
                # local (dup, fcntl, lseek). The names only decide whether to wait.
                if wait_visible <= 0 or name not in retry_stale(
                    lambda: os.listdir(self.fd), "list", self.path
                ):
                    return None
                if time.monotonic() >= deadline:
                    raise FileNotFoundError(
                        errno.ENOENT,
                        f"listed in its directory, but not readable for {wait_visible:g} s",
                        path,
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            try:
                return _read_all(fd)
            finally:
                os.close(fd)

    def tail(self, name: str, max_bytes: int = 4000) -> str:
        """The last `max_bytes` of a log as text ("" if there is none)."""
        try:
            fd = open_file(self.fd, name, self.file_path(name), os.O_RDONLY)
        except FileNotFoundError:
            return ""
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - max_bytes)
            return tail_text(os.pread(fd, size - start, start), size, max_bytes)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the directory's descriptors (idempotent)."""
        for fd in (self.fd, self.logs_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.logs_fd = -1

    def __enter__(self) -> AttemptDir:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


class _Held:
    """A kept directory descriptor, and how many callers use it now (closed only at 0)."""

    __slots__ = ("evicted", "fd", "users")

    def __init__(self, fd: int):
        self.fd = fd
        self.users = 0
        self.evicted = False


class HomeDirs:
    """A worker's way into its home's attempt directories (see the module docstring).
    Thread-safe: slot threads prepare shell attempts while the loop prepares python ones.

    Parameters:
        home_root: the home (trusted as given).
        max_log_bytes: the cap of each attempt's stdout and stderr.
    """

    def __init__(self, home_root: str, max_log_bytes: int = DEFAULT_MAX_LOG_BYTES):
        self.root = home_root
        self.max_log_bytes = max_log_bytes
        self._lock = threading.Lock()
        self._tasks: collections.OrderedDict[str, _Held] = collections.OrderedDict()

    def attempt(self, wf: str, task: str, attempt: int) -> AttemptDir:
        """Make (or, for a rerun, open) attempt `attempt` of `task` of workflow `wf`, with
        its logs directory.

        Raises:
            UnsafePathError: a directory on the way is a link or not a directory.
            OSError: the file system failed.
        """
        path = layout.resolve(self.root, layout.attempt_dir_rel(wf, task, attempt))
        task_path, number = path.rsplit("/", 1)
        task_name = task_path.rsplit("/", 1)[1]
        held = self._hold(wf)
        try:
            return self._make(held.fd, path, task_name, number)
        except UnsafePathError:
            raise
        except OSError:
            # The kept descriptor may name a directory removed since (or be stale on NFS):
            # walk again from the home, once.
            self._forget(wf, held)
        finally:
            self._release(held)
        held = self._hold(wf)
        try:
            return self._make(held.fd, path, task_name, number)
        finally:
            self._release(held)

    def _make(self, tasks_fd: int, path: str, task_name: str, number: str) -> AttemptDir:
        task_path = path.rsplit("/", 1)[0]
        task_fd, _ = open_dir(tasks_fd, task_name, task_path, create=True)
        try:
            fd, fresh = open_dir(task_fd, number, path, create=True)
        finally:
            os.close(task_fd)
        try:
            logs_fd, _ = open_dir(
                fd, layout.LOGS_DIR, layout.attempt_file(path, layout.LOGS_DIR), create=True
            )
        except BaseException:
            os.close(fd)
            raise
        return AttemptDir(path, fd, logs_fd, fresh, self.max_log_bytes)

    def _hold(self, wf: str) -> _Held:
        with self._lock:
            held = self._tasks.get(wf)
            if held is not None:
                self._tasks.move_to_end(wf)
                held.users += 1
                return held
        held = _Held(self._open_tasks(wf))
        with self._lock:
            other = self._tasks.get(wf)
            if other is not None:  # RACE: another thread opened it meanwhile: use theirs
                os.close(held.fd)
                held = other
            else:
                self._tasks[wf] = held
                while len(self._tasks) > TASKS_FDS_KEPT:
                    _, old = self._tasks.popitem(last=False)
                    old.evicted = True
                    if not old.users:
                        os.close(old.fd)
            held.users += 1
            return held

    def _release(self, held: _Held) -> None:
        with self._lock:
            held.users -= 1
            if held.evicted and not held.users:
                os.close(held.fd)

    def _forget(self, wf: str, held: _Held) -> None:
        with self._lock:
            if self._tasks.get(wf) is held:
                del self._tasks[wf]
                held.evicted = True

    def _open_tasks(self, wf: str) -> int:
        """Walk from the home root to ``workflows/<wf>/tasks``, making what is missing."""
        try:
            check_component(wf, "workflow id")  # once per workflow: "." or "a/b" would walk elsewhere
        except ValueError as e:
            raise UnsafePathError(
                f"refused a task of workflow {wf!r}: {e}", layout.workflow_dir(self.root, wf)
            ) from None
        rel = layout.tasks_dir(layout.workflow_dir("", wf)).lstrip("/")
        fd = _openat(self.root, _ROOT_FLAGS, None, self.root)
        path = self.root
        try:
            for name in rel.split("/"):
                path = f"{path}/{name}"
                child, _ = open_dir(fd, name, path, create=True, new=False)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        """Close the kept descriptors (those in use are closed when released)."""
        with self._lock:
            for held in self._tasks.values():
                held.evicted = True
                if not held.users:
                    os.close(held.fd)
            self._tasks.clear()


def open_under(home_root: str, path: str, flags: int) -> int:
    """Open file `path` under `home_root` reaching it through the directories below the home
    without following a link (making those missing if `flags` has O_CREAT), and refusing a
    file that is a link, not regular (a FIFO would block a reader), or hard-linked.

    For code with only a path: the coordinator's spans of attempts that never ran, spans
    made inside a task (`append_under`), and readers of logs (`tuiflow logs`, the
    dashboard). A path outside the home is opened with O_NOFOLLOW on its last component only.

    Raises:
        UnsafePathError: a link (or something unexpected) on the way.
        FileNotFoundError: it (or a directory on the way) is missing, without O_CREAT.
        OSError: the file system failed.
    """
    root = home_root.rstrip("/") or "/"
    rel = os.path.relpath(path, root)
    if rel.startswith("..") or os.path.isabs(rel):
        parent = _openat(os.path.dirname(path) or ".", _ROOT_FLAGS, None, path)
        names = [os.path.basename(path)]
    else:
        parent = _openat(root, _ROOT_FLAGS, None, root)
        names = rel.split("/")
    where = root
    create = bool(flags & os.O_CREAT)
    try:
        for name in names[:-1]:
            where = f"{where}/{name}"
            child, _ = open_dir(parent, name, where, create=create, new=False)
            os.close(parent)
            parent = child
        return open_file(parent, names[-1], path, flags)
    finally:
        os.close(parent)


def append_under(home_root: str, path: str, data: bytes) -> None:
    """Append `data` to file `path` under `home_root` with one write(2) (`open_under`:
    following no link, making the directories missing).

    Raises:
        UnsafePathError: a link (or something unexpected) on the way.
        OSError: the file system failed.
    """
    fd = open_under(home_root, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
