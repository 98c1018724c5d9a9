"""The spool under the faults real NFS clients show (tests/support/latencyfs.py): replies to
renames and links lost after the server performed them, and stale file handles. Every call
site that renames or links is driven through a mount where *every* such call reports a
failure it did not have; nothing may be lost, doubled, or reported as failed."""

from __future__ import annotations

import errno
import os
import time

import pytest

from spool import CasRecord, Home, Lease, SpoolQueue, StorageError
from spool.atomic import atomic_write, create_exclusive, read_bytes
from spool.fsops import STALE_RETRIES, link_new, listdir, place, take
from tuiflow.engine.client import Client

pytestmark = pytest.mark.fuse


@pytest.fixture
def lossy(nfs_mounts):
    """A mount on which every rename and link is performed and then reported as failed."""
    return nfs_mounts(lost_reply=1.0, latency_ms=0).mount


def test_the_helpers_tell_a_lost_reply_from_a_real_failure(lossy):
    (lossy / "a").write_text("x")
    with pytest.raises(FileNotFoundError):
        os.rename(lossy / "a", lossy / "b")  # the fault is real: the reply says it failed...
    assert (lossy / "b").read_text() == "x"  # ...but it happened
    assert take(str(lossy / "b"), str(lossy / "c")) is True
    assert take(str(lossy / "b"), str(lossy / "d")) is False  # gone already: someone else took it
    (lossy / "tmp").write_text("new")
    place(str(lossy / "tmp"), str(lossy / "c"))
    assert (lossy / "c").read_text() == "new"
    (lossy / "t2").write_text("x")
    with pytest.raises(FileNotFoundError):
        place(str(lossy / "t2"), str(lossy / "no-such-dir" / "c"))  # a real failure stays one
    assert link_new(str(lossy / "c"), str(lossy / "e")) is True
    assert link_new(str(lossy / "t2"), str(lossy / "e")) is False  # the name is another file's
    assert create_exclusive(str(lossy / "f"), b"1") is True
    assert create_exclusive(str(lossy / "f"), b"2") is False
    assert (lossy / "f").read_bytes() == b"1"


def test_a_queue_loses_and_doubles_nothing_when_every_reply_is_lost(lossy):
    q = SpoolQueue(str(lossy / "q"), shards=4)
    for i in range(40):
        q.put(i)
    q.put(40, delay=0.05)
    assert q.counts().ready == 40
    seen: list[int] = []
    msgs = q.claim("w1", 40)
    assert sorted(m.payload for m in msgs) == list(range(40))
    assert q.nack(msgs[0]) is not None  # back, attempt 1
    assert q.release(msgs[1]) is not None  # back, attempt 0
    assert q.nack(msgs[2], delay=0.05) is not None
    for m in msgs[3:]:
        assert q.ack(m)
        seen.append(m.payload)
    dead = q.claim("w2", 1)
    assert q.reap("w2") and dead[0].payload not in seen
    deadline = 50
    while deadline and len(seen) < 41:
        q._next_delayed_check = 0  # promote at once
        for m in q.claim("w1", 10):
            assert q.ack(m)
            seen.append(m.payload)
        deadline -= 1
        if len(seen) < 41:
            time.sleep(0.02)
    assert sorted(seen) == list(range(41))
    counts = q.counts()
    assert (counts.ready, counts.delayed, counts.claimed_total, counts.dead) == (0, 0, 0, 0)


def test_records_leases_and_workflows_when_every_reply_is_lost(lossy):
    rec = CasRecord(str(lossy / "rec"))
    for n in range(5):
        assert rec.write({"n": n}, n) == n + 1
    assert rec.read() == ({"n": 4}, 5)
    atomic_write(str(lossy / "plain"), b"data")
    assert read_bytes(str(lossy / "plain")) == b"data"

    lease = Lease(str(lossy / "lease"), "a", ttl=5)
    assert lease.acquire(timeout=2) == 1
    for _ in range(3):
        lease.renew()
    lease.assert_held()
    lease.release()
    assert Lease(str(lossy / "lease"), "b", ttl=5).acquire(timeout=2) == 2

    home = Home.open(lossy / "home")
    client = Client(home)
    wf = lossy / "wf.yaml"
    wf.write_text("name: w\ntasks:\n  - {name: t, run: 'true'}\n")
    wf_id = client.submit_file(str(wf))
    assert [s["id"] for s in client.list()] == [wf_id]  # whole: a summary, a state
    assert client.run(wf_id).state == "pending"
    client.cancel(wf_id)
    requests = home.control().claim("c", 10)
    assert sorted(m.payload["op"] for m in requests) == ["cancel", "submit"]
    assert not [n for n in listdir(home.workflows_dir) if n.startswith(".")]  # no staging left


def test_estale_is_retried_and_reported_by_path_when_it_persists(nfs_mounts):
    fs = nfs_mounts(estale=1.0, latency_ms=0, faults_off=True)
    (fs.mount / "f").write_bytes(b"data")
    (fs.mount / "d").mkdir()
    fs.faults_on()
    with pytest.raises(StorageError, match=r"cannot read .*/f: stale file handle \(ESTALE\) 6 times") as e:
        read_bytes(str(fs.mount / "f"))
    assert e.value.errno == errno.ESTALE and STALE_RETRIES == 6
    with pytest.raises(StorageError, match="cannot list"):
        listdir(str(fs.mount / "d"))


def test_estale_now_and_then_is_never_seen(nfs_mounts):
    """At a high rate of ESTALE (the kernel retries once by itself, so 0.5 per open here is
    a quarter per open(2)), every read still gets its data."""
    fs = nfs_mounts(estale=0.5, latency_ms=0, faults_off=True, seed=7)
    rec = CasRecord(str(fs.mount / "rec"))
    rec.write({"v": 1}, 0)
    q = SpoolQueue(str(fs.mount / "q"), shards=2)
    q.put("m")
    fs.faults_on()
    for _ in range(50):
        assert rec.read() == ({"v": 1}, 1)
        assert rec.read_version() == 1
    assert [m.payload for m in q.claim("w", 1)] == ["m"]


def test_a_claim_whose_reply_is_lost_behind_a_negative_cache_is_not_stranded(nfs_mounts):
    """The rename happened but was reported as failed, and the kernel still answers "no
    such file" for the destination from the negative entry the rename's own lookup made:
    the listing proves the claim, and a later claim hands the message over."""
    fs = nfs_mounts(lost_reply=1.0, negative_cache=0.3, latency_ms=0)
    q = SpoolQueue(str(fs.mount / "q"), shards=1)
    q.put("only")
    got = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        got = q.claim("w", 1)
        time.sleep(0.02)
    assert [m.payload for m in got] == ["only"]
    assert q.ack(got[0])
    assert q.claim("w", 1) == [] and not q.claimed()


def test_temporary_files_of_dead_writers_are_removed(tmp_path, actors):
    from spool.atomic import HOST
    from spool.janitor import remove_stale_temps

    sleeper = actors("touch-later", tmp_path / "never", 600)
    sleeper.expect("ready")
    dead = tmp_path / f".tmp.{HOST}.999999999.abcd.0"  # no such pid
    live = tmp_path / f".tmp.{HOST}.{sleeper.proc.pid}.abcd.0"
    foreign = tmp_path / ".tmp.otherhost.12.abcd.0"
    old = tmp_path / ".tmp.otherhost.13.abcd.0"
    for p in (dead, live, foreign, old):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temps([str(tmp_path)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == sorted(
        [live.name, foreign.name]
    )
