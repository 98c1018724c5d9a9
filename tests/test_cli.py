"""The command line: every command, its --json form, and its errors (never a traceback)."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spool import Home, Settings, layout
from tuiflow.cli.exits import EXIT_FAILED, EXIT_INVALID, EXIT_NOT_FOUND, exit_code
from tuiflow.cli.main import app
from tuiflow.engine.client import Client
from tuiflow.engine.coordinator import Coordinator
from workers.worker import Worker

FAST = Settings(heartbeat_interval=0.2, dead_after=1.5, lease_ttl=2.0, poll_interval=0.05)


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def home(tmp_path) -> Home:
    return Home.open(tmp_path / "home", settings=FAST)


class Engine:
    """An in-process coordinator and worker, for commands that need something to happen."""

    def __init__(self, home: Home):
        self.coordinator = Coordinator(home, sweep_interval=0.2)
        self.coordinator.acquire(wait=2)
        self.worker = Worker(home, ["default"], worker_id="cli-test-worker")
        self.threads = [
            threading.Thread(target=self.coordinator.run, kwargs={"acquire": False}, daemon=True),
            threading.Thread(target=self.worker.run, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.worker.stop()
        self.threads[1].join(30)
        self.coordinator.stop()
        self.threads[0].join(30)


@pytest.fixture
def engine(home):
    e = Engine(home)
    yield e
    e.stop()


def wf_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def wait_state(home: Home, wf_id: str, states=("completed", "failed", "cancelled"), timeout: float = 60):
    client = Client(home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.status(wf_id)
        if s["state"] in states and not s["counts"]["running"]:
            return s
        time.sleep(0.05)
    raise AssertionError(f"{wf_id} still {client.status(wf_id)['state']}")


def test_version():
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("tuiflow ")


def test_validate_ok_and_errors(tmp_path):
    good = wf_file(tmp_path, "name: ok\ntasks:\n  - {name: a, run: 'true'}\n")
    code, out, _ = run("validate", good)
    assert code == 0 and "1 tasks" in out
    code, out, _ = run("validate", good, "--json")
    assert json.loads(out) == {"valid": True, "name": "ok", "tasks": 1, "groups": []}
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\ntasks:\n  - {name: a, run: x, gpus: lots}\n  - {name: b, depends_on: [zz], run: y}\n"
    )
    code, _, err = run("validate", bad)
    assert code == 2 and "bad.yaml:3" in err and "unknown task 'zz'" in err and "Traceback" not in err
    code, out, _ = run("validate", bad, "--json")
    problems = json.loads(out)["problems"]
    assert code == 2 and {p["task"] for p in problems} == {"a", "b"}


def test_schema_is_json_schema():
    code, out, _ = run("schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "tuiflow workflow" and "TaskModel" in schema["$defs"]


def test_submit_without_coordinator_is_pending_and_says_so(home, tmp_path):
    wf = wf_file(tmp_path, "name: waits\ntasks:\n  - {name: a, run: 'true'}\n")
    code, out, _ = run("submit", wf, "--home", home.root, "--json")
    wf_id = json.loads(out)["id"]
    assert code == 0 and len(wf_id) == 8
    code, out, _ = run("ls", "--home", home.root, "--json")
    assert [(w["id"], w["state"]) for w in json.loads(out)] == [(wf_id, "pending")]
    code, out, _ = run("status", wf_id[:3], "--home", home.root)
    assert code == 0 and "no coordinator is running" in out


def test_unknown_ids_tasks_and_homes_are_one_line_errors(home, tmp_path):
    code, _, err = run("status", "zzzz", "--home", home.root)
    assert code == EXIT_NOT_FOUND and "no workflow id starts with 'zzzz'" in err and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1  # one line
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / layout.LAYOUT_FILE).write_text('{"version": 99}')
    code, _, err = run("ls", "--home", newer)
    assert code == 2 and "layout version 99" in err
    code, _, err = run("ls", "--home", tmp_path / "nothing-here")
    assert code == 2 and "no tuiflow home" in err
    code, _, err = run("submit", tmp_path / "missing.yaml", "--home", home.root)
    assert code == 2 and "file not found" in err

    earlier = Home.open(tmp_path / "earlier")
    Path(earlier.coordinator_dir, layout.LEASE_DIR).write_bytes(b"a lease record from before lease entries")
    code, _, err = run("coordinator", "--home", earlier.root)
    # a home of another layout version, like `newer` above: not a home this tuiflow can use
    assert code == EXIT_INVALID and "coordinator/lease is a lease record from an earlier tuiflow" in err
    assert "Traceback" not in err


def test_status_tasks_logs_and_watch(home, engine, tmp_path):
    wf = wf_file(
        tmp_path,
        """
        name: observed
        tasks:
          - {name: prep/a, run: "echo out-a; echo err-a >&2; echo '{\\"v\\": 1}' > $TUIFLOW_OUTPUT"}
          - {name: prep/b, run: "echo out-b"}
          - {name: train/c, depends_on: [prep/a, prep/b], run: "echo trained"}
        """,
    )
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    code, out, _ = run("watch", wf_id, "--home", home.root, "--json", "--interval", "0.05")
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and lines[-1]["state"] == "completed" and lines[-1]["done"] == 3
    code, out, _ = run("status", wf_id, "--home", home.root, "--json")
    status = json.loads(out)
    assert {"id", "name", "state", "counts", "tasks"} <= set(status)
    assert status["counts"]["completed"] == 3
    assert {"name": "prep/a", "state": "completed", "attempt": 0, "output": {"v": 1}}.items() <= status[
        "tasks"
    ][0].items()
    code, out, _ = run("tasks", wf_id, "--prefix", "prep/", "--home", home.root, "--json")
    assert [t["name"] for t in json.loads(out)] == ["prep/a", "prep/b"]
    code, out, _ = run("tasks", wf_id, "--state", "completed", "--home", home.root)
    assert "train/c" in out
    code, out, _ = run("logs", wf_id, "prep/a", "--home", home.root, "--json")
    logs = json.loads(out)
    assert logs["stdout"] == "out-a\n" and logs["stderr"] == "err-a\n"
    code, _, err = run("logs", wf_id, "nope", "--home", home.root)
    assert code == EXIT_NOT_FOUND and "has no task 'nope'" in err
    code, _, err = run("logs", wf_id, "prep/a", "--stream", "stdlog", "--home", home.root)
    assert code == EXIT_INVALID and "--stream must be" in err


def test_retry_after_failure(home, engine, tmp_path):
    marker = tmp_path / "fixed"
    wf = wf_file(
        tmp_path,
        f"""
        name: retry-me
        tasks:
          - {{name: a, run: "test -f {marker}"}}
          - {{name: b, depends_on: [a], run: "echo b"}}
          - {{name: c, run: "echo c"}}
        """,
    )
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    status = wait_state(home, wf_id)
    assert status["state"] == "failed"
    code, _, err = run("retry", wf_id, "c", "--home", home.root)
    assert code == EXIT_INVALID and "'c' is completed" in err
    marker.touch()
    code, out, _ = run("retry", wf_id, "--home", home.root, "--json")
    assert code == 0 and sorted(json.loads(out)["tasks"]) == ["a", "b"]
    client = Client(home)
    deadline = time.monotonic() + 30
    while client.status(wf_id)["tasks"][0]["attempt"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the coordinator applies the retry request
    status = wait_state(home, wf_id)
    assert status["state"] == "completed"
    assert {t["name"]: t["attempt"] for t in status["tasks"]} == {"a": 1, "b": 1, "c": 0}


def test_cancel_and_doctor_and_purge(home, engine, tmp_path):
    wf = wf_file(tmp_path, "name: slow\ntasks:\n  - {name: a, run: 'sleep 30'}\n")
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    client = Client(home)
    deadline = time.monotonic() + 30
    while client.status(wf_id)["counts"]["running"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out, _ = run("cancel", wf_id, "--home", home.root, "--json")
    assert code == 0 and json.loads(out) == {"id": wf_id, "requested": "cancel"}
    assert wait_state(home, wf_id)["state"] == "cancelled"
    # a poison message and a workflow queued where nobody listens show up in doctor
    q = home.queue("default")
    q.put_encoded(b"\xc1 not msgpack", 0, "junk")
    home.queue("gpu-nobody").put({"v": 1})
    deadline = time.monotonic() + 30
    while not q.counts().dead and time.monotonic() < deadline:
        time.sleep(0.05)  # the worker claims it and quarantines it
    code, out, _ = run("doctor", "--home", home.root, "--json")
    report = json.loads(out)
    assert code == 1 and report["coordinator"]["holder"]
    assert any("poison" in p for p in report["problems"])
    assert any("gpu-nobody" in p and "no live worker" in p for p in report["problems"])
    assert [w["id"] for w in report["workers"]] == ["cli-test-worker"]
    code, out, _ = run("purge", "--home", home.root, "--json")
    assert code == 0 and json.loads(out)["removed"] == [wf_id]
    assert run("ls", "--home", home.root, "--json")[1].strip() == "[]"


def test_coordinator_info_ages_the_lease_head(home):
    lease = home.lease("coord-x")
    lease.acquire(timeout=1)
    lease.renew()
    info = Client(home).coordinator_info()
    assert (info["holder"], info["generation"]) == ("coord-x", 1)
    assert 0 <= info["age_seconds"] < 5
    lease.release()
    assert Client(home).coordinator_info()["holder"] is None


def test_the_error_family_maps_to_exit_codes_in_one_place(home, tmp_path):
    from analyzer.errors import TraceNotFoundError, UnknownViewError
    from spool.errors import InvalidNameError, LockTimeout, StorageError
    from tuiflow.engine.expr import ExpressionError
    from tuiflow.engine.model import WorkflowValidationError
    from tuiflow.engine.runstate import NotRetryable
    from tuiflow.errors import NotFound
    from workers.errors import WorkerConfigError

    cases = {
        NotFound("x"): EXIT_NOT_FOUND,
        TraceNotFoundError(tmp_path): EXIT_NOT_FOUND,
        ExpressionError("x"): EXIT_INVALID,
        NotRetryable("x"): EXIT_INVALID,
        InvalidNameError("x"): EXIT_INVALID,
        WorkerConfigError("x"): EXIT_INVALID,
        UnknownViewError("x", ("rich",)): EXIT_INVALID,
        StorageError("x"): EXIT_FAILED,
        LockTimeout("x"): EXIT_FAILED,
    }
    for error, code in cases.items():
        assert exit_code(error) == code, error
    assert issubclass(WorkflowValidationError, ValueError)
    # through the command line: one line, no traceback
    code, _, err = run("trace", "history", "nobody", "--home", home.root)
    assert code == EXIT_NOT_FOUND and "no runs of a workflow named 'nobody'" in err
    code, _, err = run("worker", "--queue", "../up", "--home", home.root)
    assert code == EXIT_INVALID and err.startswith("error: ") and "Traceback" not in err
    code, _, err = run("submit", tmp_path / "missing.yaml", "--set", "novalue", "--home", home.root)
    assert code == EXIT_INVALID and "key=value" in err
