from __future__ import annotations

import signal
import time

import pytest

from spool import CorruptRecordError, HeartbeatWriter, LivenessTracker
from spool.liveness import decode, fs_age, local_process_gone, process_start_token, read_raw


def test_heartbeat_roundtrip_and_in_place_rewrite(tmp_path):
    w = HeartbeatWriter(str(tmp_path), "gpu-node-1.w0")
    w.beat({"queues": ["gpu"], "running": ["wf1/a"]})
    first = decode(read_raw(w.path), w.path)
    w.beat({"queues": ["gpu"], "running": []})
    second = decode(read_raw(w.path), w.path)
    assert (first.beat, second.beat) == (1, 2)
    assert second.info == {"queues": ["gpu"], "running": []}
    assert second.holder == "gpu-node-1.w0" and first.nonce == second.nonce
    ino = (tmp_path / "gpu-node-1.w0.hb").stat().st_ino
    w.beat()
    assert (tmp_path / "gpu-node-1.w0.hb").stat().st_ino == ino  # same inode: rewritten in place


def test_torn_record_is_detected(tmp_path):
    w = HeartbeatWriter(str(tmp_path), "w")
    w.beat({"x": "y" * 100})
    raw = bytearray(read_raw(w.path))
    raw[30] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="torn"):
        decode(bytes(raw), w.path)
    with pytest.raises(CorruptRecordError, match="truncated"):
        decode(bytes(raw[:8]), w.path)


def test_tracker_uses_only_content_change_and_its_own_clock(tmp_path):
    now = [1000.0]
    tracker = LivenessTracker(dead_after=10, clock=lambda: now[0])
    w = HeartbeatWriter(str(tmp_path), "w1")
    w.beat()
    [obs] = tracker.scan(str(tmp_path))
    assert obs.alive and obs.silent_for == 0  # first sight: benefit of the doubt
    now[0] += 9
    assert tracker.scan(str(tmp_path))[0].alive
    w.beat()  # a change, whatever timestamps say, is a sign of life
    now[0] += 5
    [obs] = tracker.scan(str(tmp_path))
    assert obs.alive and obs.silent_for == 0
    now[0] += 10.5
    [obs] = tracker.scan(str(tmp_path))
    assert not obs.alive and obs.silent_for == pytest.approx(10.5)


def test_killed_worker_is_judged_dead_after_dead_after(tmp_path, actors):
    beater = actors("heartbeat", tmp_path, "w1", 0.05)
    beater.expect("beating")
    tracker = LivenessTracker(dead_after=0.5)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        [obs] = tracker.scan(str(tmp_path))
        assert obs.alive
        time.sleep(0.1)
    assert obs.heartbeat.info == {"queues": ["default"]}
    beater.kill(signal.SIGKILL)
    beater.wait()
    t0 = time.monotonic()
    while tracker.scan(str(tmp_path))[0].alive:
        time.sleep(0.05)
        assert time.monotonic() - t0 < 5
    assert time.monotonic() - t0 >= 0.4


def test_fs_age_uses_the_file_servers_clock(tmp_path):
    w = HeartbeatWriter(str(tmp_path), "w")
    w.beat()
    age = fs_age(w.path)
    assert age is not None and 0 <= age < 5
    assert fs_age(str(tmp_path / "missing.hb")) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clock-probe")]


def test_process_identity(actors, tmp_path):
    import os

    me = os.getpid()
    assert not local_process_gone(me, process_start_token(me))
    assert local_process_gone(me, (process_start_token(me) or 0) + 1)  # same pid, other start: reused
    a = actors("heartbeat", tmp_path, "x", 1)
    a.expect("beating")
    pid, token = a.proc.pid, process_start_token(a.proc.pid)
    assert not local_process_gone(pid, token)
    a.kill(signal.SIGKILL)
    a.wait()
    assert local_process_gone(pid, token)
