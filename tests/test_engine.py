"""The engine end to end: real coordinator and worker processes, real signals, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from support.engine import (
    EXAMPLES,
    WORKFLOWS,
    cli,
    no_process_like,
    start,
    start_run_local,
    wait_for,
    worker_state,
    write_wf,
)

from spool import Home, Settings
from tuiflow.engine.client import Client


def sleepers(tmp_path: Path, name: str, *tasks: str) -> tuple[Path, Path]:
    """A workflow of python tasks that write their executor's pid to a marker file, then
    sleep 61.37 s (an odd length no other process on the machine sleeps)."""
    marker = tmp_path / "pids.txt"
    (tmp_path / "pytasks.py").write_text((WORKFLOWS / "pytasks.py").read_text())
    call = f'call: "pytasks:sleepy", kwargs: {{seconds: 61.37, marker: "{marker}"}}'
    lines = "".join(f"  - {{name: {task}, {call}}}\n" for task in tasks)
    return write_wf(tmp_path, f"name: {name}\ntasks:\n{lines}"), marker


def _pids_in(marker: Path) -> list[int]:
    return [int(line.rsplit(" ", 1)[1]) for line in marker.read_text().splitlines()]


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is dead too (its parent may not have reaped it yet)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ------------------------------------------------------------------ examples
@pytest.mark.parametrize(
    ("example", "code", "expect"),
    [
        ("hello.yaml", 0, {"completed": 3}),
        ("diamond.yaml", 1, {"completed": 4, "failed": 1, "skipped": 1, "upstream_failed": 1}),
        ("ml-pipeline.yaml", 0, {"completed": 11}),
        ("fanout.yaml", 0, {"completed": 1002}),
    ],
)
@pytest.mark.parametrize("mode", ["process", "thread"])
def test_examples_end_to_end(tmp_path, example, code, expect, mode):
    r = cli(
        "run-local",
        EXAMPLES / example,
        "--workers",
        2,
        "--worker-mode",
        mode,
        "--json",
        home=tmp_path / "home",
        timeout=300,
    )
    assert r.returncode == code, r.stderr[-3000:]
    status = json.loads(r.stdout)
    counts = {k: v for k, v in status["counts"].items() if v}
    assert counts == expect
    assert status["state"] == ("completed" if code == 0 else "failed")
    assert status["stats"]["completions_applied"] == sum(
        1 for t in status["tasks"] if t["state"] == "completed"
    )
    if example == "diamond.yaml":
        tasks = {t["name"]: t for t in status["tasks"]}
        assert tasks["flaky"]["attempt"] == 1 and tasks["flaky"]["state"] == "completed"
        assert "is false" in tasks["low"]["reason"]
        assert tasks["publish"]["reason"] == "upstream broken failed"
        assert "always fails" in tasks["broken"]["reason"]
        _every_task_is_in_the_analysis(tmp_path / "home", status["id"])
    if example == "hello.yaml":
        run = Client(Home.open(tmp_path / "home")).run(status["id"])
        out = Path(tmp_path / "home" / "workflows" / status["id"] / "tasks" / "report" / "0" / "stdout.log")
        assert out.read_text().strip() == "the greeting has 3 words"
        assert run.outputs[run.definition.index["count"]] == {"words": 3}
    if example == "fanout.yaml":
        join = next(t for t in status["tasks"] if t["name"] == "join")
        assert join["output"] == {"inputs": 1000}


def _every_task_is_in_the_analysis(home: Path, wf_id: str) -> None:
    """Tasks that never ran (low skipped, publish upstream_failed) are in the trace, the
    DAG, the counts and the history; the critical path still ends at work that ran."""
    from analyzer import analyze_workflow, history, render

    wf_dir = home / "workflows" / wf_id
    analysis = analyze_workflow(str(wf_dir))
    trace = analysis.trace
    assert len(trace.tasks) == 7
    assert trace.tasks["low"].latest.outcome == "skipped" and not trace.tasks["low"].latest.ran
    assert trace.tasks["publish"].latest.outcome == "upstream_failed"
    mermaid = render(analysis, "mermaid")
    ids = {
        line.split('["')[1].split("<br/>")[0]: line.split("[")[0].strip()
        for line in mermaid.splitlines()
        if '["' in line
    }
    assert "publish" in ids and f"{ids['score']} --> {ids['low']}" in mermaid
    assert analysis.critical_path.end_task != "publish"
    assert not [w for w in analysis.e2e.workers if w.startswith("coordinator")]  # a decision is no work
    hist = history([str(wf_dir)], workflow_name="diamond")
    assert len(hist.tasks) == 7


def test_invalid_workflow_exits_2_without_a_traceback(tmp_path):
    wf = write_wf(tmp_path, "name: bad\ntasks:\n  - {name: a, depends_on: [nope], run: x}\n")
    r = cli("run-local", wf, home=tmp_path / "home")
    assert r.returncode == 2
    assert "unknown task 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "home" / "workflows").exists() or not os.listdir(tmp_path / "home" / "workflows")


# ------------------------------------------------------------ outputs & env
def test_outputs_inputs_large_outputs_and_env(tmp_path, fast_home):
    wf = write_wf(
        tmp_path,
        """
        name: outputs
        tasks:
          - {name: small, call: "pytasks:emit", kwargs: {value: {a: 1}}}
          - {name: setter, call: "pytasks:with_set_output", kwargs: {v: 7}}
          - {name: big, call: "pytasks:big", kwargs: {n: 100000}}
          - name: use
            depends_on: [big]
            call: "pytasks:use_big"
          - name: both
            depends_on: [small, setter]
            call: "pytasks:read_inputs"
          - name: shell
            depends_on: [small, setter]
            run: |
              test "$TUIFLOW_WORKFLOW_ID" != "" && test "$TUIFLOW_TASK" = shell && test "$TUIFLOW_ATTEMPT" = 0
              test -d "$TUIFLOW_TASK_DIR" && test -f "$TUIFLOW_INPUTS"
              echo '{"sum": {{ inputs.small.a + inputs.setter.v }}}' > "$TUIFLOW_OUTPUT"
        """,
    )
    (tmp_path / "pytasks.py").write_text((WORKFLOWS / "pytasks.py").read_text())
    r = cli("run-local", wf, "--workers", 2, "--json", home=fast_home.root)
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = {t["name"]: t for t in json.loads(r.stdout)["tasks"]}
    assert tasks["small"]["output"] == {"a": 1}
    assert tasks["setter"]["output"] == {"v": 7, "task": "setter"}
    assert tasks["big"]["output"] is None and tasks["big"]["output_ref"].endswith("big/0/output.json")
    assert tasks["use"]["output"] == {"len": 100000}
    assert tasks["both"]["output"] == {"seen": ["setter", "small"]}
    assert tasks["shell"]["output"] == {"sum": 8}


def test_each_python_task_sees_its_own_environment_in_a_shared_executor(tmp_path, fast_home):
    names = ["TF_A", "TF_B", "TUIFLOW_TASK"]
    wf = write_wf(
        tmp_path,
        f"""
        name: environments
        tasks:
          - {{name: one, call: "pytasks:environ", kwargs: {{names: {names}}}, env: {{TF_A: "1", TF_B: "b"}}}}
          - {{name: two, depends_on: [one], call: "pytasks:environ", kwargs: {{names: {names}}}, env: {{TF_A: "2"}}}}
          - {{name: three, depends_on: [two], call: "pytasks:environ", kwargs: {{names: {names}}}}}
        """,
    )
    (tmp_path / "pytasks.py").write_text((WORKFLOWS / "pytasks.py").read_text())
    r = cli("run-local", wf, "--workers", 1, "--json", home=fast_home.root)
    assert r.returncode == 0, r.stderr[-3000:]
    out = {t["name"]: t["output"] for t in json.loads(r.stdout)["tasks"]}
    assert len({o["pid"] for o in out.values()}) == 1  # one executor process ran all three
    # what a task set is gone for the next; what it changed is changed back
    assert [out[t]["env"] for t in ("one", "two", "three")] == [
        {"TF_A": "1", "TF_B": "b", "TUIFLOW_TASK": "one"},
        {"TF_A": "2", "TF_B": None, "TUIFLOW_TASK": "two"},
        {"TF_A": None, "TF_B": None, "TUIFLOW_TASK": "three"},
    ]


def test_upstream_output_cannot_inject_shell(tmp_path, fast_home):
    marker = tmp_path / "pwned"
    wf = write_wf(
        tmp_path,
        f"""
        name: inject
        tasks:
          - name: evil
            run: |
              printf '%s' '{{"cmd": "x; touch {marker}; $(touch {marker}) `touch {marker}`"}}' > "$TUIFLOW_OUTPUT"
          - name: victim
            depends_on: [evil]
            run: "echo {{{{ inputs.evil.cmd }}}} > seen.txt"
            cwd: {tmp_path}
        """,
    )
    r = cli("run-local", wf, "--workers", 1, "--json", home=fast_home.root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists()
    assert (
        tmp_path / "seen.txt"
    ).read_text().strip() == f"x; touch {marker}; $(touch {marker}) `touch {marker}`"


def test_failures_are_reported_with_reasons(tmp_path, fast_home):
    wf = write_wf(
        tmp_path,
        """
        name: failures
        tasks:
          - {name: crash, call: "pytasks:crash", kwargs: {code: 3}}
          - {name: raises, call: "pytasks:raise_error"}
          - {name: notjson, call: "pytasks:not_json"}
          - {name: after-crash, depends_on: [crash], run: echo never}
          - {name: slow, run: "sleep 30", timeout: 1}
          - {name: missing-cmd, run: ["definitely-not-a-command-xyz"]}
          - {name: fine, call: "pytasks:emit", kwargs: {value: 1}}
        """,
    )
    (tmp_path / "pytasks.py").write_text((WORKFLOWS / "pytasks.py").read_text())
    t0 = time.monotonic()
    r = cli("run-local", wf, "--workers", 2, "--json", home=fast_home.root)
    assert r.returncode == 1
    assert time.monotonic() - t0 < 25  # the 30 s sleep was killed at its 1 s timeout
    tasks = {t["name"]: t for t in json.loads(r.stdout)["tasks"]}
    assert "python executor process died (exit code 3)" in tasks["crash"]["reason"]
    assert "ValueError: this task raises on purpose" in tasks["raises"]["reason"]
    assert "not JSON-serializable" in tasks["notjson"]["reason"]
    assert tasks["after-crash"]["state"] == "upstream_failed"
    assert "timed out after 1 s" in tasks["slow"]["reason"]
    assert "command not found" in tasks["missing-cmd"]["reason"]
    assert tasks["fine"]["state"] == "completed"  # ran in a fresh executor after the crash


# ---------------------------------------------------------------- daemons
def test_two_coordinators_one_is_refused(fast_home, tmp_path, procs):
    first = start("coordinator", home=fast_home.root, log=tmp_path / "c1.log")
    procs.append(first)
    wait_for(
        lambda: Client(fast_home).coordinator_info() and Client(fast_home).coordinator_info()["holder"],
        what="the first coordinator to take the lease",
    )
    r = cli("coordinator", home=fast_home.root, timeout=60)
    assert r.returncode == 1
    assert "another coordinator is running" in r.stderr and "Traceback" not in r.stderr
    assert first.poll() is None


def test_worker_killed_mid_task_is_retried_and_completed_once(fast_home, tmp_path, procs):
    marker = tmp_path / "runs.txt"
    wf = write_wf(
        tmp_path,
        f"""
        name: survive
        tasks:
          - name: long
            run: "echo \\"attempt $TUIFLOW_ATTEMPT\\" >> {marker}; sleep 2; echo '{{\\"ok\\": true}}' > $TUIFLOW_OUTPUT"
            num_retries: 1
          - {{name: after, depends_on: [long], run: "echo done"}}
        """,
    )
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "coord.log"))
    doomed = start("worker", "--id", "doomed", home=fast_home.root, log=tmp_path / "w1.log")
    procs.append(doomed)
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)
    wait_for(lambda: client.status(wf_id)["counts"]["running"] == 1, what="the task to run")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    procs.append(start("worker", "--id", "rescuer", home=fast_home.root, log=tmp_path / "w2.log"))
    status = wait_for(
        lambda: (s := client.status(wf_id))["state"] in ("completed", "failed") and s,
        timeout=60,
        what="the end",
    )
    assert status["state"] == "completed", (tmp_path / "coord.log").read_text()[-2000:]
    long = next(t for t in status["tasks"] if t["name"] == "long")
    assert long["attempt"] == 1 and long["worker"] == "rescuer" and long["output"] == {"ok": True}
    assert status["stats"]["completions_applied"] == 2  # each task applied exactly once
    assert marker.read_text().split("\n")[:2] == ["attempt 0", "attempt 1"]
    assert "worker doomed is dead" in (tmp_path / "coord.log").read_text()
    assert (Path(fast_home.workers_dir) / "doomed.dead").exists()
    # the lost attempt is on the lost worker's lane; the coordinator only recorded it
    from analyzer.trace import load_trace

    lost = load_trace(str(Path(fast_home.root) / "workflows" / wf_id)).tasks["long"].attempts[0]
    assert (lost.outcome, lost.worker) == ("lost", "doomed")
    assert lost.root.attr("tuiflow.recorded_by").startswith("coordinator")


def test_a_killed_workers_python_executor_dies_with_it(fast_home, tmp_path, procs):
    wf, marker = sleepers(tmp_path, "executor-orphan", "long")
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c.log"))
    worker = start("worker", home=fast_home.root, log=tmp_path / "w.log")
    procs.append(worker)
    cli("submit", wf, home=fast_home.root)
    wait_for(lambda: marker.exists() and marker.read_text(), what="the task to start")
    (executor,) = _pids_in(marker)
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    wait_for(lambda: _process_gone(executor), timeout=10, what=f"executor {executor} to die with its worker")


def test_coordinator_killed_and_restarted_applies_every_task_once(fast_home, tmp_path, procs):
    n = 40
    wf = write_wf(
        tmp_path,
        f"""
        name: restart
        tasks:
          - {{name: a, foreach: {{range: {n}}}, run: "sleep 0.05; echo '{{\\"i\\": {{{{ item }}}}}}' > $TUIFLOW_OUTPUT"}}
          - {{name: b, depends_on: [a], run: "echo joined"}}
        """,
    )
    coord = start("coordinator", home=fast_home.root, log=tmp_path / "c1.log")
    procs.append(coord)
    procs.append(start("worker", "--slots", 2, home=fast_home.root, log=tmp_path / "w.log"))
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)
    wait_for(lambda: client.status(wf_id)["counts"]["completed"] >= 5, what="some progress")
    coord.send_signal(signal.SIGKILL)
    coord.wait()
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c2.log"))
    status = wait_for(
        lambda: (s := client.status(wf_id))["state"] == "completed" and s, timeout=90, what="completion"
    )
    assert status["counts"]["completed"] == n + 1
    assert status["stats"]["completions_applied"] == n + 1
    assert sorted(t["output"]["i"] for t in status["tasks"] if t["name"].startswith("a[")) == list(range(n))


def test_completions_claimed_by_a_killed_coordinator_are_applied_by_the_next(fast_home, tmp_path, procs):
    """A coordinator SIGKILLed between claiming a batch and acking it leaves the batch in
    its claim directory; the next coordinator must apply it (here the crash is pinned to
    that instant by claiming under the dead coordinator's id, as its batch claim does)."""
    import socket

    ran = tmp_path / "ran"
    wf = write_wf(
        tmp_path,
        f"""
        name: mid-batch
        tasks:
          - {{name: a, run: "echo a >> {ran}; echo '{{\\"v\\": 7}}' > $TUIFLOW_OUTPUT"}}
          - {{name: b, depends_on: [a], run: "true"}}
        """,
    )
    c1 = start("coordinator", home=fast_home.root, log=tmp_path / "c1.log")
    procs.append(c1)
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)
    wait_for(lambda: client.status(wf_id)["counts"]["ready"] == 1, what="a to be queued")
    c1.send_signal(signal.SIGKILL)
    c1.wait()
    burst = start("worker", "--burst", home=fast_home.root, log=tmp_path / "w1.log")
    assert burst.wait(60) == 0  # ran a, reported it, found nothing more
    completions = fast_home.completions()
    batch = completions.claim(f"coordinator-{socket.gethostname()}-{c1.pid}", 512)
    assert batch, "the worker's completion should be waiting"
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c2.log"))
    procs.append(start("worker", home=fast_home.root, log=tmp_path / "w2.log"))
    status = wait_for(
        lambda: (s := client.status(wf_id))["state"] == "completed" and s, timeout=60, what="completion"
    )
    assert status["stats"]["completions_applied"] == 2
    assert status["tasks"][0]["output"] == {"v": 7}
    assert ran.read_text() == "a\n"  # its completion was applied, not the task run again
    assert completions.claimed() == {}


def test_cancel_stops_running_tasks(fast_home, tmp_path, procs):
    wf = write_wf(
        tmp_path,
        """
        name: cancel-me
        tasks:
          - {name: long, run: "sleep 59.71"}
          - {name: next, depends_on: [long], run: "echo never"}
          - {name: queued, run: "sleep 59.71", queue: nobody-serves-this}
        """,
    )
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c.log"))
    procs.append(start("worker", home=fast_home.root, log=tmp_path / "w.log"))
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)
    wait_for(lambda: client.status(wf_id)["counts"]["running"] == 1, what="the task to run")
    r = cli("cancel", wf_id[:4], home=fast_home.root)
    assert r.returncode == 0, r.stderr
    status = wait_for(
        lambda: (s := client.status(wf_id))["counts"]["running"] == 0 and s, timeout=30, what="cancel"
    )
    assert status["state"] == "cancelled"
    assert {t["name"]: t["state"] for t in status["tasks"]} == {
        "long": "cancelled",
        "next": "cancelled",
        "queued": "cancelled",
    }
    no_process_like("^sleep 59.71$")


def test_ctrl_c_on_run_local_cancels_and_leaves_no_orphans(fast_home, tmp_path):
    wf = write_wf(
        tmp_path,
        """
        name: interrupt
        tasks:
          - {name: a, run: "sleep 61.37"}
          - {name: b, run: "sleep 61.37"}
          - {name: c, depends_on: [a], run: "echo never"}
        """,
    )
    proc = start_run_local(wf, fast_home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = Client(fast_home)
    wait_for(
        lambda: client.list() and client.list()[0]["counts"].get("running") == 2, what="both tasks running"
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    wf_id = client.list()[0]["id"]
    status = client.status(wf_id)
    assert status["state"] == "cancelled"
    assert {t["state"] for t in status["tasks"]} == {"cancelled"}
    no_process_like("^sleep 61.37$")


def test_gpus_are_assigned_per_task(fast_home, tmp_path, procs):
    out = tmp_path / "gpus.txt"
    wf = write_wf(
        tmp_path,
        f"""
        name: gpus
        tasks:
          - {{name: g, foreach: {{range: 4}}, gpus: 1, run: "echo $CUDA_VISIBLE_DEVICES >> {out}; sleep 0.5"}}
          - {{name: cpu, run: "echo cpu=[$CUDA_VISIBLE_DEVICES] >> {out}"}}
          - {{name: two, gpus: 2, run: "echo two=$CUDA_VISIBLE_DEVICES >> {out}"}}
        """,
    )
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c.log"))
    procs.append(start("worker", "--slots", 3, "--gpus", "0,1", home=fast_home.root, log=tmp_path / "w.log"))
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)
    status = wait_for(
        lambda: (s := client.status(wf_id))["state"] == "completed" and s, timeout=60, what="the end"
    )
    lines = out.read_text().split()
    assert sorted(lines) == sorted([*[x for x in lines if x in ("0", "1")], "cpu=[]", "two=0,1"])
    assert len([x for x in lines if x in ("0", "1")]) == 4  # each single-GPU task got one device
    assert status["counts"]["completed"] == 6


def test_worker_sigterm_drains_and_second_sigterm_stops(fast_home, tmp_path, procs):
    wf = write_wf(
        tmp_path,
        """
        name: drain
        tasks:
          - {name: first, run: "sleep 1.5; echo '{\\"ran\\": 1}' > $TUIFLOW_OUTPUT"}
          - {name: second, depends_on: [first], run: "sleep 30.53"}
        """,
    )
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c.log"))
    w = start("worker", "--id", "drainer", home=fast_home.root, log=tmp_path / "w.log")
    procs.append(w)
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)
    wait_for(lambda: client.status(wf_id)["counts"]["running"] == 1, what="first to run")
    w.send_signal(signal.SIGTERM)  # drain: `first` finishes, `second` is not claimed
    assert w.wait(30) == 0
    status = wait_for(
        lambda: (s := client.status(wf_id))["counts"]["completed"] == 1 and s, what="first done"
    )
    assert status["tasks"][0]["output"] == {"ran": 1}
    assert status["tasks"][1]["state"] == "ready"  # waits in the queue for another worker
    w2 = start("worker", "--id", "stopper", home=fast_home.root, log=tmp_path / "w2.log")
    procs.append(w2)
    wait_for(lambda: client.status(wf_id)["counts"]["running"] == 1, what="second to run")
    w2.send_signal(signal.SIGTERM)
    wait_for(lambda: worker_state(fast_home, "stopper") == "draining", what="the first TERM to drain")
    w2.send_signal(signal.SIGTERM)  # second TERM: stop now, killing the attempt
    assert w2.wait(30) == 0
    second = wait_for(
        lambda: (t := client.status(wf_id)["tasks"][1])["attempt"] == 1 and t["state"] == "ready" and t,
        what="the stopped attempt to be queued again",
    )
    assert second["reason"] == "attempt 0: worker stopper stopped"
    no_process_like("^sleep 30.53$")


def test_python_attempts_time_out_while_another_slot_serves(fast_home, tmp_path, procs):
    """Python attempts are followed by the worker's loop, not a slot thread: one slot's
    long task must not hold up the other slot, and a timed-out attempt's executor process
    is killed and replaced (the retry runs in a new one)."""
    marker = tmp_path / "pids.txt"
    wf = write_wf(
        tmp_path,
        f"""
        name: inline
        tasks:
          - {{name: slow, call: "pytasks:sleepy", kwargs: {{seconds: 6, marker: "{marker}"}}}}
          - {{name: quick, call: "pytasks:emit", kwargs: {{value: 7}}}}
          - name: hang
            depends_on: [quick]
            call: "pytasks:sleepy"
            kwargs: {{seconds: 59.71, marker: "{marker}"}}
            timeout: 1
            num_retries: 1
            retry_backoff: 0
        """,
    )
    (tmp_path / "pytasks.py").write_text((WORKFLOWS / "pytasks.py").read_text())
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c.log"))
    procs.append(start("worker", "--slots", 2, home=fast_home.root, log=tmp_path / "w.log"))
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)

    def states():
        return {t["name"]: t for t in client.status(wf_id)["tasks"]}

    # both hang attempts time out (1 s each) while `slow` still holds the other slot
    during = wait_for(
        lambda: (t := states())["hang"]["state"] == "failed" and t, timeout=60, what="hang to fail"
    )
    assert during["slow"]["state"] == "running"
    assert during["quick"]["state"] == "completed" and during["quick"]["output"] == 7
    assert during["hang"]["attempt"] == 1
    assert "timed out after 1 s; executor process killed" in during["hang"]["reason"]
    final = wait_for(lambda: (s := client.status(wf_id))["state"] == "failed" and s, what="the end")
    assert {t["name"]: t["state"] for t in final["tasks"]} == {
        "slow": "completed",
        "quick": "completed",
        "hang": "failed",
    }
    lines = marker.read_text().splitlines()
    hang_pids = [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("hang")]
    assert len(hang_pids) == 2 and hang_pids[0] != hang_pids[1]  # a new executor for the retry
    wait_for(lambda: all(_process_gone(pid) for pid in hang_pids), timeout=10, what="killed executors")


@pytest.mark.parametrize("how", ["cancel", "worker hard stop"])
def test_running_python_attempt_is_stopped(fast_home, tmp_path, procs, how):
    wf, marker = sleepers(tmp_path, "stop-python", "long")
    procs.append(start("coordinator", home=fast_home.root, log=tmp_path / "c.log"))
    worker = start("worker", "--id", "py-stopper", home=fast_home.root, log=tmp_path / "w.log")
    procs.append(worker)
    wf_id = cli("submit", wf, home=fast_home.root).stdout.strip()
    client = Client(fast_home)
    wait_for(lambda: marker.exists() and marker.read_text(), what="the task to start")
    (pid,) = _pids_in(marker)
    t0 = time.monotonic()
    if how == "cancel":
        assert cli("cancel", wf_id, home=fast_home.root).returncode == 0
        status = wait_for(
            lambda: (s := client.status(wf_id))["state"] == "cancelled" and s["counts"]["running"] == 0 and s,
            timeout=30,
            what="cancel",
        )
        assert status["tasks"][0]["state"] == "cancelled"
        assert worker.poll() is None  # the worker goes on serving
    else:
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: worker_state(fast_home, "py-stopper") == "draining", what="the first TERM to drain")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        task = wait_for(
            lambda: (t := client.status(wf_id)["tasks"][0])["attempt"] == 1 and t["state"] == "ready" and t,
            what="the stopped attempt to be queued again",
        )
        assert task["reason"] == "attempt 0: worker py-stopper stopped"
    assert time.monotonic() - t0 < 30  # well before the task would have ended by itself
    wait_for(lambda: _process_gone(pid), timeout=10, what=f"executor process {pid} to be killed")


def test_forked_workers_and_the_coordinator_poke_each_other(tmp_path):
    """With polling every 5 s and heartbeats every 5 s, only the wake pipes between
    run-local's coordinator and its forked workers can make a 10-task chain take well
    under a second a hop."""
    home = Home.open(
        tmp_path / "home",
        settings=Settings(watch="poll", poll_interval=5.0, heartbeat_interval=5.0, dead_after=60),
    )
    chain = "".join(
        f"  - {{name: t{i}, run: 'true'{f', depends_on: [t{i - 1}]' if i else ''}}}\n" for i in range(10)
    )
    wf = write_wf(tmp_path, f"name: pokes\ntasks:\n{chain}")
    r = cli("run-local", wf, "--workers", 2, "--json", home=home.root)
    assert r.returncode == 0, r.stderr[-2000:]
    run = Client(home).run(json.loads(r.stdout)["id"])
    assert run.ended_at - run.started_at < 3.0


def test_killed_run_local_takes_its_forked_workers_and_their_tasks_with_it(fast_home, tmp_path):
    wf, marker = sleepers(tmp_path, "orphans", "a", "b")
    proc = start_run_local(wf, fast_home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: marker.exists() and len(_pids_in(marker)) == 2, what="both tasks to start")
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        workers = [int(pid) for pid in children.split()]
        assert len(workers) == 2  # forked from run-local, not separate programs
    finally:
        proc.kill()
        proc.wait(30)
    # each worker sees its parent gone at its next heartbeat, stops hard and kills its attempt
    doomed = workers + _pids_in(marker)
    wait_for(lambda: all(_process_gone(pid) for pid in doomed), timeout=30, what="workers and tasks to exit")


def test_admission_control_and_ready_repair(fast_home, tmp_path):
    import threading

    from tuiflow.engine.compiler import load_workflow
    from tuiflow.engine.coordinator import Coordinator

    wf = write_wf(tmp_path, "name: small\ntasks:\n  - {name: a, run: 'true'}\n")
    client = Client(fast_home)
    ids = [client.submit(load_workflow(wf)) for _ in range(3)]
    coord = Coordinator(fast_home, max_running_workflows=1, sweep_interval=0.1, repair_after=0.5)
    coord.acquire(wait=2)
    t = threading.Thread(target=coord.run, kwargs={"acquire": False}, daemon=True)
    t.start()
    try:
        wait_for(lambda: client.status(ids[0])["state"] == "running", what="the first admission")
        time.sleep(0.5)
        # FIFO admission: only the oldest runs (no worker serves it yet)
        assert [client.status(i)["state"] for i in ids] == ["running", "pending", "pending"]
        # its queued message vanishes (an operator cleaned the queue by hand): ready-repair re-queues it
        q = fast_home.queue("default")
        for name in q.ready_names():
            for d in q._ready:
                Path(d, name).unlink(missing_ok=True)
        wait_for(lambda: q.counts().ready == 1, timeout=30, what="ready-repair")
        assert coord.repair.repaired == 1
    finally:
        coord.stop()
        t.join(30)


def test_worker_warms_executors_before_the_first_task(fast_home, tmp_path, procs):
    bad = cli("worker", "--warm", "pythn", "--burst", home=fast_home.root)
    assert bad.returncode == 2 and "'pythn'" in bad.stderr and "Traceback" not in bad.stderr
    w = start("worker", "--warm", "python", "--slots", 2, home=fast_home.root, log=tmp_path / "w.log")
    procs.append(w)

    def runners() -> list[str]:  # the worker's children: forked executors carry its command line
        out = subprocess.run(["pgrep", "-P", str(w.pid)], capture_output=True, text=True)
        return out.stdout.split()

    # one executor process per slot, with no task anywhere in sight
    pids = wait_for(lambda: len(runners()) == 2 and runners(), what="two warm executors")
    w.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0
    for pid in map(int, pids):  # closed with the worker, not orphaned
        wait_for(
            lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=10, what=f"executor {pid} to exit"
        )


@pytest.mark.parametrize(("mode", "forked"), [("process", True), ("thread", False)])
def test_python_executors_start_clean_whether_forked_or_spawned(tmp_path, mode, forked):
    """A single-threaded worker forks its executors (milliseconds instead of ~0.1 s for a
    fresh interpreter); a worker with threads spawns them. Either way a task finds what a
    fresh interpreter would give it: its own session, default signal handling, no
    descriptor but the executor's pipes, logging and prints in the attempt's files."""
    (tmp_path / "probe.py").write_text(
        textwrap.dedent(
            """
            import logging, os, signal, sys

            def probe():
                logging.warning("a warning from the task")
                print("a print from the task")
                fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
                return {
                    "forked": b"workers.pyrunner" not in open("/proc/self/cmdline", "rb").read(),
                    "own_session": os.getsid(0) == os.getpid(),
                    "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                    "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
                    "descriptors": len(fds) - 1,  # the listing's own is gone again
                    "argv0": os.path.basename(sys.argv[0]),
                }
            """
        )
    )
    wf = tmp_path / "probe.yaml"
    wf.write_text("name: probe\ntasks:\n  - {name: probe, call: 'probe:probe'}\n")
    r = cli("run-local", wf, "--workers", 1, "--worker-mode", mode, "--json", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr[-3000:]
    status = json.loads(r.stdout)
    assert status["tasks"][0]["output"] == {
        "forked": forked,
        "own_session": True,
        "sigterm": True,
        "sigint": True,
        "descriptors": 5,  # stdin, stdout, stderr and the two pipes to the worker
        "argv0": "pyrunner.py",
    }
    attempt = Path(tmp_path / "home" / "workflows" / status["id"] / "tasks" / "probe" / "0")
    assert "WARNING:root:a warning from the task" in (attempt / "stderr.log").read_text()
    assert (attempt / "stdout.log").read_text() == "a print from the task\n"
