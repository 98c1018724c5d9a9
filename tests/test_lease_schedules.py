"""The lease under every interleaving of a small set of steps: pauses, takeovers, renewals
and resumptions, with fake clocks (deterministic, in one process, on real files).

The safety property (docs/protocols.md, "Why two coordinators never both write"): once a
contender of generation g has passed the fence (acquired, renewed or passed
`assert_held`), no contender of a lower generation ever passes it again. Each contender
has a clock of its own, advanced only by its own `tick`, so the property is checked for
any rates and pauses of the clocks: it must rest on the files alone.
"""

from __future__ import annotations

import itertools
import os

import pytest

from spool import DeposedError, Lease
from spool import lease as lease_mod

TTL = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def interleavings(*scripts: list[str]):
    """Every merge of the scripts that keeps each one's own order, as (who, step) lists."""
    if not scripts:
        yield []
        return
    first, rest = scripts[0], scripts[1:]
    total = len(first) + sum(len(s) for s in rest)
    for merged_rest in interleavings(*rest):
        for places in itertools.combinations(range(total), len(first)):
            out, mine, others = [], iter(first), iter(merged_rest)
            chosen = set(places)
            for k in range(total):
                if k in chosen:
                    out.append((0, next(mine)))
                else:
                    who, step = next(others)
                    out.append((who + 1, step))
            yield out


def run_schedule(path: str, schedule: list[tuple[int, str]], n: int, shared_clock: bool) -> list[tuple]:
    """Carry out one schedule; returns the passes [(step number, who, generation, step)]."""
    shared = Clock()
    clocks = [shared if shared_clock else Clock() for _ in range(n)]
    leases = [Lease(path, f"c{i}", ttl=TTL, clock=clocks[i], fast_takeover=False) for i in range(n)]
    passes = []
    for k, (who, step) in enumerate(schedule):
        lease = leases[who]
        try:
            if step == "acquire":
                ok = lease.try_acquire()
            elif step == "renew":
                ok = lease.held and (lease.renew() or True)
            elif step == "fence":
                ok = lease.held and (lease.assert_held() or True)
            elif step == "fresh":  # the hot paths' check: no I/O within ttl / 2 of a renewal
                ok = lease.held and (lease.renew_if_older_than(TTL / 2) or True)
            elif step == "tick":  # this contender's clock moves past the ttl (it was paused, or runs fast)
                clocks[who].now += TTL
                ok = False
            elif step == "break":
                lease.break_lease("test")
                ok = False
            else:
                raise AssertionError(step)
        except DeposedError:
            ok = False
        if ok:
            passes.append((k, who, lease.generation, step))
    return passes, leases


def check(passes: list[tuple], schedule: list[tuple[int, str]]) -> None:
    highest = 0
    for k, who, generation, step in passes:
        assert generation >= highest, (
            f"contender {who} of generation {generation} passed {step!r} at step {k} after generation "
            f"{highest} had: {schedule}"
        )
        highest = generation


def final_holders(leases: list[Lease]) -> list[int]:
    held = []
    for i, lease in enumerate(leases):
        try:
            if lease.held:
                lease.assert_held()
                held.append(i)
        except DeposedError:
            pass
    return held


@pytest.mark.parametrize("keep", [1, lease_mod.KEEP])
def test_every_interleaving_of_a_pause_a_takeover_and_a_resumption(tmp_path, monkeypatch, keep):
    """A holds the lease, its clock stops (or runs slow) while B's passes the ttl, B takes
    over and renews twice, A resumes renewing and fencing. With `keep` 1 the entries A
    knew are long gone when it resumes, so its appends land on free numbers."""
    monkeypatch.setattr(lease_mod, "KEEP", keep)
    a = ["acquire", "fence", "renew", "fence", "tick", "fence"]
    b = ["acquire", "tick", "acquire", "renew", "renew", "fence"]
    count = 0
    for i, schedule in enumerate(interleavings(a, b)):
        path = str(tmp_path / f"s{keep}-{i}")
        passes, leases = run_schedule(path, schedule, 2, shared_clock=False)
        check(passes, schedule)
        assert len(final_holders(leases)) <= 1, schedule
        head = Lease(path, "observer").inspect()
        holders = final_holders(leases)
        if holders:
            assert head.holder == f"c{holders[0]}", schedule
        count += 1
    assert count == 924  # (12 choose 6): all of them


def test_every_interleaving_on_one_clock_with_the_hot_path_check(tmp_path):
    """On one shared clock (real time: everyone's clock moves) the cheap check of the hot
    paths, which reads nothing within ttl / 2 of a renewal, is safe too."""
    a = ["acquire", "fresh", "tick", "fresh", "fence"]
    b = ["acquire", "tick", "acquire", "renew", "fresh"]
    for i, schedule in enumerate(interleavings(a, b)):
        path = str(tmp_path / f"s{i}")
        passes, leases = run_schedule(path, schedule, 2, shared_clock=True)
        check(passes, schedule)
        assert len(final_holders(leases)) <= 1, schedule


def test_three_contenders_and_an_operator_break(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_mod, "KEEP", 1)
    a = ["acquire", "renew", "fence"]
    b = ["acquire", "tick", "acquire", "renew"]
    c = ["tick", "acquire", "break", "acquire"]
    n = 0
    for i, schedule in enumerate(interleavings(a, b, c)):
        if i % 7:  # a deterministic seventh of the 11,550 keeps this test short
            continue
        path = str(tmp_path / f"s{i}")
        passes, leases = run_schedule(path, schedule, 3, shared_clock=False)
        check(passes, schedule)
        assert len(final_holders(leases)) <= 1, schedule
        n += 1
    assert n > 1000


def test_a_stale_append_on_a_freed_number_is_removed_and_changes_nothing(tmp_path, monkeypatch):
    """The defect of issue 10: A stopped, B took over and renewed twice (freeing the numbers
    A knew), A resumed: its renewal re-created a freed number and passed. Now it is refused,
    the entry it made is gone again, and B still holds the lease."""
    monkeypatch.setattr(lease_mod, "KEEP", 1)
    path = str(tmp_path / "lease")
    ca, cb = Clock(), Clock()
    a = Lease(path, "a", ttl=TTL, clock=ca, fast_takeover=False)
    b = Lease(path, "b", ttl=TTL, clock=cb, fast_takeover=False)
    assert a.try_acquire()
    assert not b.try_acquire()
    cb.now += TTL
    assert b.try_acquire() and b.generation == 2
    b.renew()
    b.renew()
    assert os.listdir(path) == [f"{4:016d}"]
    with pytest.raises(DeposedError, match=r"taken over; now held by b"):
        a.renew()
    assert os.listdir(path) == [f"{4:016d}"]
    with pytest.raises(DeposedError):
        a.assert_held()
    b.assert_held()
    assert Lease(path, "observer").inspect().holder == "b"
    log = (tmp_path / "lease.log").read_text()
    assert '"event": "takeover"' in log and '"event": "deposed"' in log
