from __future__ import annotations

import json
import os
import signal
import time

import pytest

from spool import CasRecord, DeposedError, LayoutError, Lease, LeaseHeldError
from spool.atomic import create_exclusive
from spool.lease import KEEP


def test_two_contenders_one_holder(fs_root):
    path = str(fs_root / "lease")
    a = Lease(path, "a", ttl=5)
    b = Lease(path, "b", ttl=5)
    assert a.try_acquire() is True
    assert b.try_acquire() is False
    with pytest.raises(LeaseHeldError, match="held by a"):
        b.acquire(timeout=0.3)
    info = b.inspect()
    assert (info.holder, info.generation) == ("a", 1)
    a.renew()
    a.assert_held()
    a.release()
    assert b.acquire(timeout=1) == 2


def test_killed_holder_is_taken_over_after_expiry_with_next_generation(fs_root, actors):
    path = fs_root / "lease"
    ttl = 1.5
    holder = actors("lease-hold", path, "first", ttl, fs_root / "state")
    assert holder.expect("held").split()[1] == "1"
    contender = Lease(str(path), "second", ttl=ttl, fast_takeover=False)
    assert contender.try_acquire() is False
    holder.kill(signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    assert contender.acquire(timeout=30, poll=0.05) == 2
    assert time.monotonic() - t0 >= ttl * 0.9  # waited out the expiry on its own clock


def test_dead_holder_on_this_host_is_taken_over_at_once(tmp_path, actors):
    path = tmp_path / "lease"
    holder = actors("lease-hold", path, "first", 30, tmp_path / "state")
    holder.expect("held")
    holder.kill(signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    assert Lease(str(path), "second", ttl=30).acquire(timeout=5) == 2
    assert time.monotonic() - t0 < 1.0  # no need to wait 30 s for a provably dead pid


def test_stopped_holder_is_deposed_and_refuses_to_write(fs_root, actors):
    path, state = fs_root / "lease", fs_root / "state"
    ttl = 1.0
    old = actors("lease-hold", path, "old", ttl, state)
    old.expect("held")
    for _ in range(3):  # let it make a fenced write or two, then stop it as it goes to sleep
        old.expect("tick")
    # Stopped anywhere else it is deposed all the same (renewals are exclusive creates:
    # test_a_stalled_holder_cannot_clobber_its_successor), except inside the one window the
    # CAS lock documents: between its last check and its rename of the state record.
    old.kill(signal.SIGSTOP)
    new = Lease(str(path), "new", ttl=ttl, fast_takeover=False)
    assert new.acquire(timeout=30, poll=0.05) == 2
    rec = CasRecord(str(state), lock_stale_after=2)
    _, version = rec.read()
    rec.write({"by": "new", "generation": 2}, version, fence=new.assert_held)
    old.kill(signal.SIGCONT)
    line = old.expect("deposed", timeout=30)
    assert "taken over" in line and "new" in line
    assert old.wait() == 3
    assert rec.read()[0] == {"by": "new", "generation": 2}  # the deposed holder wrote nothing
    new.renew()
    new.assert_held()


def test_operator_break_is_logged_and_deposes_the_holder(tmp_path):
    path = str(tmp_path / "lease")
    holder = Lease(path, "coordinator-1", ttl=30)
    holder.acquire(timeout=1)
    operator = Lease(path, "operator", ttl=30)
    broken = operator.break_lease("coordinator host is unreachable")
    assert broken.holder == "coordinator-1"
    entry = json.loads((tmp_path / "lease.log").read_text().splitlines()[-1])
    assert (entry["event"], entry["reason"]) == ("break", "coordinator host is unreachable")
    assert entry["previous"]["holder"] == "coordinator-1"
    with pytest.raises(DeposedError, match="broken by an operator"):
        holder.assert_held()
    assert operator.acquire(timeout=1) == 2
    with pytest.raises(DeposedError):
        holder.renew()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_stalled_holder_cannot_clobber_its_successor(tmp_path):
    """A holder that was stopped past its ttl, then resumes its renewal, finds the next entry
    taken: deposed, and the successor keeps the lease (a rename-based record let the late
    renewal land over the successor's)."""
    path = str(tmp_path / "lease")
    clock = FakeClock()
    a = Lease(path, "a", ttl=5, clock=clock, fast_takeover=False)
    b = Lease(path, "b", ttl=5, clock=clock, fast_takeover=False)
    assert a.try_acquire()
    a.assert_held()  # the fence passes: then `a` stalls
    assert b.try_acquire() is False  # starts b's clock on the head it sees
    clock.now += 5
    assert b.try_acquire() is True and b.generation == 2
    with pytest.raises(DeposedError, match=r"taken over; now held by b \(pid \d+ on .*generation 2\)"):
        a.renew()
    b.assert_held()
    b.renew()
    assert b.inspect().holder == "b"
    with pytest.raises(DeposedError):
        a.assert_held()


def test_the_lease_directory_keeps_a_bounded_history(tmp_path):
    path = tmp_path / "lease"
    holder = Lease(str(path), "a", ttl=5)
    holder.acquire(timeout=1)
    for _ in range(100):
        holder.renew()
    assert sorted(os.listdir(path)) == [f"{n:016d}" for n in range(101 - KEEP + 1, 102)]
    info = Lease(str(path), "observer").inspect()
    assert (info.holder, info.renewals, info.version) == ("a", 100, 101)
    holder.release()
    assert Lease(str(path), "observer").inspect().holder is None
    assert len(os.listdir(path)) == KEEP


def test_an_appender_that_died_before_its_unlink_still_deposes_the_holder(tmp_path):
    path = tmp_path / "lease"
    holder = Lease(str(path), "a", ttl=5)
    holder.acquire(timeout=1)
    # What a successor that died between its exclusive create and its unlink leaves behind.
    taker = {"holder": "b", "host": "elsewhere", "pid": 1, "generation": 2, "renewals": 0}
    assert create_exclusive(str(path / f"{2:016d}"), json.dumps(taker).encode())
    assert len(os.listdir(path)) == 2
    with pytest.raises(DeposedError, match="now held by b"):
        holder.assert_held()


def test_a_lease_record_from_an_earlier_layout_is_refused_by_name(tmp_path):
    path = tmp_path / "lease"
    path.write_bytes(b"an old CAS record")
    with pytest.raises(LayoutError, match=r"lease is a lease record from an earlier tuiflow"):
        Lease(str(path), "a", ttl=5).acquire(timeout=1)
    with pytest.raises(LayoutError, match="delete the file"):
        Lease(str(path), "observer").inspect()
    assert path.read_bytes() == b"an old CAS record"  # nothing lost


def test_a_corrupt_lease_entry_is_broken_by_an_operator_and_expires_by_itself(tmp_path):
    """A head entry that does not decode (a disk fault, a hand edit) names no holder: it is
    taken over once it has not moved for the ttl, like a silent holder, and an operator's
    break clears it at once. Generations go on above every readable entry's."""
    path = tmp_path / "lease"
    first = Lease(str(path), "a", ttl=5)
    first.acquire(timeout=1)
    first.renew()
    (path / f"{3:016d}").write_bytes(b"\x00garbage{")  # the head now: corrupt
    observer = Lease(str(path), "observer")
    info = observer.inspect()
    assert info.holder is not None and "unreadable" in info.holder and info.generation == 2
    broken = Lease(str(path), "operator", ttl=5).break_lease("corrupt head entry")
    assert broken is not None and "unreadable" in broken.holder
    assert Lease(str(path), "b", ttl=5).acquire(timeout=1) == 3
    (path / f"{5:016d}").write_bytes(b"{not json")  # b's own entry, the head, goes bad
    fake = FakeClock()
    c = Lease(str(path), "c", ttl=5, clock=fake, fast_takeover=False)
    assert c.try_acquire() is False  # an unknown holder: watched like any other
    fake.now += 5
    assert c.try_acquire() is True and c.generation == 4  # above the 3 the bad entry may have held
