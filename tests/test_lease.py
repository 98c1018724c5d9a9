from __future__ import annotations

import json
import signal
import time

import pytest

from spool import CasRecord, DeposedError, Lease, LeaseHeldError


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
    time.sleep(ttl / 2)  # let it make a fenced write or two
    old.kill(signal.SIGSTOP)
    # If the stop caught `old` inside a renewal, it holds the lease record's lock: `new` may
    # break that lock once it has stayed unchanged for lock_stale_after.
    new = Lease(str(path), "new", ttl=ttl, fast_takeover=False, lock_stale_after=2)
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
    assert entry["reason"] == "coordinator host is unreachable"
    assert entry["broken"]["holder"] == "coordinator-1"
    with pytest.raises(DeposedError, match="broken by an operator"):
        holder.assert_held()
    assert operator.acquire(timeout=1) == 2
    with pytest.raises(DeposedError):
        holder.renew()
