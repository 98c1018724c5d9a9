"""The NFS stand-in (tests/support/latencyfs.py) really injects the faults it claims, on a real mount."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.fuse


def _visible_after(path, timeout: float = 5.0) -> float:
    """Seconds until `path` exists (polling every 10 ms)."""
    start = time.monotonic()
    while not os.path.exists(path):
        assert time.monotonic() - start < timeout, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)
    return time.monotonic() - start


def test_lost_rename_is_performed_but_reports_enoent(nfs_mounts):
    nfs = nfs_mounts(lost_reply=1.0, audit=True)
    (nfs.mount / "a").write_text("payload")
    with pytest.raises(FileNotFoundError):
        os.rename(nfs.mount / "a", nfs.mount / "b")
    assert not (nfs.source / "a").exists()
    assert (nfs.source / "b").read_text() == "payload"
    # the kernel drops the source's dentry after a rename that failed with ENOENT
    assert not (nfs.mount / "a").exists()
    assert (nfs.mount / "b").read_text() == "payload"
    (rec,) = [r for r in nfs.audit() if r.op == "rename"]
    assert (rec.paths, rec.result) == (("/a", "/b"), "lost")


def test_lost_rename_onto_an_existing_name_replaces_it(nfs_mounts):
    nfs = nfs_mounts(lost_reply=1.0)
    (nfs.mount / "new").write_text("new")
    (nfs.mount / "old").write_text("old")
    with pytest.raises(FileNotFoundError):
        os.rename(nfs.mount / "new", nfs.mount / "old")
    assert (nfs.source / "old").read_text() == "new"
    assert (nfs.mount / "old").read_text() == "new"
    assert not (nfs.mount / "new").exists()


def test_lost_link_is_performed_but_reports_eexist(nfs_mounts):
    nfs = nfs_mounts(lost_reply=1.0, audit=True)
    (nfs.mount / "a").write_text("x")
    with pytest.raises(FileExistsError):
        os.link(nfs.mount / "a", nfs.mount / "b")
    assert os.stat(nfs.source / "b").st_ino == os.stat(nfs.source / "a").st_ino
    assert os.stat(nfs.source / "a").st_nlink == 2
    assert (nfs.mount / "b").read_text() == "x"
    (rec,) = [r for r in nfs.audit() if r.op == "link"]
    assert (rec.paths, rec.result) == (("/a", "/b"), "lost")


def test_lost_rename_target_stays_hidden_behind_the_negative_cache(nfs_mounts):
    # The rename's lookup of the (missing) target left a negative dentry; the kernel only drops
    # the source's dentry when the rename fails, so the target is invisible until it expires.
    nfs = nfs_mounts(lost_reply=1.0, negative_cache=0.5)
    (nfs.mount / "a").touch()
    with pytest.raises(FileNotFoundError):
        os.rename(nfs.mount / "a", nfs.mount / "b")
    assert (nfs.source / "b").exists()
    assert 0.3 < _visible_after(nfs.mount / "b") < 2.0


def test_lost_replies_are_drawn_per_operation(nfs_mounts):
    nfs = nfs_mounts(lost_reply=0.5, seed=7, audit=True)
    (nfs.mount / "f0").touch()
    lost = 0
    for k in range(40):
        try:
            os.rename(nfs.mount / f"f{k}", nfs.mount / f"f{k + 1}")
        except FileNotFoundError:
            lost += 1
        assert sorted(os.listdir(nfs.source)) == [f"f{k + 1}"]  # performed either way
    assert 5 <= lost <= 35
    assert [r.result for r in nfs.audit() if r.op == "rename"].count("lost") == lost


def test_rename_flags_are_refused_with_einval(nfs_mounts):
    nfs = nfs_mounts(audit=True)
    (nfs.mount / "a").touch()
    libc = ctypes.CDLL(None, use_errno=True)
    rename_noreplace = 1
    rc = libc.renameat2(-100, bytes(nfs.mount / "a"), -100, bytes(nfs.mount / "b"), rename_noreplace)
    assert rc == -1 and ctypes.get_errno() == errno.EINVAL
    assert (nfs.source / "a").exists() and not (nfs.source / "b").exists()
    assert [(r.op, r.result) for r in nfs.audit() if r.op == "rename"] == [("rename", "EINVAL")]


def test_estale_fails_opens_of_existing_files_and_directories(nfs_mounts):
    nfs = nfs_mounts(estale=1.0, audit=True)
    (nfs.source / "f").write_text("x")
    (nfs.source / "d").mkdir()
    for attempt in (
        (nfs.mount / "f").read_text,
        lambda: os.close(os.open(nfs.mount / "f", os.O_WRONLY | os.O_APPEND)),
        lambda: os.listdir(nfs.mount),
        lambda: os.listdir(nfs.mount / "d"),
    ):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.ESTALE
    assert (nfs.source / "f").read_text() == "x"  # the append-open did nothing
    # creating new files is never failed; stat needs no open
    (nfs.mount / "new").write_text("made")
    os.close(os.open(nfs.mount / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    assert (nfs.source / "new").read_text() == "made" and (nfs.source / "excl").exists()
    assert os.stat(nfs.mount / "f").st_size == 1
    results = {(r.op, r.paths[0], r.result) for r in nfs.audit()}
    assert {("write-open", "/f", "ESTALE"), ("create", "/new", "ok"), ("create", "/excl", "ok")} <= results


@pytest.mark.parametrize("negative_cache", [0.0, 0.4])
def test_negative_lookups_are_cached_for_the_configured_time(nfs_mounts, negative_cache):
    nfs = nfs_mounts(negative_cache=negative_cache)
    late = nfs.mount / "late"
    assert not late.exists()
    (nfs.source / "late").touch()  # behind the client's back, as another client would
    start = time.monotonic()
    assert "late" in os.listdir(nfs.mount)  # readdir is not cached...
    if negative_cache:
        assert not late.exists()  # ...but the failed lookup is
    waited = time.monotonic() - start + _visible_after(late)
    if negative_cache:
        assert negative_cache * 0.5 < waited < negative_cache + 1.0
    else:
        assert waited < 0.1


def test_two_clients_share_the_backing_directory(nfs_mounts):
    nfs = nfs_mounts(clients=2, negative_cache=0.4)
    one, two = nfs.mounts
    assert os.path.ismount(one) and os.path.ismount(two) and one != two
    (one / "from-one").write_text("1")
    assert (two / "from-one").read_text() == "1"
    assert not (one / "from-two").exists()  # client one now caches "no such file"
    (two / "from-two").write_text("2")
    assert (nfs.source / "from-two").read_text() == "2"
    assert (two / "from-two").exists()  # the creating client sees it at once
    assert not (one / "from-two").exists()  # the other only once its negative entry expires
    assert _visible_after(one / "from-two") < 2.0


def test_audit_names_the_calling_process_and_thread(nfs_mounts):
    nfs = nfs_mounts(audit=True)
    (nfs.mount / "a").touch()
    os.rename(nfs.mount / "a", nfs.mount / "b")
    tids: list[int] = []

    def in_thread() -> None:
        tids.append(threading.get_native_id())
        os.rename(nfs.mount / "b", nfs.mount / "c")

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    child = subprocess.run(
        [sys.executable, "-c", f"import os; os.mkdir({str(nfs.mount / 'dir')!r}); print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    records = nfs.audit()
    by_op = {(r.op, r.paths): r for r in records}
    main = by_op["rename", ("/a", "/b")]
    assert (main.tgid, main.tid, main.result) == (os.getpid(), threading.get_native_id(), "ok")
    other = by_op["rename", ("/b", "/c")]
    assert (other.tgid, other.tid) == (os.getpid(), tids[0]) and other.tid != other.tgid
    assert by_op["mkdir", ("/dir",)].tgid == int(child.stdout)
    assert by_op["create", ("/a",)].result == "ok"
    assert [r.time_ns for r in records] == sorted(r.time_ns for r in records)
    # lines are complete as soon as the operation returned
    assert nfs.audit_paths[0].read_text().endswith(" ok\n")


def test_faults_off_file_suppresses_faults(nfs_mounts):
    nfs = nfs_mounts(lost_reply=1.0, estale=1.0, faults_off=True)
    (nfs.mount / "a").write_text("x")
    os.rename(nfs.mount / "a", nfs.mount / "b")  # no fault while off
    assert (nfs.mount / "b").read_text() == "x"
    os.listdir(nfs.mount)
    nfs.faults_on()
    with pytest.raises(FileNotFoundError):
        os.rename(nfs.mount / "b", nfs.mount / "c")
    with pytest.raises(OSError) as e:
        (nfs.mount / "c").read_text()
    assert e.value.errno == errno.ESTALE
    nfs.faults_off()
    os.rename(nfs.mount / "c", nfs.mount / "d")
    assert (nfs.mount / "d").read_text() == "x"


def test_unlinking_an_open_file_is_never_a_lost_reply(nfs_mounts):
    # libfuse hides such a file with an internal rename, which must not be failed
    nfs = nfs_mounts(lost_reply=1.0)
    (nfs.mount / "f").write_text("x")
    with open(nfs.mount / "f") as held:
        os.unlink(nfs.mount / "f")
        assert not (nfs.mount / "f").exists()
        assert [n for n in os.listdir(nfs.source) if n.startswith(".fuse_hidden")]
        assert held.read() == "x"
    deadline = time.monotonic() + 5
    while os.listdir(nfs.source) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(nfs.source) == []
