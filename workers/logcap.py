"""Bounded task logs: an attempt's ``stdout.log`` and ``stderr.log`` keep at most
``max_log_bytes`` (a home setting, 64 MiB by default) of what the task wrote to each: the
head and the tail, with one line between them saying how many bytes were dropped.

    <first H bytes the task wrote>
    [tuiflow: 1,048,576 bytes of stdout.log dropped here (max_log_bytes 65,536 keeps the first 32,768 and the last 32,768)]
    <last T bytes the task wrote>

H is ``max_log_bytes - max_log_bytes // 2`` and T is ``max_log_bytes // 2``; a log that
never went past the limit is exactly what the task wrote, with no line added. The line
starts on a line of its own (a newline is put before it when the head does not end with
one).

`CappedLog` does the bounding on the log's descriptor, with memory of its own bounded by one
chunk, whoever feeds it:

* *written* (`write`: a shell task's pipes, pumped by `Pump`): what fits under the limit is
  written as it comes; past it, the head stays and the file keeps a window of the latest
  bytes after it, which is cut back to its last T bytes each time it grows past
  ``T + max(T, 1 MiB)``. The file therefore never holds more than about 1.5 times the
  limit (plus 1 MiB), and each byte is copied at most twice.
* *absorbed* (`absorb`: a python task's scratch file, whose size is known): only the head
  and the tail are read from it; what would be dropped is never copied.

`finish` puts the head, the line and the tail in place (moving at most T bytes once) and
truncates the file. A reader following the log while a task floods it (``tuiflow logs
-f``) may see the file shrink when the window is cut back.

`Pump` copies a child's stdout and stderr pipes into their logs on the thread that already
supervises the child (a shell attempt's slot thread), in the same loop that looks for its
exit, its deadline and stop requests every 50 ms: no thread of its own. The child's pipes'
end of file also tells it the child ended, without waiting for the next look.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import time
from collections.abc import Callable
from types import TracebackType

from workers.supervise import tail_text, wait_or_stop
from workers.wire import FailKind

#: what one read of a pipe, or one copy step of a file, moves at most (bytes)
CHUNK = 1 << 20
_PIPE_READ = 1 << 16
#: the window after the head may grow by this much (at least) before it is cut back
_SLACK = 1 << 20


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _move(fd: int, src: int, dst: int, n: int) -> None:
    """Copy n bytes of the file from offset src to offset dst (the ranges may overlap)."""
    if n <= 0 or src == dst:
        return
    if dst < src:  # forward, like memmove moving down
        done = 0
        while done < n:
            data = os.pread(fd, min(CHUNK, n - done), src + done)
            if not data:
                return
            _pwrite_all(fd, data, dst + done)
            done += len(data)
    else:  # backward, like memmove moving up
        end = n
        while end > 0:
            k = min(CHUNK, end)
            data = os.pread(fd, k, src + end - k)
            if len(data) != k:
                return
            _pwrite_all(fd, data, dst + end - k)
            end -= k


class CappedLog:
    """One log file of an attempt, bounded (see the module docstring).

    Parameters:
        fd: the log, open for reading and writing (not O_APPEND: the window is cut back in
            place); `close` closes it.
        limit: ``max_log_bytes``: bytes of the task's output kept, at most.
        path: the log's path, for messages.
        size: bytes already in the file (a rerun of an attempt appends to its logs).
    """

    def __init__(self, fd: int, limit: int, path: str, size: int = 0):
        self.fd = fd
        self.limit = max(1, limit)
        self.path = path
        self.tail_max = self.limit // 2
        self.head_max = self.limit - self.tail_max
        self._cut_at = self.head_max + self.tail_max + max(self.tail_max, _SLACK)
        #: bytes in the file now
        self.size = size
        #: bytes of the stream so far (what was there, and everything written since)
        self.total = size
        self._finished = False
        self._closed = False

    @property
    def dropped(self) -> int:
        """Bytes of the stream not in the file (so far; `finish` may drop more)."""
        return self.total - self.size

    # ------------------------------------------------------------------ writing
    def write(self, data: bytes) -> None:
        """Append what the task wrote next."""
        if not data:
            return
        _pwrite_all(self.fd, data, self.size)
        self.size += len(data)
        self.total += len(data)
        if self.size > self._cut_at:
            self._cut_back()

    def absorb(self, src: int, n: int, offset: int = 0) -> None:
        """Append the `n` bytes at `offset` of file descriptor `src`, reading only what
        the log keeps of them."""
        if self.total < self.head_max:  # the head is not full yet
            k = min(n, self.head_max - self.total)
            self._copy(src, offset, k)
            offset, n = offset + k, n - k
        if n > self.tail_max:
            # Only the last T bytes can be in the tail: the window and everything before
            # those bytes are dropped unread.
            if self.size > self.head_max:
                os.ftruncate(self.fd, self.head_max)
                self.size = self.head_max
            skip = n - self.tail_max
            self.total += skip
            offset, n = offset + skip, n - skip
        self._copy(src, offset, n)

    def _copy(self, src: int, offset: int, n: int) -> None:
        while n > 0:
            data = os.pread(src, min(CHUNK, n), offset)
            if not data:
                return  # the source is shorter than it said: keep what there was
            self.write(data)
            offset, n = offset + len(data), n - len(data)

    def _cut_back(self) -> None:
        """Keep the head and the last T bytes of the window after it."""
        keep = min(self.tail_max, self.size - self.head_max)
        _move(self.fd, self.size - keep, self.head_max, keep)
        os.ftruncate(self.fd, self.head_max + keep)
        self.size = self.head_max + keep

    def finish(self) -> None:
        """Put the head, the line saying what was dropped and the tail in place (only if
        the task wrote more than the limit). Nothing can be written after it."""
        if self._finished:
            return
        self._finished = True
        if self.total <= self.limit:
            return
        keep = min(self.tail_max, self.size - self.head_max)
        dropped = self.total - self.head_max - keep
        name = os.path.basename(self.path)
        line = (
            f"[tuiflow: {dropped:,} bytes of {name} dropped here (max_log_bytes {self.limit:,} keeps "
            f"the first {self.head_max:,} and the last {keep:,})]\n"
        ).encode()
        if self.head_max and os.pread(self.fd, 1, self.head_max - 1) != b"\n":
            line = b"\n" + line
        _move(self.fd, self.size - keep, self.head_max + len(line), keep)
        _pwrite_all(self.fd, line, self.head_max)
        self.size = self.head_max + len(line) + keep
        os.ftruncate(self.fd, self.size)

    # ------------------------------------------------------------------ reading
    def tail(self, max_bytes: int = 4000) -> str:
        """The last `max_bytes` of the log as text (for error reports)."""
        start = max(0, self.size - max_bytes)
        return tail_text(os.pread(self.fd, self.size - start, start), self.size, max_bytes)

    def close(self) -> None:
        """`finish`, then close the file (idempotent)."""
        if self._closed:
            return
        try:
            self.finish()
        finally:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> CappedLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Pump:
    """A child's output pipes copied into their logs by the thread that supervises the
    child (see the module docstring). Owns the pipes' read ends (`close` closes them)."""

    def __init__(self, streams: list[tuple[int, CappedLog]]):
        self.open = dict(streams)
        self.poller = select.poll()
        for fd in self.open:
            self.poller.register(fd, select.POLLIN)

    def _read(self, timeout: float) -> None:
        """Copy what the pipes hold, waiting up to `timeout` seconds for something."""
        try:
            events = self.poller.poll(max(0, int(timeout * 1000 + 0.999)))
        except InterruptedError:
            return
        for fd, _ in events:
            data = os.read(fd, _PIPE_READ)
            if data:
                self.open[fd].write(data)
            else:  # end of file: every writer closed it (the child, and what it started, ended)
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.open[fd]
        os.close(fd)

    def run(
        self,
        proc: subprocess.Popen,
        deadline: float | None,
        should_stop: Callable[[], FailKind | None],
        poll: float = 0.05,
    ) -> tuple[int | None, FailKind | None]:
        """Copy output until `proc` exits, `deadline` (monotonic seconds) passes or
        `should_stop()` names a reason, looking every `poll` seconds. Returns (returncode
        or None, stop reason or None), as `supervise.wait_or_stop`; never kills."""
        next_look = 0.0
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None, FailKind.TIMEOUT
            if now >= next_look:
                reason = should_stop()
                if reason:
                    return None, reason
                returncode = proc.poll()
                if returncode is not None:
                    return returncode, None
                next_look = now + poll
            if not self.open:
                # Both pipes ended: the process is exiting (or closed its outputs).
                return wait_or_stop(proc, deadline, should_stop, poll)
            timeout = next_look - now
            if deadline is not None:
                timeout = min(timeout, deadline - now)
            self._read(timeout)

    def wait(self, proc: subprocess.Popen, timeout: float) -> None:
        """Copy output while waiting up to `timeout` seconds for `proc` to exit (a stop's
        grace period: a child that prints while it shuts down must not block on a full pipe)."""
        end = time.monotonic() + timeout
        while proc.poll() is None:
            left = end - time.monotonic()
            if left <= 0:
                return
            if self.open:
                self._read(min(left, 0.05))
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=left)

    def close(self) -> None:
        """Copy what the pipes still hold without waiting, and close them. Something the
        child left running outside its process group and that still holds a pipe gets
        EPIPE from then on."""
        for fd in list(self.open):
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, _PIPE_READ):
                    self.open[fd].write(data)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
            finally:
                self._drop(fd)
