from __future__ import annotations

import time

import pytest

from spool import ChangeWaiter, wait_for_change
from spool.watch import fs_type, resolve_mode


@pytest.mark.parametrize("mode", ["events", "poll"])
def test_change_by_another_process_wakes_the_waiter(tmp_path, actors, mode):
    with ChangeWaiter([str(tmp_path)], mode=mode, poll_interval=0.05) as waiter:
        assert waiter.mode == mode
        writer = actors("touch-later", tmp_path / "new-file", 0.3)
        writer.expect("ready")
        t0 = time.monotonic()
        assert waiter.wait(timeout=20) is True
        assert time.monotonic() - t0 < 10
        assert (tmp_path / "new-file").exists()


@pytest.mark.parametrize("mode", ["events", "poll"])
def test_timeout_without_change(tmp_path, mode):
    with ChangeWaiter([str(tmp_path)], mode=mode, poll_interval=0.02) as waiter:
        t0 = time.monotonic()
        assert waiter.wait(timeout=0.2) is False
        assert 0.15 <= time.monotonic() - t0 < 5


@pytest.mark.parametrize("mode", ["events", "poll"])
def test_a_readable_fd_or_a_wake_ends_the_wait(tmp_path, mode):
    import os
    import threading

    # A poll interval far above the wait's timeout: only the fd or the wake can end it early.
    with ChangeWaiter([str(tmp_path)], mode=mode, poll_interval=30) as waiter:
        r, w = os.pipe()
        try:
            assert waiter.wait(timeout=0.1, fds=[r]) is False  # nothing readable yet
            threading.Timer(0.2, os.write, (w, b"x")).start()
            t0 = time.monotonic()
            assert waiter.wait(timeout=20, fds=[r]) is True
            assert time.monotonic() - t0 < 5
            assert os.read(r, 10) == b"x"  # left for the caller to read
            threading.Timer(0.2, waiter.wake).start()
            t0 = time.monotonic()
            assert waiter.wait(timeout=20, fds=[r]) is True
            assert time.monotonic() - t0 < 5
            assert waiter.wait(timeout=0.1, fds=[r]) is False  # the wake was used up
        finally:
            os.close(r)
            os.close(w)


def test_an_events_wait_tells_which_of_its_fds_were_readable(tmp_path):
    import os

    with ChangeWaiter([str(tmp_path)], mode="events") as waiter:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        try:
            assert waiter.wait(timeout=0.05, fds=[r1, r2]) is False
            assert waiter.ready_fds == []  # known: none
            os.write(w2, b"x")
            assert waiter.wait(timeout=20, fds=[r1, r2]) is True
            assert waiter.ready_fds == [r2]
            (tmp_path / "f").write_text("x")  # a change, with r2 still readable
            assert waiter.wait(timeout=20, fds=[r1, r2]) is True
            assert waiter.ready_fds == [r2]
            waiter.wake()
            assert waiter.wait(timeout=20, fds=[r1, r2]) is True
            assert waiter.ready_fds is None  # woken before looking: unknown
        finally:
            for fd in (r1, w1, r2, w2):
                os.close(fd)


def test_arrivals_only_wakes_for_renames_in_not_for_temp_files(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    with ChangeWaiter([str(tmp_path)], mode="events", arrivals_only=True) as waiter:
        tmp = tmp_path / ".tmp.1"
        tmp.write_text("partial")  # created, written, closed: a put on its way
        assert waiter.wait(timeout=0.3) is False
        tmp.rename(tmp_path / "message")  # published
        assert waiter.wait(timeout=10) is True
        (tmp_path / "message").rename(outside / "claimed")  # leaving is not an arrival
        assert waiter.wait(timeout=0.3) is False
        (outside / "claimed").rename(tmp_path / "back")  # given back: an arrival
        assert waiter.wait(timeout=10) is True


def test_recursive_events_see_changes_in_subdirectories(tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    with ChangeWaiter([str(tmp_path)], mode="events", recursive=True) as waiter:
        assert waiter.wait(timeout=0.2) is False
        (sub / "deep").write_text("x")
        assert waiter.wait(timeout=10) is True


def test_change_between_construction_and_wait_is_not_lost(tmp_path):
    with ChangeWaiter([str(tmp_path)], mode="events") as waiter:
        (tmp_path / "early").write_text("x")
        time.sleep(0.05)
        assert waiter.wait(timeout=5) is True


def test_close_from_another_thread_unblocks_wait(tmp_path):
    import threading

    waiter = ChangeWaiter([str(tmp_path)], mode="events")
    threading.Timer(0.2, waiter.close).start()
    t0 = time.monotonic()
    assert waiter.wait(timeout=30) is False
    assert time.monotonic() - t0 < 5


def test_auto_mode_polls_on_fuse_and_uses_events_on_local_disk(tmp_path, fuse_root):
    assert resolve_mode([str(tmp_path)]) == "events"
    assert fs_type(str(fuse_root)).startswith("fuse")
    assert resolve_mode([str(fuse_root)]) == "poll"


def test_polling_sees_writes_on_fuse(fuse_root, actors):
    d = fuse_root / "watched"
    d.mkdir()
    writer = actors("touch-later", d / "f", 0.3)
    writer.expect("ready")
    assert wait_for_change([str(d)], timeout=20) is True


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot watch"):
        ChangeWaiter([str(tmp_path / "nope")])


def test_polling_a_directory_made_again_sees_arrivals_in_the_new_one(tmp_path):
    """Poll mode looks at a watched directory through a held descriptor; once that
    directory is removed and made again, what arrives in the new one still wakes it."""
    watched = tmp_path / "ready"
    watched.mkdir()
    with ChangeWaiter([str(watched)], mode="poll", poll_interval=0.02) as waiter:
        watched.rmdir()
        watched.mkdir()
        assert waiter.wait(timeout=5) is True  # the directory itself changed
        assert waiter.wait(timeout=0.2) is False  # and is now quiet
        (watched / "msg").write_text("x")
        assert waiter.wait(timeout=5) is True
        assert waiter.wait(timeout=0.2) is False
