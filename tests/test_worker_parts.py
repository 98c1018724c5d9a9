"""The worker's parts, each on its own against a temporary home, in milliseconds: claiming in
turn (`claims`), slots, GPUs and the bundle backlog (`slots`), the flush policy and
ack-after-publish (`outbox`), one execution path for every executor (`runner`), and the
loop that composes them (`worker`: burst, drain, hard stop, clean and abnormal exits).

Fake executors implement the protocols of `workers.executors.interface`; the real shell
executor appears where the point is the real thing (an output file, asset and lineage rows).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from analyzer import contract as c
from spool import Home, Settings, StorageError, layout
from workers.attempt import Attempt, AttemptSetup
from workers.claims import Claim, WorkerQueues
from workers.errors import WorkerConfigError
from workers.executors import EXECUTORS, Executor, InlineExecutor, Outcome, Phase, TaskContext
from workers.markers import StopMarkers
from workers.outbox import BACKLOG_FLUSH_DELAY, FLUSH_DELAY, FLUSH_MAX, STARTED_DELAY, Outbox
from workers.runner import AttemptRunner
from workers.slots import SlotPool
from workers.tracing import Telemetry
from workers.wire import AttemptKey, Bundle, Event, EventKind, FailKind, TaskMessage, decode_task_payload
from workers.worker import Worker

FAST = Settings(heartbeat_interval=0.2, dead_after=1.5, lease_ttl=2.0, poll_interval=0.05)


@pytest.fixture
def home(tmp_path) -> Home:
    return Home.open(tmp_path / "home", settings=FAST)


def task(idx: int, executor: str = "fake-thread", *, wf: str = "wf1", gpus: int = 0, **spec) -> TaskMessage:
    return TaskMessage(
        wf=wf, idx=idx, task=f"t{idx}", attempt=0, executor=executor, spec=spec, gpus=gpus, ready_at=1.0
    )


def put(q, *tasks: TaskMessage, priority: int = 0) -> str:
    """Queue one task message, or a bundle of several; the message's name."""
    if len(tasks) == 1:
        return q.put(tasks[0].to_wire(), priority, msg_id=tasks[0].message_id)
    b = Bundle(tuple(tasks))
    return q.put(b.to_wire(), priority, msg_id=b.message_id)


def published(home: Home) -> list[dict]:
    """Every event published so far, in order (the completions queue emptied)."""
    q, out = home.completions(), []
    while msgs := q.claim("reader", 1000):
        for m in sorted(msgs, key=lambda m: m.name):
            assert m.payload["v"] == 1 and isinstance(m.payload["sent_at"], float)
            out.extend(m.payload["events"])
            q.ack(m)
    return out


def wait_until(predicate, timeout: float = 10.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def write_output(ctx: TaskContext, value) -> None:
    with open(ctx.output_path, "w") as f:
        json.dump(value, f)


# ------------------------------------------------------------------ executors
class ThreadFake(Executor):
    """Runs on a slot thread. The spec says what to do: ``sleep`` (seconds, stopped early by
    ``should_stop``), ``output`` (a value), ``show`` (a variable of its environment to output), ``raise``."""

    name = "fake-thread"
    runs: list[str] = []

    def run(self, ctx: TaskContext) -> Outcome:
        spec = ctx.msg.spec
        ThreadFake.runs.append(ctx.msg.task)
        if "raise" in spec:
            raise RuntimeError(spec["raise"])
        t0 = time.time()
        end = time.monotonic() + spec.get("sleep", 0)
        while time.monotonic() < end:
            if reason := ctx.should_stop():
                return Outcome.failed(
                    reason, f"{reason}: stopped", phases=[Phase(c.EXECUTE_SPAN, t0, time.time())]
                )
            time.sleep(0.002)
        if "show" in spec:
            write_output(ctx, ctx.task_env.get(spec["show"]))
        elif "output" in spec:
            write_output(ctx, spec["output"])
        return Outcome.completed(exit_code=0, phases=[Phase(c.EXECUTE_SPAN, t0, time.time())])

    def close(self) -> None:
        pass


class InlineFake(InlineExecutor):
    """Followed by the loop: readable at once unless the spec says ``hang``."""

    name = "fake-inline"
    stops: list[FailKind] = []

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def run(self, ctx: TaskContext) -> Outcome:
        return self.start(ctx) or self.finish(ctx)

    def start(self, ctx: TaskContext) -> Outcome | None:
        if not ctx.msg.spec.get("hang"):
            os.write(self.w, b"!")
        return None

    def fileno(self) -> int:
        return self.r

    def finish(self, ctx: TaskContext) -> Outcome:
        os.read(self.r, 1)
        if "raise" in ctx.msg.spec:
            raise RuntimeError(ctx.msg.spec["raise"])
        if "output" in ctx.msg.spec:
            write_output(ctx, ctx.msg.spec["output"])
        return Outcome.completed()

    def stop(self, ctx: TaskContext, reason: FailKind) -> Outcome:
        InlineFake.stops.append(reason)
        return Outcome.failed(reason, f"{reason}: stopped")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    monkeypatch.setitem(EXECUTORS, "fake-thread", ThreadFake)
    monkeypatch.setitem(EXECUTORS, "fake-inline", InlineFake)
    ThreadFake.runs = []
    InlineFake.stops = []


def test_the_interface_is_declared_not_probed():
    assert ThreadFake.inline is False and InlineFake.inline is True
    assert EXECUTORS["python"].inline is True and EXECUTORS["shell"].inline is False
    assert ThreadFake().warm() is None  # the optional method's default comes with the protocol


# --------------------------------------------------------------------- claims
def test_claims_take_the_queues_in_turn(home):
    a, b = home.queue("a"), home.queue("b")
    for i in range(3):
        put(a, task(i))
        put(b, task(10 + i))
    queues = WorkerQueues(home, ["a", "b", "a"])
    assert queues.names == ["a", "b"]
    name = {id(q): n for n, q in queues.by_name.items()}
    order = []
    while (got := queues.claim("w", 1)) is not None:
        q, [msg] = got
        order.append((name[id(q)], msg.payload["idx"]))
    assert order == [("a", 0), ("b", 10), ("a", 1), ("b", 11), ("a", 2), ("b", 12)]
    # an empty queue is skipped, whoever's turn it was
    put(b, task(20))
    put(b, task(21))
    q, msgs = queues.claim("w", 5)
    assert q is queues.by_name["b"] and [m.payload["idx"] for m in msgs] == [20, 21]
    assert queues.claim("w", 5) is None


def test_queues_are_let_go_only_when_nothing_is_held(home):
    q = home.queue("default")
    put(q, task(0))
    queues = WorkerQueues(home, [])
    assert queues.names == ["default"] and not queues.empty()
    _, [msg] = queues.claim("w", 1)
    assert queues.empty()
    assert not queues.let_go("w")
    q.ack(msg)
    assert queues.let_go("w") and q.claimed() == {}


# ---------------------------------------------------------------------- slots
def test_a_freed_slot_goes_to_the_back_of_the_line():
    pool = SlotPool(3)
    assert [pool.take(0)[0] for _ in range(3)] == [0, 1, 2]
    assert pool.take(0) is None and pool.free == 0
    pool.release(1, [])
    pool.release(0, [])
    assert [pool.take(0)[0] for _ in range(2)] == [1, 0]


def test_gpus_are_handed_out_first_free_first_and_come_back_in_gpus_order():
    pool = SlotPool(4, [3, 0, 2, 1])
    assert pool.take(1) == (0, [3])
    assert pool.take(2) == (1, [0, 2])
    assert pool.take(2) is None  # one GPU left: the slot is not taken either
    assert pool.free == 2
    pool.release(0, [3])
    assert pool.free_gpus == [3, 1]
    pool.release(1, [0, 2])
    assert pool.free_gpus == [3, 0, 2, 1]
    assert pool.take(0) == (2, [])  # a task needing no GPU gets none
    assert pool.fits(4) and not pool.fits(5)
    unmanaged = SlotPool(1)
    assert unmanaged.fits(8) and unmanaged.take(8) == (0, [])  # the worker does not hand out GPUs


def test_held_tasks_start_in_order_and_the_rest_stay_held(home):
    q = home.queue("default")
    pool = SlotPool(2, [0])
    started = []
    claims = {i: Claim(None, q) for i in range(4)}
    for i, gpus in ((0, 1), (1, 1), (2, 0), (3, 1)):
        pool.hold(claims[i], task(i, gpus=gpus))
    assert pool.waiting

    def start(claim, t):
        if pool.take(t.gpus) is None:
            return False
        started.append(t.idx)
        return True

    assert pool.retry_held(start) == 2
    assert started == [0, 2] and [t.idx for _, t in pool.held] == [1, 3]


def test_bundled_tasks_start_only_in_free_slots(home):
    pool = SlotPool(1)
    claim = Claim(None, home.queue("default"), 3)
    pool.add_bundle(claim, [task(0), task(1), task(2)])
    (first,) = pool.next_bundled()
    assert first[1].idx == 0
    pool.take(0)
    assert pool.next_bundled() is None  # no free slot: it waits
    assert len(pool.backlog) == 2 and pool.waiting


def test_give_back_puts_each_bundled_task_alone_in_its_bundles_place(home):
    q = home.queue("default")
    put(q, task(0), task(1), task(2), priority=3)
    [bundle_msg] = q.claim("w", 1)
    claim = Claim(bundle_msg, q, 3)
    pool = SlotPool(1, owner="w")
    pool.add_bundle(claim, [task(0), task(1), task(2)])
    pool.next_bundled()  # t0 starts here
    settled = []
    assert pool.give_back("testing", settled.append) == 2
    assert settled == [claim, claim] and not pool.backlog
    back = sorted(home.queue("default").claim("other", 10), key=lambda m: m.id)
    assert [(m.id, m.priority, m.put_ns) for m in back] == [
        (task(1).message_id, 3, bundle_msg.put_ns),
        (task(2).message_id, 3, bundle_msg.put_ns),
    ]
    assert TaskMessage.from_wire(back[0].payload) == task(1)


def _by_model(task: TaskMessage) -> str | None:
    return task.spec.get("model")


def test_bundled_tasks_of_one_merge_key_in_a_row_start_together_up_to_most(home):
    pool = SlotPool(2)
    tasks = [task(k, model=m) for k, m in enumerate("AAAAB")] + [task(5)]
    pool.add_bundle(Claim(None, home.queue("default"), 6), tasks)
    assert [t.idx for _, t in pool.next_bundled(3, _by_model)] == [0, 1, 2]
    assert [t.idx for _, t in pool.next_bundled(3, _by_model)] == [3]  # B is another key
    assert [t.idx for _, t in pool.next_bundled(3, _by_model)] == [4]
    assert [t.idx for _, t in pool.next_bundled(3, _by_model)] == [5]  # no key: alone
    pool.add_bundle(Claim(None, home.queue("default"), 2), tasks[:2])
    assert [t.idx for _, t in pool.next_bundled(1, _by_model)] == [0]  # most 1: never merged


def test_give_back_keeps_tasks_of_one_merge_key_together(home):
    q = home.queue("default")
    tasks = [task(k, model=m) for k, m in enumerate("AAAB")]
    put(q, *tasks, priority=2)
    [bundle_msg] = q.claim("w", 1)
    claim = Claim(bundle_msg, q, 4)
    pool = SlotPool(1, owner="w")
    pool.add_bundle(claim, tasks)
    settled = []
    assert pool.give_back("testing", settled.append, _by_model) == 4
    assert settled == [claim] * 4
    back = sorted(home.queue("default").claim("other", 10), key=lambda m: m.id)
    decoded = [decode_task_payload(m.payload) for m in back]
    assert [[t.idx for t in d.members] if isinstance(d, Bundle) else d.idx for d in decoded] == [[0, 1, 2], 3]
    assert all(m.priority == 2 and m.put_ns == bundle_msg.put_ns for m in back)


def test_give_back_stops_at_the_first_task_it_cannot_put(home):
    class Failing:
        calls = 0

        def put(self, *args, **kwargs):
            Failing.calls += 1
            if Failing.calls == 2:
                raise StorageError("disk full")
            return "ok"

    q = home.queue("default")
    put(q, task(0), task(1), task(2))
    [msg] = q.claim("w", 1)
    claim = Claim(msg, Failing(), 3)
    pool = SlotPool(1)
    pool.add_bundle(claim, [task(0), task(1), task(2)])
    settled = []
    assert pool.give_back("testing", settled.append) == 1
    assert [t.idx for _, t in pool.backlog] == [1, 2]  # tried again later


# --------------------------------------------------------------------- outbox
def started(idx: int, at: float) -> Event:
    return Event(EventKind.STARTED, AttemptKey("wf1", idx, 0), at)


def completed(idx: int, at: float) -> Event:
    return Event(EventKind.COMPLETED, AttemptKey("wf1", idx, 0), at, started_at=at - 0.001, output=idx)


def test_a_lone_started_event_waits_for_a_final_one(home):
    box = Outbox(home.completions(), "w")
    box.add(started(0, 100.0))
    assert box.wait_bound() == STARTED_DELAY
    assert not box.flush(running=True, now=100.0 + STARTED_DELAY / 2)
    assert not box.flush(running=False, now=100.0 + STARTED_DELAY / 2)
    assert box.flush(running=True, now=100.0 + STARTED_DELAY + 0.001)
    assert [e["kind"] for e in published(home)] == ["started"]
    assert box.wait_bound() is None


def test_final_events_wait_while_others_run_up_to_flush_delay_or_flush_max(home):
    box = Outbox(home.completions(), "w")
    box.add(completed(0, 100.0))
    assert box.wait_bound() == FLUSH_DELAY
    assert not box.flush(running=True, now=100.0 + FLUSH_DELAY / 2)
    assert box.flush(running=True, now=100.0 + FLUSH_DELAY + 0.001)
    for i in range(FLUSH_MAX - 1):
        box.add(completed(i, 200.0))
    assert not box.flush(running=True, now=200.0)
    box.add(completed(99, 200.0))
    assert box.flush(running=True, now=200.0)  # FLUSH_MAX events go at once
    assert len(published(home)) == 1 + FLUSH_MAX


def test_with_nothing_running_a_final_event_goes_at_once(home):
    box = Outbox(home.completions(), "w")
    box.add(completed(0, 100.0))
    assert box.flush(running=False, now=100.0)
    [ev] = published(home)
    assert ev == {"kind": "completed", "wf": "wf1", "idx": 0, "attempt": 0, "at": 100.0,
                  "started_at": 100.0 - 0.001, "output": 0, "output_ref": None}  # fmt: skip


def test_a_started_event_is_dropped_when_its_attempt_ended_in_the_same_batch(home):
    box = Outbox(home.completions(), "w")
    box.add(started(0, 100.0))
    box.add(started(1, 100.0))
    box.add(completed(0, 100.01))
    assert box.flush(running=False, force=True)
    assert [(e["kind"], e["idx"]) for e in published(home)] == [("started", 1), ("completed", 0)]


def test_a_message_is_acked_only_after_its_final_event_is_published(home):
    q = home.queue("default")
    put(q, task(0))
    put(q, task(1), task(2))
    single, bundle = sorted(q.claim("w", 2), key=lambda m: "+" in m.name)
    box = Outbox(home.completions(), "w")
    one, two = Claim(single, q), Claim(bundle, q, 2)
    box.add(completed(0, 100.0), settles=one)
    box.add(completed(1, 100.0), settles=two)
    assert len(q.claimed()["w"]) == 2  # queued, not published: nothing acked
    assert not box.flush(running=True, now=100.0)
    assert len(q.claimed()["w"]) == 2
    assert box.flush(running=True, now=100.0 + FLUSH_DELAY + 0.001)
    assert q.claimed()["w"] == [bundle.name]  # the bundle still has a task here
    box.settle(two)  # its other task was given back: no event of its own
    assert box.pending
    box.flush(running=False)
    assert q.claimed() == {} and not box.pending


def no_space(path: str) -> StorageError:
    return StorageError.from_os("create a message in", path, OSError(errno.ENOSPC, "No space left on device"))


def test_a_full_disk_keeps_events_and_acks_and_retries_with_backoff(home, monkeypatch, caplog):
    """Publishing fails with ENOSPC: nothing is acked, lost or raised; the events wait, in
    order, and are tried again after a doubling backoff (the loop sleeps until then); the
    trouble is logged once, and its end once; when space returns all goes out as it was."""
    q = home.queue("default")
    put(q, task(0))
    put(q, task(1))
    msgs = sorted(q.claim("w", 2), key=lambda m: m.name)
    box = Outbox(home.completions(), "w")
    box.add(completed(0, 100.0), settles=Claim(msgs[0], q))
    real = box.completions.put_encoded
    tries: list[float] = []

    def full(data, *args, **kwargs):
        tries.append(time.monotonic())
        raise no_space(box.completions.root)

    monkeypatch.setattr(box.completions, "put_encoded", full)
    caplog.set_level(logging.WARNING, logger="workers.worker")
    assert not box.flush(running=False, force=True)
    assert box.stalled and box.pending and len(tries) == 1
    assert q.claimed()["w"] == [m.name for m in msgs]  # nothing acked
    # Backing off: a flush before the retry time tries nothing; the loop may sleep until then.
    assert 0 < box.wait_bound() <= 0.1
    assert not box.flush(running=False) and len(tries) == 1
    box.add(completed(1, 100.5), settles=Claim(msgs[1], q))  # more work ends meanwhile: kept too
    for _ in range(3):
        wait_until(lambda: box.wait_bound() == 0, what="the retry time")
        assert not box.flush(running=False)
    assert len(tries) == 4
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[-1] > gaps[0] * 1.5, gaps  # the backoff grows
    [warning] = [r for r in caplog.records if "cannot write" in r.getMessage()]  # logged once
    assert "no space left on device" in warning.getMessage() and "keeping 1 event(s)" in warning.getMessage()
    # Space returns: everything goes, in order, and the messages are acked after it.
    monkeypatch.setattr(box.completions, "put_encoded", real)
    wait_until(lambda: box.wait_bound() == 0, what="the retry time")
    assert box.flush(running=False)
    assert not box.stalled and not box.pending and box.wait_bound() is None
    assert [(e["kind"], e["idx"]) for e in published(home)] == [("completed", 0), ("completed", 1)]
    assert q.claimed() == {}
    assert sum("writes to the home again" in r.getMessage() for r in caplog.records) == 1


def test_a_failed_ack_is_kept_and_retried(home, monkeypatch):
    """The events went out but removing the claimed message failed (an I/O error): the ack
    waits and is retried; the events are not published twice."""
    q = home.queue("default")
    put(q, task(0))
    [msg] = q.claim("w", 1)
    box = Outbox(home.completions(), "w")
    box.add(completed(0, 100.0), settles=Claim(msg, q))
    real_ack = q.ack
    monkeypatch.setattr(q, "ack", lambda m: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    assert box.flush(running=False, force=True)
    assert box.stalled and box.acks and not box.events
    monkeypatch.setattr(q, "ack", real_ack)
    wait_until(lambda: box.wait_bound() == 0, what="the retry time")
    box.flush(running=False)
    assert not box.pending and not box.stalled and q.claimed() == {}
    assert len(published(home)) == 1


def test_a_stalled_worker_claims_nothing_and_resumes_when_space_returns(home, monkeypatch):
    """A worker whose outbox cannot write keeps serving its loop (no crash), claims nothing
    new meanwhile, and publishes everything once the disk has room again."""
    q = home.queue("default")
    put(q, task(0, output="a"))
    worker = Worker(home, ["default"], slots=1)
    completions = worker.outbox.completions
    real = completions.put_encoded
    disk_full = threading.Event()
    disk_full.set()

    def maybe_full(data, *args, **kwargs):
        if disk_full.is_set():
            raise no_space(completions.root)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(completions, "put_encoded", maybe_full)
    t = serve(worker)
    wait_until(lambda: worker.outbox.stalled, what="the outbox to stall")
    put(q, task(1, output="b"))
    time.sleep(0.3)
    assert worker.tasks_done == 1 and t.is_alive()  # nothing new claimed, still serving
    assert q.counts().ready == 1
    disk_full.clear()
    wait_until(
        lambda: worker.tasks_done == 2 and not worker.outbox.pending, what="both tasks to be published"
    )
    worker.stop(drain=True)
    t.join(10)
    assert not t.is_alive() and not t.errors
    finals = [e for e in published(home) if e["kind"] == "completed"]
    assert sorted((e["idx"], e["output"]) for e in finals) == [(0, "a"), (1, "b")]
    assert q.claimed() == {}


def test_an_event_that_cannot_be_encoded_does_not_block_the_others(home):
    """Defence in depth (outputs are checked when collected): an event msgpack cannot
    encode is reported as its attempt's failure, and the other events of its batch go."""
    q = home.queue("default")
    put(q, task(0))
    [msg] = q.claim("w", 1)
    box = Outbox(home.completions(), "w")
    bad = Event(EventKind.COMPLETED, AttemptKey("wf1", 7, 0), 100.0, output=1 << 70)
    box.add(completed(0, 100.0), settles=Claim(msg, q))
    box.add(bad)
    assert box.flush(running=False, force=True)
    events = published(home)
    assert [(e["kind"], e["idx"]) for e in events] == [("completed", 0), ("failed", 7)]
    assert "could not publish" in events[1]["error"] and events[1]["reason"] == "error"
    assert q.claimed() == {} and not box.pending


# --------------------------------------------------------------------- runner
def make_runner(home: Home, slots: int = 1, woken: list | None = None) -> AttemptRunner:
    setup = AttemptSetup(home.root, "w", Telemetry(home.root, "test"), gpus_managed=False, kill_grace=0.1)
    return AttemptRunner(setup, slots, lambda: woken.append(1) if woken is not None else None, name="w")


def attempt(t: TaskMessage, slot: int = 0) -> Attempt:
    return Attempt(t, Claim(None, None), slot, [], time.time())


def finish_all(runner: AttemptRunner, n: int = 1) -> list[tuple[Attempt, Outcome]]:
    done: list = []

    def look():
        runner.supervise()
        done.extend(runner.finished())
        return len(done) >= n

    wait_until(look, what=f"{n} attempt(s) to end")
    return done


def spans_of(home: Home, t: TaskMessage) -> list[dict]:
    path = layout.attempt_log(layout.attempt_dir(home.root, t.wf, t.task, t.attempt), layout.SPANS_FILE)
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("executor", ["fake-thread", "fake-inline"])
def test_one_path_for_thread_and_inline_executors(home, executor):
    woken: list = []
    runner = make_runner(home, woken=woken)
    t = task(0, executor, output={"v": 1})
    a = attempt(t)
    runner.launch(a)
    assert a.key in runner.running
    [(done, outcome)] = finish_all(runner)
    assert done is a and outcome.ok and a.key not in runner.running
    assert bool(woken) == (executor == "fake-thread")  # a slot thread wakes the loop; the loop needs no wake
    assert a.ended(outcome, 1.0).to_wire()["output"] == {"v": 1}
    spans = spans_of(home, t)
    root = spans[-1]
    assert root["name"] == c.TASK_SPAN and root["attributes"][c.ATTR_OUTCOME] == "completed"
    assert c.READY_SPAN in [s["name"] for s in spans]
    attempt_dir = layout.attempt_dir(home.root, t.wf, t.task, t.attempt)
    [asset] = [
        json.loads(x)
        for x in Path(layout.attempt_log(attempt_dir, layout.ASSETS_FILE)).read_text().splitlines()
    ]
    assert asset["task"] == "t0" and asset["bytes"] == len('{"v": 1}')
    runner.close()


@pytest.mark.parametrize(("executor", "where"), [("fake-thread", "run"), ("fake-inline", "finish")])
def test_a_bug_in_an_executor_still_ends_the_attempt_reported(home, executor, where):
    runner = make_runner(home)
    t = task(0, executor, **{"raise": f"a bug in {where}"})
    runner.launch(attempt(t))
    [(a, outcome)] = finish_all(runner)
    assert (
        outcome.failure is FailKind.ERROR and outcome.error == f"worker error: RuntimeError: a bug in {where}"
    )
    ev = a.ended(outcome, 2.0).to_wire()
    assert ev["kind"] == "failed" and ev["reason"] == "error" and "a bug in" in ev["error"]
    root = spans_of(home, t)[-1]
    assert root["status"]["status_code"] == "ERROR" and root["attributes"][c.ATTR_OUTCOME] == "failed"
    runner.close()


def test_an_unknown_executor_or_missing_cwd_fails_before_it_runs(home):
    runner = make_runner(home, slots=2)
    runner.launch(attempt(task(0, "nope"), 0))
    runner.launch(attempt(task(1, cwd="/definitely/not/here"), 1))
    outcomes = {a.task.idx: o for a, o in finish_all(runner, 2)}
    assert outcomes[0].error == "this worker has no executor 'nope'"
    assert "does not exist" in outcomes[1].error and ThreadFake.runs == []
    runner.close()


@pytest.mark.parametrize("why", ["deadline", "told"])
def test_an_inline_attempt_is_stopped_on_a_slot_thread(home, why):
    woken: list = []
    runner = make_runner(home, woken=woken)
    t = task(0, "fake-inline", hang=True)
    if why == "deadline":
        t = dataclasses.replace(t, timeout=0.01)
    a = attempt(t)
    runner.launch(a)
    assert a.fd in runner.inline and runner.next_deadline() == a.ctx.deadline
    runner.supervise()
    assert a.fd in runner.inline  # it hangs: still followed
    if why == "told":
        a.stop_reason = FailKind.CANCELLED
    [(_, outcome)] = finish_all(runner)
    want = FailKind.CANCELLED if why == "told" else FailKind.TIMEOUT
    assert outcome.failure is want and InlineFake.stops == [want] and woken
    runner.close()


def test_the_real_shell_executor_its_output_and_rows(home):
    runner = make_runner(home)
    up = TaskMessage(
        wf="wf1", idx=1, task="c", attempt=0, executor="shell",
        spec={"run": "printf '{\"n\": %s}' \"$TUIFLOW_ATTEMPT\" > \"$TUIFLOW_OUTPUT\""},
        inputs={"a": {"x": 1}, "b": None},
    )  # fmt: skip
    runner.launch(attempt(up))
    [(a, outcome)] = finish_all(runner)
    assert outcome.ok and outcome.exit_code == 0 and a.output.value == {"n": 0} and a.output.size == 8
    attempt_dir = a.ctx.attempt_dir
    assert json.loads(Path(layout.attempt_file(attempt_dir, layout.INPUTS_FILE)).read_text()) == up.inputs
    [row] = [
        json.loads(x)
        for x in Path(layout.attempt_log(attempt_dir, layout.LINEAGE_FILE)).read_text().splitlines()
    ]
    assert row == {"data_id": "wf1/c", "sources": ["wf1/a"], "task": "c", "attempt": 0}
    bad = TaskMessage(
        wf="wf1", idx=2, task="d", attempt=0, executor="shell", spec={"run": 'echo nope > "$TUIFLOW_OUTPUT"'}
    )
    runner.launch(attempt(bad))
    [(_, outcome)] = finish_all(runner)
    assert outcome.failure is FailKind.ERROR and "is not valid JSON" in outcome.error
    runner.close()


# --------------------------------------------------------------------- worker
def heartbeat(home: Home, worker: Worker) -> Path:
    path = Path(worker.heartbeat.path)
    assert path.parent == Path(home.workers_dir)
    return path


def serve(worker: Worker) -> threading.Thread:
    errors: list = []

    def target():
        try:
            worker.run()
        except BaseException as e:  # handed to the test
            errors.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.errors = errors
    t.start()
    return t


def test_bad_settings_are_config_errors(home):
    with pytest.raises(WorkerConfigError, match="at least 1"):
        Worker(home, ["default"], slots=0)
    with pytest.raises(WorkerConfigError, match="'pythn'"):
        Worker(home, ["default"], warm=["pythn"])


def test_a_burst_worker_runs_everything_then_exits_clean(home):
    q = home.queue("default")
    put(q, task(0, "fake-inline", output=0))
    put(q, *[task(i, "fake-inline", output=i) for i in range(1, 4)])
    put(q, task(4, output=4))
    worker = Worker(home, ["default"], slots=2, burst=True)
    worker.run()
    events = published(home)
    done = sorted((e["idx"], e["output"]) for e in events if e["kind"] == "completed")
    assert done == [(i, i) for i in range(5)] and worker.tasks_done == 5
    assert q.counts().ready == 0 and q.claimed() == {}  # all acked
    assert not heartbeat(home, worker).exists()  # a clean, drained exit


def test_malformed_and_cancelled_messages_are_settled_unrun(home):
    q = home.queue("default")
    q.put({"v": 1, "wf": "wf1", "idx": "zero"}, msg_id="bad")
    q.put({"v": 1, "bundle": []}, msg_id="empty")
    os.makedirs(layout.workflow_dir(home.root, "gone"))
    Path(layout.cancel_marker(home.root, "gone")).touch()
    put(q, task(0, wf="gone"))
    put(q, task(1, wf="gone"), task(2, wf="gone"))
    worker = Worker(home, ["default"], burst=True)
    worker.run()
    reasons = sorted(d.reason for d in q.dead())
    assert len(reasons) == 2 and "not a bundle" in reasons[0] and "'idx'" in reasons[1]
    assert ThreadFake.runs == [] and published(home) == [] and q.claimed() == {}
    assert not heartbeat(home, worker).exists()


def test_gpus_reach_the_task_and_a_task_needing_too_many_is_given_back(home):
    q = home.queue("default")
    put(q, task(0, gpus=1, show="CUDA_VISIBLE_DEVICES", sleep=0.05))
    put(q, task(1, gpus=1, show="CUDA_VISIBLE_DEVICES", sleep=0.05))
    put(q, task(2, show="CUDA_VISIBLE_DEVICES"))
    worker = Worker(home, ["default"], slots=3, gpus=[3, 1], burst=True)
    worker.run()
    outputs = {e["idx"]: e["output"] for e in published(home) if e["kind"] == "completed"}
    assert {outputs[0], outputs[1]} == {"3", "1"} and outputs[2] == ""  # one each; none for a CPU task
    name = put(q, task(3, gpus=3))
    [msg] = q.claim(worker.id, 1)
    assert worker._admit(msg, q) == 0
    assert q.ready_names() == [name] and "t3" not in ThreadFake.runs  # back in the queue, unrun


def test_a_bundle_is_given_back_when_one_of_its_tasks_runs_long(home, caplog):
    q = home.queue("default")
    bundle_name = put(q, task(0, sleep=30), task(1), task(2))
    worker = Worker(home, ["default"], slots=1, bundle_hold=0.05)
    caplog.set_level(logging.INFO, logger="workers.worker")
    t = serve(worker)
    wait_until(lambda: len(q.ready_names()) == 2, what="the bundle's other tasks back in the queue")
    assert q.claimed()[worker.id] == [bundle_name]  # acked only once its running task ends
    assert "gave back 2 bundled task(s): a task of its bundle runs long" in caplog.text
    worker.stop()  # hard: t0 is stopped, reported as "worker stopped"
    t.join(10)
    assert not t.errors and q.claimed() == {}
    [ev] = [e for e in published(home) if e["kind"] == "failed"]
    assert (ev["idx"], ev["reason"]) == (0, "worker stopped")
    assert ThreadFake.runs == ["t0"] and not heartbeat(home, worker).exists()


def test_drain_finishes_what_runs_claims_nothing_and_exits_clean(home):
    q = home.queue("default")
    put(q, task(0, sleep=0.05, output="first"))
    worker = Worker(home, ["default"], slots=2)
    rounds: list[bool] = []  # whether each round of the loop began draining
    keep_up = worker._keep_up
    worker._keep_up = lambda now: rounds.append(worker._drain) or keep_up(now)
    t = serve(worker)
    wait_until(lambda: worker.runner.running, what="the first task to run")
    worker.stop(drain=True)
    # The round that claimed t0 may still be claiming: wait for one that began draining.
    wait_until(lambda: any(rounds), what="a round of the loop that knows it drains")
    put(home.queue("default"), task(1))  # arrives while draining: left for another worker
    t.join(10)
    assert not t.is_alive() and not t.errors
    assert [e["output"] for e in published(home) if e["kind"] == "completed"] == ["first"]
    assert len(q.ready_names()) == 1 and ThreadFake.runs == ["t0"]
    assert not heartbeat(home, worker).exists()


def test_drain_gives_back_a_bundles_unstarted_tasks_at_once(home, caplog):
    q = home.queue("default")
    put(q, task(0, sleep=0.05), task(1), task(2))
    worker = Worker(home, ["default"], slots=1, bundle_hold=60)
    caplog.set_level(logging.INFO, logger="workers.worker")
    t = serve(worker)
    wait_until(lambda: worker.runner.running, what="t0 to run")
    worker.stop(drain=True)
    t.join(10)
    assert not t.errors and "gave back 2 bundled task(s): the worker is draining" in caplog.text
    assert sorted(n.rsplit("-", 1)[1] for n in q.ready_names()) == [
        f"{task(1).message_id}.0.msg",
        f"{task(2).message_id}.0.msg",
    ]
    assert ThreadFake.runs == ["t0"] and q.claimed() == {} and not heartbeat(home, worker).exists()


def test_a_hard_stop_gives_back_what_waits_and_stops_what_runs(home):
    q = home.queue("default")
    put(q, task(0, gpus=1, sleep=30))
    held_name = put(q, task(1, gpus=1))  # claimed with t0, waits for its GPU
    worker = Worker(home, ["default"], slots=2, gpus=[0])
    t = serve(worker)
    wait_until(lambda: worker.runner.running and worker.slots.held, what="t0 running, t1 held")
    worker.stop()
    t.join(10)
    assert not t.errors
    assert q.ready_names() == [held_name]  # put back as it was
    [ev] = [e for e in published(home) if e["kind"] == "failed"]
    assert ev["idx"] == 0 and ev["reason"] == "worker stopped"
    assert q.claimed() == {} and not heartbeat(home, worker).exists()


def test_an_exception_in_the_loop_leaves_the_heartbeat_to_expire(home):
    q = home.queue("default")
    put(q, task(0, sleep=0.05))
    worker = Worker(home, ["default"])

    def failing_check(attempts) -> None:
        raise RuntimeError("injected")

    worker.markers.check = failing_check
    with pytest.raises(RuntimeError, match="injected"):
        worker.run()
    assert heartbeat(home, worker).exists()  # left for the coordinator to find dead
    assert len(q.claimed()[worker.id]) == 1  # and what it held, to give back


def test_stop_markers_cancel_and_time_out_running_attempts(home):
    markers = StopMarkers(home.root, interval=0.0)
    a, b, done = attempt(task(0, wf="x")), attempt(task(1, wf="y")), attempt(task(2, wf="y"))
    done.stop_reason = FailKind.WORKER_STOPPED
    os.makedirs(os.path.dirname(layout.kill_marker(home.root, "y", 1, 0)))
    os.makedirs(layout.workflow_dir(home.root, "x"))
    Path(layout.cancel_marker(home.root, "x")).touch()
    Path(layout.kill_marker(home.root, "y", 1, 0)).touch()
    markers.check([a, b, done])
    assert (a.stop_reason, b.stop_reason, done.stop_reason) == (
        FailKind.CANCELLED,
        FailKind.TIMEOUT,
        FailKind.WORKER_STOPPED,
    )


def test_a_model_host_keeps_its_models_by_key_least_recently_used_out_and_idle_ones_dropped():
    from workers.models.residency import Residency

    now = [0.0]
    loaded: list[str] = []

    def load(name):
        return lambda: loaded.append(name) or f"model {name}"

    r = Residency(max_models=2, ttl=60.0, clock=lambda: now[0])
    assert r.get("a", load("a"))[0] == "model a" and r.get("a", load("a"))[1] == 0.0  # warm: no load
    r.get("b", load("b"))
    r.get("a", load("a"))  # a is now the most recently used
    r.get("c", load("c"))  # so b goes
    assert r.loaded() == ["a", "c"] and loaded == ["a", "b", "c"]
    now[0] = 61.0
    r.get("c", load("c"))  # a, idle past the TTL, is dropped first; c was too, and is loaded again
    assert r.loaded() == ["c"] and loaded == ["a", "b", "c", "c"]


def test_every_model_executor_has_a_merge_key_and_an_executor():
    from analyzer.contract import MODEL_EXECUTORS
    from workers.models.host import BACKENDS
    from workers.models.merging import MERGE_KEYS

    assert set(MERGE_KEYS) == set(BACKENDS) == MODEL_EXECUTORS and set(EXECUTORS) >= MODEL_EXECUTORS


def test_a_memory_budget_drops_the_least_recently_used_models_until_a_new_one_fits():
    from workers.models.residency import Residency

    class Model:
        def __init__(self, size: int):
            self.size = size

        def footprint(self) -> int:
            return self.size

    r = Residency(max_models=10, ttl=60.0, budget=10)
    for key, size in (("a", 4), ("b", 4), ("c", 4)):  # c does not fit beside a and b: a goes
        r.get(key, lambda size=size: Model(size))
    assert r.loaded() == ["b", "c"] and r.held_bytes() == 8
    r.get("big", lambda: Model(12))  # larger than the budget alone: it stays, alone
    assert r.loaded() == ["big"]


@pytest.mark.parametrize(
    ("text", "size"), [("20GiB", 20 * 2**30), ("512MB", 512 * 10**6), ("1000", 1000), ("1.5G", 1_500_000_000)]
)
def test_sizes_read_as_a_person_writes_them(text, size):
    from workers.models.residency import parse_bytes

    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "20XB", "-1G", ""])
def test_a_size_that_is_not_one_is_refused_saying_how_to_write_it(text):
    from workers.models.residency import parse_bytes

    with pytest.raises(ValueError, match="such as 20GiB"):
        parse_bytes(text)


def test_slots_prefer_the_one_holding_the_model_and_give_a_slot_its_own_gpus_back():
    from workers.slots import SlotPool

    pool = SlotPool(2, gpus=[0, 1])
    assert pool.take(1) == (0, [0])
    assert pool.take(1) == (1, [1])
    pool.release(1, [1])
    pool.release(0, [0])  # free slots now [1, 0], GPUs [0, 1]
    assert pool.take(1, prefer=[0]) == (0, [0])  # its model and its own GPU
    assert pool.take(1) == (1, [1])  # slot 1 gets GPU 1 back, not the first free one
    pool.release(0, [0])
    pool.release(1, [1])
    no_gpus = SlotPool(3)
    assert no_gpus.take(0, prefer=[2]) == (2, [])
    assert no_gpus.take(0, prefer=[2]) == (0, [])  # the preferred slot is busy: any other


def test_a_missing_model_library_says_what_to_install():
    from workers.models.libraries import MissingDependency, require

    with pytest.raises(MissingDependency, match=r"pip install 'tuiflow\[diffusers\]'.*no_such_library"):
        require("diffusers", "json", "no_such_library")


def test_final_events_wait_longer_while_tasks_of_a_bundle_wait_here(home):
    """While the worker holds claimed tasks not yet started (its bundle's backlog), final
    events wait up to BACKLOG_FLUSH_DELAY to share a message with theirs; once the backlog
    is gone the usual FLUSH_DELAY applies again."""
    box = Outbox(home.completions(), "w")
    box.add(completed(0, 100.0))
    assert not box.flush(running=True, backlog=True, now=100.0 + FLUSH_DELAY + 0.001)
    box.add(completed(1, 100.05))
    assert not box.flush(running=True, backlog=True, now=100.0 + BACKLOG_FLUSH_DELAY / 2)
    assert box.flush(running=True, backlog=True, now=100.0 + BACKLOG_FLUSH_DELAY + 0.001)
    assert home.completions().counts().ready == 1  # one message for both
    assert [e["idx"] for e in published(home)] == [0, 1]
    box.add(completed(2, 200.0))
    assert box.flush(running=True, backlog=False, now=200.0 + FLUSH_DELAY + 0.001)
