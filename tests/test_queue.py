from __future__ import annotations

import os
import time
from collections import Counter

import msgpack
import pytest

import spool.queue as queue_mod
from spool import Home, InvalidNameError, MessageTooLargeError, SpoolQueue
from spool.queue import parse_name


def test_put_claim_ack_roundtrip(home: Home):
    q = home.queue("default")
    name = q.put({"task": "a", "n": 1})
    priority, _, _, attempt = parse_name(name)
    assert (priority, attempt) == (0, 0)
    [msg] = q.claim("w1", 5)
    assert msg.payload == {"task": "a", "n": 1}
    assert msg.worker == "w1" and os.path.exists(msg.path)
    assert q.counts().claimed == {"w1": 1}
    assert q.ack(msg) is True
    assert not os.path.exists(msg.path)
    assert q.ack(msg) is False  # already gone: reported, not raised
    assert q.claim("w1") == []


def test_fifo_within_priority_and_priority_first(home: Home):
    q = home.queue("default")
    for i in range(40):
        q.put(i, priority=0)
    for i in range(5):
        q.put(100 + i, priority=5)
    got = [m.payload for m in q.claim("w", 100)]
    assert got == [100, 101, 102, 103, 104, *range(40)]


def test_higher_priority_seen_after_listing_ttl(home: Home):
    q = SpoolQueue(home.queue_dir("q"), listing_ttl=0.05)
    for i in range(10):
        q.put(i)
    assert [m.payload for m in q.claim("w", 2)] == [0, 1]
    q.put("urgent", priority=10)
    time.sleep(0.25)  # past the listing's TTL (and the hint's 0.1 s check), even on a loaded machine
    assert q.claim("w", 1)[0].payload == "urgent"


def test_nack_release_reap_move_attempts(home: Home):
    q = home.queue("default")
    q.put("x")
    [m] = q.claim("w1")
    assert m.attempt == 0
    q.nack(m)
    [m] = q.claim("w1")
    assert m.attempt == 1
    q.release(m)  # given back unstarted: same attempt
    [m] = q.claim("w2")
    assert m.attempt == 1
    # w2 dies holding it: the sweeper reaps it with attempt + 1
    assert len(q.reap("w2")) == 1
    assert q.counts().claimed == {}
    [m] = q.claim("w3")
    assert (m.payload, m.attempt) == ("x", 2)


def test_nack_with_delay_waits_in_delayed(home: Home):
    q = home.queue("default")
    q.put("later")
    [m] = q.claim("w")
    q.nack(m, delay=0.3)
    assert q.counts().delayed == 1
    assert 0 < q.next_due_in() <= 0.3
    assert q.claim("w") == []
    time.sleep(0.35)
    q._next_delayed_check = 0  # don't wait for this claimer's promotion throttle
    [m] = q.claim("w")
    assert (m.payload, m.attempt) == ("later", 1)


def _ready_shard(q: SpoolQueue) -> str:
    return q._ready[0]


def test_poison_is_quarantined_with_reason_and_does_not_block(home: Home):
    q = home.queue("default")
    shard = _ready_shard(q)
    q.put("good-1")
    bad = {
        "00000-0000000000000000001-garbage.0.msg": b"\xc1\xc1\xc1 not msgpack",
        "00000-0000000000000000002-wrongfmt.0.msg": msgpack.packb([99, "future"]),
        "not-a-message-name.txt": b"hello",
    }
    for name, data in bad.items():
        with open(f"{shard}/{name}", "wb") as f:
            f.write(data)
    q.put("good-2")
    got = [m.payload for m in q.claim("w", 10)]
    assert sorted(got) == ["good-1", "good-2"]
    dead = {d.name: d.reason for d in q.dead()}
    assert set(dead) == set(bad)
    assert "undecodable" in dead["00000-0000000000000000001-garbage.0.msg"]
    assert "format" in dead["00000-0000000000000000002-wrongfmt.0.msg"]
    assert "malformed message name" in dead["not-a-message-name.txt"]
    assert q.counts().dead == 3 and q.counts().ready == 0


def test_oversized_file_dropped_in_by_hand_is_quarantined(home: Home):
    q = SpoolQueue(home.queue_dir("small"), max_message_bytes=1024)
    with open(f"{_ready_shard(q)}/00000-0000000000000000001-big.0.msg", "wb") as f:
        f.write(msgpack.packb([1, "x" * 5000]))
    assert q.claim("w") == []
    [dead] = q.dead()
    assert "oversized" in dead.reason and dead.info["bytes"] > 1024


def test_100mb_message_is_rejected_and_nothing_is_written(home: Home):
    q = home.queue("default")
    with pytest.raises(MessageTooLargeError, match="exceeds the limit"):
        q.put({"blob": b"\0" * (100 << 20)})
    leftovers = [f for d in q._ready for f in os.listdir(d)]
    assert leftovers == []


@pytest.mark.parametrize(
    "bad",
    ["../escape", "a/b", "nul\x00byte", "x" * 300, "..", ".", ".hidden", "", "-dash-first"],
)
def test_unsafe_names_are_rejected(home: Home, bad: str, tmp_path):
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidNameError):
        home.queue(bad)
    q = home.queue("ok")
    q.put("m")
    with pytest.raises(InvalidNameError):
        q.claim(bad)
    if bad != "-dash-first":  # a leading dash is harmless inside a message name
        with pytest.raises(InvalidNameError):
            q.put("m", msg_id=bad)
    with pytest.raises(InvalidNameError):
        q.reap(bad)
    created = sorted(p for p in tmp_path.rglob("*"))
    escaped = [p for p in created if p not in before and not str(p).startswith(str(tmp_path / "home"))]
    assert escaped == []


def test_nfs_and_temp_names_are_ignored(home: Home):
    q = home.queue("default")
    shard = _ready_shard(q)
    for name in (".nfs000000000123", ".tmp.otherhost.1.abc.0", ".fuse_hidden0001"):
        with open(f"{shard}/{name}", "wb") as f:
            f.write(b"junk")
    q.put("real")
    assert [m.payload for m in q.claim("w", 10)] == ["real"]
    assert q.dead() == []
    assert sorted(os.listdir(shard))[:3] == [".fuse_hidden0001", ".nfs000000000123", ".tmp.otherhost.1.abc.0"]


def test_lost_nfs_rename_reply_still_counts_as_claimed(home: Home, monkeypatch):
    q = home.queue("default")
    q.put("once")
    real_rename = os.rename

    def rename_then_lose_reply(src, dst, **dir_fds):
        real_rename(src, dst, **dir_fds)
        raise FileNotFoundError(2, "No such file or directory (retransmitted rename)")

    monkeypatch.setattr(queue_mod.os, "rename", rename_then_lose_reply)
    [m] = q.claim("w")
    monkeypatch.setattr(queue_mod.os, "rename", real_rename)
    assert m.payload == "once"
    assert q.counts().ready == 0


def test_deleted_shard_directory_is_repaired(home: Home, tmp_path):
    q = home.queue("default")
    os.rmdir(q._ready[3])
    q2 = home.queue("default")
    for i in range(40):
        q2.put(i)
    assert sorted(m.payload for m in q2.claim("w", 100)) == list(range(40))


def test_shard_count_is_fixed_by_the_first_user(home: Home):
    a = SpoolQueue(home.queue_dir("s"), shards=4)
    b = SpoolQueue(home.queue_dir("s"), shards=32)
    assert a.shards == b.shards == 4


def test_eight_processes_claim_each_message_exactly_once(fs_root, actors):
    local = "fuse" not in str(fs_root) and "latencyfs" not in str(fs_root)
    n = 20_000 if local else 1_000
    q = SpoolQueue(str(fs_root / "q"))
    for i in range(n):
        q.put(i)
    outs = [fs_root / f"claimed-{k}.txt" for k in range(8)]
    procs = [actors("claim", fs_root / "q", f"w{k}", outs[k], "--batch", 4) for k in range(8)]
    for p in procs:
        p.expect("done", timeout=600)
    counts = Counter(int(line) for out in outs for line in out.read_text().split())
    assert len(counts) == n, f"lost {n - len(counts)} messages"
    assert set(counts) == set(range(n))
    assert max(counts.values()) == 1, f"duplicates: {[k for k, v in counts.items() if v > 1][:10]}"
    c = q.counts()
    assert (c.ready, c.claimed_total, c.dead) == (0, 0, 0)
    # every claimer got a share: sharding spreads work instead of one process winning all
    per_worker = [len(out.read_text().split()) for out in outs]
    assert min(per_worker) > 0


def test_raised_priority_overtakes_a_long_cached_listing_within_a_tick(home: Home):
    q = SpoolQueue(home.queue_dir("q"), listing_ttl=3600)
    for i in range(10):
        q.put(i)
    assert [m.payload for m in q.claim("w", 2)] == [0, 1]
    other = SpoolQueue(home.queue_dir("q"))  # another process, as far as caches go
    other.put("urgent", priority=3)
    time.sleep(0.12)
    assert q.claim("w", 1)[0].payload == "urgent"


def test_a_message_whose_id_ends_in_plus_n_counts_as_n_items(home: Home):
    q = home.queue("default")
    q.put("one", msg_id="a~1~0")
    q.put(["x"] * 5, msg_id="a~2~0+5")
    q.put("odd", msg_id="b+x")  # "+" but no count: one item
    assert queue_mod.items_in(q.ready_names()[1]) == 5
    assert q.counts().ready == 7
    [first] = q.claim("w", 1)
    assert first.payload == "one"
    assert q.counts().ready == 6 and q.counts().claimed == {"w": 1}
    [batch] = q.claim("w", 1)
    assert q.counts().claimed == {"w": 6}
    q.nack(batch, delay=60)
    assert q.counts().delayed == 5


def test_payloads_are_read_wherever_their_messages_lie(home: Home):
    q = home.queue("default")
    q.put("held", msg_id="c")
    [held] = q.claim("w", 1)
    q.put("ready", msg_id="r")
    q.put("later", msg_id="d", delay=60)
    q.put("other", msg_id="o")
    found, complete = q.payloads(["r", "d", "c", "missing"])
    assert complete and sorted(found) == ["held", "later", "ready"]
    assert held.payload == "held" and os.path.exists(held.path)  # read only: nothing moved


def test_a_message_put_with_an_order_time_keeps_that_place(home: Home):
    q = home.queue("default")
    q.put("first", msg_id="a")
    q.put("second", msg_id="b")
    [first] = q.claim("w", 1)
    q.put("first again", msg_id="a2", order_ns=first.put_ns)  # e.g. taken out of a batch
    assert [parse_name(n)[2] for n in q.ready_names()] == ["a2", "b"]  # service order
    with pytest.raises(ValueError, match="order_ns"):
        q.put("x", order_ns=12)


def test_a_claimant_reaped_while_it_holds_its_directory_open_claims_again(fs_root):
    """A queue object keeps its claim directory open (claims rename relative to it); a
    sweeper that judged it dead removes that directory. Its next claims make the directory
    again and lose nothing."""
    home = Home.open(str(fs_root / "home"))
    worker, sweeper = home.queue("q"), home.queue("q")
    worker.put("a")
    [m] = worker.claim("w")
    assert sweeper.reap("w") and not os.path.exists(f"{sweeper.root}/claimed/w")
    worker.put("b")
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:  # "a" is back in a shard listed a while ago
        got += worker.claim("w", 10)
        time.sleep(0.05)
    assert sorted(x.payload for x in got) == ["a", "b"]
    assert all(worker.ack(x) for x in got)
    assert not worker.ack(m)  # the first claim was reaped: no longer ours
    assert worker.counts().claimed == {} and sweeper.claim("other", 10) == []


def test_shard_directories_made_again_behind_held_descriptors_get_the_puts(fs_root):
    """Puts and listings go through held descriptors of the ready shards; shards removed
    and made again (by hand, or a repair) are the ones used next, not the removed ones."""
    home = Home.open(str(fs_root / "home"))
    q = home.queue("q")
    for i in range(q.shards):
        q.put(i)
    assert len(q.claim("w", 100)) == q.shards  # every shard directory now held open
    for directory in q._ready:
        os.rmdir(directory)
        os.mkdir(directory)
    for i in range(40):
        q.put(i)
    other = home.queue("q")
    assert sorted(m.payload for m in other.claim("v", 100)) == list(range(40))
    for i in range(40, 50):
        other.put(i)
    deadline = time.monotonic() + 5
    got: list[int] = []
    while len(got) < 10 and time.monotonic() < deadline:
        got += [m.payload for m in q.claim("w", 100)]
        time.sleep(0.05)
    assert sorted(got) == list(range(40, 50))


def test_a_contended_claimer_spreads_within_the_best_priority_only(home: Home):
    """After lost renames a claimer picks from a window of names instead of the heads, but
    never a lower priority while a higher one is listed; and it still gets every message."""
    q = home.queue("q")
    for i in range(200):
        q.put(("low", i))
    for i in range(100):
        q.put(("high", i), priority=5)
    claimer = home.queue("q")
    claimer.listings.spread = 256  # as after several lost renames
    got = [m.payload for m in claimer.claim("w", 1000)]
    assert [p[0] for p in got] == ["high"] * 100 + ["low"] * 200
    assert sorted(i for kind, i in got if kind == "low") == list(range(200))
    assert [i for kind, i in got if kind == "high"] != list(range(100))  # spread, not in order


def test_a_claimer_whose_shard_ran_dry_under_it_still_finds_the_other_shards_messages(home: Home):
    """A lost rename in a shard that then lists empty makes the claimer drop every cached
    listing; the messages of shards that did not change since must still be claimed."""
    q = home.queue("q")
    q._put_shard = 0
    q.put("first")  # shard 0
    q._put_shard = 1
    q.put("second")  # shard 1
    late = home.queue("q")
    assert late.claim("a", 0) == []  # lists both shards, claims nothing
    [m] = home.queue("q").claim("b", 1)
    assert m.payload == "first"  # taken from under `late`'s listing of shard 0
    [m] = late.claim("a", 1)  # loses "first", finds shard 0 dry, must still see shard 1
    assert m.payload == "second"
