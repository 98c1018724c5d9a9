"""The command line: every command, its --json form, and its errors (never a traceback)."""

from __future__ import annotations

import json
import shlex
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


# ------------------------------------------------------------ text from others
def test_safe_text_makes_control_characters_visible():
    from analyzer.fmt import safe_text

    assert safe_text("plain name/ünïcode ✓") == "plain name/ünïcode ✓"
    assert safe_text("a\x1b[2Jb\x1b]0;t\x07") == "a␛[2Jb␛]0;t␇"
    assert safe_text("nul\x00 del\x7f csi\x9b rlo\u202e") == "nul␀ del␡ csi\\x9b rlo\\u202e"
    assert safe_text("two\nlines\tand\rcr") == "two␊lines␉and␍cr"
    # multi-line text (errors, logs) keeps its lines and tabs; a carriage return is a new line
    assert safe_text("a\r\nb\rc\td\x1b[K\n", multiline=True) == "a\nb\nc\td␛[K\n"
    assert safe_text(None) == "" and safe_text(42) == "42"


def test_the_consoles_never_write_a_control_character_they_were_given(tmp_path):
    import io

    from rich.text import Text

    from tuiflow.cli.console import SafeConsole

    buf = io.StringIO()
    console = SafeConsole(file=buf, force_terminal=True, color_system="standard", width=80)
    console.print(Text("name\x1b]0;pwned\x07\x1b[2J", style="red"), "[bold]x[/]")
    printed = buf.getvalue()
    assert "\x1b[31m" in printed  # its own styles still reach the terminal
    assert "\x1b]0;" not in printed and "\x1b[2J" not in printed and "\x07" not in printed
    assert "name␛]0;pwned␛[2J" in printed  # (Rich's Text drops a BEL by itself)


def plant(home: Home, wf_id: str, *, completed: bool = False) -> None:
    """What another user of the home can write: escapes and markup in a workflow's name (its
    summary), a task's error and worker (its run state), a worker's queues (a heartbeat)."""
    import msgpack

    from spool.liveness import HeartbeatWriter
    from tuiflow.engine.store import WorkflowStore

    store = WorkflowStore(home)
    run, version = store.load_run(wf_id)
    run.reason[0] = "boom\x1b[2J [red]x[/red]"
    run.worker[0] = "node\x1b[31m"
    store.write_run(run, version)
    path = f"{store.dir(wf_id)}/{layout.SUMMARY_FILE}"
    with open(path, "rb") as f:
        summary = msgpack.unpackb(f.read())
    summary["name"] = "ev\x1b]0;pwned\x07[/]"
    if completed:
        summary.update(state="completed", counts={"completed": 1}, total=1)
    with open(path, "wb") as f:
        f.write(msgpack.packb(summary))
    writer = HeartbeatWriter(home.workers_dir, "evil-worker")
    writer.beat({"host": "h\x1b]0;t\x07", "queues": ["q\x1b[2J"], "slots": 1, "running": []})
    writer.close()


def test_names_errors_and_heartbeats_of_others_print_safe(home, tmp_path):
    wf = wf_file(tmp_path, "name: victim\ntasks:\n  - {name: a, run: 'true'}\n")
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    plant(home, wf_id)
    printed = {}
    for args, expect in (
        (("ls",), "ev␛]0;pwned␇[/]"),
        (("tasks", wf_id), "boom␛[2J [red]x[/red]"),
        (("status", wf_id), "node␛[31m"),
        (("doctor",), "queues q␛[2J"),
        (("trace", "history", "nobody"), "workflows here: ev␛]0;pwned␇[/]"),
    ):
        code, out, err = run(*args, "--home", home.root)
        assert code in (0, 1, 3) and expect in out + err, (args, out, err)
        printed[args] = out + err
    plant(home, wf_id, completed=True)
    code, out, err = run("watch", wf_id, "--home", home.root, "--interval", "0.05")
    assert code == 0 and "ev␛]0;pwned␇[/]" in out
    assert out.endswith("\n")  # the last progress line ends its line off a terminal
    printed["watch"] = out + err
    for args, text in printed.items():
        assert not any(c in text for c in "\x1b\x07"), (args, text)
    # --json stays exact: JSON escapes control characters itself
    assert json.loads(run("ls", "--home", home.root, "--json")[1])[0]["name"] == "ev\x1b]0;pwned\x07[/]"
    [task] = json.loads(run("tasks", wf_id, "--home", home.root, "--json")[1])
    assert (task["reason"], task["worker"]) == ("boom\x1b[2J [red]x[/red]", "node\x1b[31m")


def test_markup_in_a_workflow_name_is_text(tmp_path):
    wf = wf_file(tmp_path, "name: '[bold]x[/]'\ntasks:\n  - {name: a, run: 'true'}\n")
    code, out, err = run("validate", wf)
    assert code == 0 and "workflow '[bold]x[/]'" in out, err
    code, out, err = run("ls", "--state", "[/]", "--home", Home.open(tmp_path / "h").root)
    assert code == 0 and "no workflows in state [/]" in out, err


def test_logs_of_a_task_that_never_ran_say_so(home, tmp_path):
    wf = wf_file(tmp_path, "name: waits\ntasks:\n  - {name: a, run: 'true'}\n")
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    for extra in ((), ("--json",), ("--stream", "stderr")):
        code, out, err = run("logs", wf_id, "a", "--home", home.root, *extra)
        assert code == EXIT_NOT_FOUND and out == "", (extra, out, err)
        assert f"task 'a' of workflow {wf_id} has not run yet (it is pending)" in err


def test_logs_of_a_task_that_never_will_say_so(home, engine, tmp_path):
    wf = wf_file(
        tmp_path,
        """
        name: broken
        tasks:
          - {name: a, run: "echo out-a; echo 'err \\x1b[2J' >&2; exit 3"}
          - {name: b, depends_on: [a], run: "echo never"}
        """,
    )
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    assert wait_state(home, wf_id)["state"] == "failed"
    code, out, err = run("logs", wf_id, "a", "--home", home.root)
    assert code == 0 and out == "out-a\n" and err == "err \x1b[2J\n"  # a pipe: the bytes as written
    code, out, err = run("logs", wf_id, "b", "--home", home.root)
    assert (
        code == EXIT_NOT_FOUND
        and "task 'b' of workflow" in err
        and "never ran (it is upstream_failed)" in err
    )
    code, _, err = run("logs", wf_id, "b", "--follow", "--home", home.root)
    assert code == EXIT_NOT_FOUND and "never ran" in err  # --follow waits only for what may still run


def test_logs_on_a_terminal_show_control_characters(home, tmp_path, monkeypatch):
    import io

    from tuiflow.cli.follow import follow_logs

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    wf = wf_file(tmp_path, "name: t\ntasks:\n  - {name: a, run: 'true'}\n")
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    directory = layout.attempt_dir(home.root, wf_id, "a", 0)
    Path(directory).mkdir(parents=True)
    # a character cut between two reads of a growing log still arrives whole
    Path(layout.attempt_file(directory, layout.STDOUT_FILE)).write_bytes(
        "progress 10%\rprogress 90%\r\ndone \x1b]0;pwned\x07 ✓\n".encode()
    )
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert follow_logs(Client(home), wf_id, "a", directory, ["stdout"], follow=False) == 0
    assert terminal.getvalue() == "progress 10%\nprogress 90%\ndone ␛]0;pwned␇ ✓\n"


def test_run_local_cancels_on_sigterm_and_prints_the_summary(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    home = tmp_path / "my home"  # a hint that names it must quote it
    wf = wf_file(
        tmp_path,
        "name: long\ntasks:\n  - {name: a, run: 'sleep 60'}\n  - {name: b, depends_on: [a], run: 'true'}\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuiflow", "run-local", str(wf), "--home", str(home), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the task never started"
            items = Client(Home.open(home)).list() if (home / layout.LAYOUT_FILE).exists() else []
            if items and items[0]["counts"].get("running"):
                break
            time.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 30  # the running task was killed, not waited for
    assert proc.returncode == EXIT_FAILED, err
    assert "terminated (SIGTERM): cancelling the workflow" in err
    assert "Traceback" not in err
    # the progress on stderr, the summary (the result) on stdout, with its header
    assert "(long): cancelled" in out
    assert "overall" in err and "overall" not in out
    assert "figure" in out and "value" in out and "wall time" in out and "wall time" not in err
    assert f"--home {shlex.quote(str(home))}" in out.replace("\n", "")
    [summary] = Client(Home.open(home)).list()
    assert summary["state"] == "cancelled"


def test_logs_follow_waits_for_a_pending_task_and_says_when_it_never_ran(home, engine, tmp_path):
    wf = wf_file(
        tmp_path,
        "name: w\ntasks:\n  - {name: a, run: 'sleep 30'}\n  - {name: b, depends_on: [a], run: 'true'}\n",
    )
    wf_id = json.loads(run("submit", wf, "--home", home.root, "--json")[1])["id"]
    client = Client(home)
    deadline = time.monotonic() + 30
    while client.status(wf_id)["counts"]["running"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    threading.Timer(0.5, client.cancel, [wf_id]).start()  # while `logs --follow` waits for b
    code, out, err = run("logs", wf_id, "b", "--follow", "--home", home.root)
    assert code == EXIT_NOT_FOUND and out == "" and "never ran (it is cancelled)" in err


def test_tuiflow_where_there_is_no_home_says_so_like_ls_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUIFLOW_HOME", raising=False)
    code, _, err = run()
    assert code == 2 and "no tuiflow home" in err and "Traceback" not in err
    assert run("ls")[0] == 2  # the same answer as ls
    assert not (tmp_path / ".tuiflow").exists()


@pytest.mark.parametrize(
    "command", [(), ("ls",), ("worker",), ("slurm",), ("trace", "what-if"), ("run-local",)]
)
def test_help_shows_names_a_person_reads_not_python_types(command):
    code, out, _ = run(*command, "--help")
    assert code == 0
    for python in ("<str>", "<bool>", "<list[str]>", "<int>", "<float>"):
        assert python not in out, (command, python)
    assert "--home" in out and "DIR" in out
