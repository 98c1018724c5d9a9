"""The dashboard: snapshots of every screen and tab on a demo home (fixed data, fixed
clock, fixed size), and Pilot tests of navigation, filtering, actions and live updates."""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import time
from pathlib import Path

import pytest

from spool import Home
from tuiflow.app import TuiflowApp
from tuiflow.app.lists import TaskList
from tuiflow.app.task import TaskScreen
from tuiflow.app.workflow import WorkflowScreen
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import compile_workflow
from tuiflow.fixtures import demo

IDS = demo.IDS


@pytest.fixture(autouse=True)
def no_blink(monkeypatch):
    # A blinking cursor would make screenshots depend on timing.
    from textual.widgets import Input

    monkeypatch.setattr(Input, "cursor_blink", False, raising=False)


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Home:
    return demo.build(str(tmp_path_factory.mktemp("demo") / "home"))


def make_app(home: Home, **kwargs) -> TuiflowApp:
    return TuiflowApp(home, clock=lambda: demo.NOW, live=False, keymap={}, home_label="demo-home", **kwargs)


async def settle(pilot) -> None:
    """Wait until every fetch has run and its result is drawn."""
    for _ in range(3):
        await pilot.pause()
        fetches = [
            w for w in pilot.app.workers if w.group == "fetch" and not w.is_finished
        ]  # not the file watcher
        if fetches:
            await pilot.app.workers.wait_for_complete(fetches)
    await pilot.pause()


# ------------------------------------------------------------------- snapshots
def test_snapshot_overview(snap_compare, demo_home):
    assert snap_compare(make_app(demo_home), terminal_size=(130, 36), run_before=settle)


def test_snapshot_overview_narrow(snap_compare, demo_home):
    assert snap_compare(make_app(demo_home), terminal_size=(80, 24), run_before=settle)


def test_snapshot_empty_home(snap_compare, tmp_path):
    assert snap_compare(make_app(Home.open(tmp_path / "empty")), terminal_size=(100, 28), run_before=settle)


def test_snapshot_workflow_1000_tasks(snap_compare, demo_home):
    app = make_app(demo_home, initial_workflow=IDS["fanout"])
    assert snap_compare(app, terminal_size=(130, 36), run_before=settle)


def test_snapshot_failed_workflow(snap_compare, demo_home):
    app = make_app(demo_home, initial_workflow=IDS["diamond"])
    assert snap_compare(app, terminal_size=(130, 30), run_before=settle)


@pytest.mark.parametrize(
    ("wf", "tab"),
    [
        ("fanout", "dag"),
        ("ml-pipeline", "dag"),
        ("ml-pipeline", "critical"),
        ("ml-pipeline", "queuing"),
        ("ml-pipeline", "breakdown"),
        ("ml-pipeline", "timeline"),
        ("ml-pipeline", "lineage"),
        ("inference", "gpu"),
    ],
)
def test_snapshot_workflow_tabs(snap_compare, demo_home, wf, tab):
    app = make_app(demo_home, initial_workflow=IDS[wf], initial_tab=tab)
    assert snap_compare(app, terminal_size=(130, 36), run_before=settle)


def test_snapshot_gpu_tab_narrow(snap_compare, demo_home):
    """80x24: the lanes keep their bars, the tables their main columns."""
    app = make_app(demo_home, initial_workflow=IDS["inference"], initial_tab="gpu")
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


@pytest.mark.parametrize("tab", ["logs", "error", "spans", "attempts"])
def test_snapshot_task_detail(snap_compare, demo_home, tab):
    async def open_task(pilot):
        await settle(pilot)
        pilot.app.open_task(IDS["diamond"], "broken" if tab != "attempts" else "flaky", tab)
        await settle(pilot)

    app = make_app(demo_home, initial_workflow=IDS["diamond"])
    assert snap_compare(app, terminal_size=(120, 30), run_before=open_task)


def test_snapshot_task_output(snap_compare, demo_home):
    async def open_task(pilot):
        await settle(pilot)
        pilot.app.open_task(IDS["ml-pipeline"], "eval/compare", "output")
        await settle(pilot)

    assert snap_compare(make_app(demo_home), terminal_size=(110, 28), run_before=open_task)


def test_snapshot_help(snap_compare, demo_home):
    assert snap_compare(
        make_app(demo_home), terminal_size=(120, 40), press=["question_mark"], run_before=settle
    )


def test_snapshot_cancel_confirmation(snap_compare, demo_home):
    app = make_app(demo_home, initial_workflow=IDS["fanout"])
    assert snap_compare(app, terminal_size=(110, 30), press=["c"], run_before=settle)


def test_snapshot_filtered_tasks(snap_compare, demo_home):
    app = make_app(demo_home, initial_workflow=IDS["fanout"])
    assert snap_compare(
        app,
        terminal_size=(120, 30),
        press=["slash", *"work[1", "enter", "s", "s", "s", "s"],
        run_before=settle,
    )


def screen_lines(app) -> list[str]:
    svg = app.export_screenshot()
    rows: dict[float, list[str]] = {}
    for y, text in re.findall(r'<text[^>]*y="([0-9.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(y), []).append(html.unescape(re.sub("<[^>]+>", "", text)).replace("\xa0", " "))
    return ["".join(parts) for _, parts in sorted(rows.items())]


# ----------------------------------------------------------------- pilot tests
async def test_navigate_overview_workflow_task_logs(demo_home):
    app = make_app(demo_home)
    async with app.run_test(size=(130, 36)) as pilot:
        await settle(pilot)
        keys = list(app.screen.query_one("#workflows").keys)
        await pilot.press(*["down"] * keys.index(IDS["diamond"]), "enter")
        await settle(pilot)
        assert isinstance(app.screen, WorkflowScreen) and app.screen.wf_id == IDS["diamond"]
        tasks = app.screen.query_one(TaskList)
        tasks.select_key("broken")
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, TaskScreen) and app.screen.task_name == "broken"
        log_text = "\n".join(app.screen.query_one("#task-log").lines)
        assert "[broken] attempt 0" in log_text and "RuntimeError: this task always fails" in log_text
        await pilot.press("escape")
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.id == "overview"


async def test_filter_and_state_filter(demo_home):
    app = make_app(demo_home, initial_workflow=IDS["fanout"])
    async with app.run_test(size=(130, 36)) as pilot:
        await settle(pilot)
        tasks = app.screen.query_one(TaskList)
        assert len(tasks.keys) == 1002
        await pilot.press("slash", *"work[10")
        await pilot.press("enter")
        assert tasks.keys == [
            "work[10]",
            *[f"work[10{k}]" for k in range(10)],
            *[f"work[10{k:02d}]" for k in []],
        ]
        await pilot.press("escape")  # clears the filter
        assert len(tasks.keys) == 1002
        for _ in range(4):  # all -> running -> ready -> pending -> failed
            await pilot.press("s")
        assert tasks.state_filter == "failed"
        assert sorted(tasks.keys) == ["work[101]", "work[502]"]


async def test_cancel_sends_the_control_message(demo_home, tmp_path):
    home_dir = tmp_path / "home"
    shutil.copytree(demo_home.root, home_dir)
    home = Home.open(home_dir)
    app = make_app(home, initial_workflow=IDS["fanout"])
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
    [msg] = home.control().claim("test", 10)
    assert (
        msg.payload["op"] == "cancel"
        and msg.payload["wf"] == IDS["fanout"]
        and msg.payload["by"] == "dashboard"
    )


async def test_retry_refusal_is_shown_not_raised(demo_home, tmp_path):
    home_dir = tmp_path / "home"
    shutil.copytree(demo_home.root, home_dir)
    app = make_app(Home.open(home_dir), initial_workflow=IDS["ml-pipeline"])
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("R", "y")
        await settle(pilot)
        assert any("no failed" in n.message for n in app._notifications)


async def test_live_update_after_files_change(tmp_path):
    home = Home.open(tmp_path / "home")
    app = TuiflowApp(home, live=True, keymap={}, home_label="live")
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        assert not app.screen.query_one("#workflows").keys
        wf_id = Client(home).submit(
            compile_workflow({"name": "appears", "tasks": [{"name": "a", "run": "true"}]})
        )
        deadline = time.monotonic() + 15
        table = app.screen.query_one("#workflows")
        while not table.keys:
            assert time.monotonic() < deadline, "the new workflow never showed up"
            await asyncio.sleep(0.05)
        assert list(table.keys) == [wf_id]


async def test_live_task_list_repaints_the_rows_that_changed(demo_home, tmp_path):
    """A state written by another process shows on the open task list: the line of the
    changed task is redrawn (lines are repainted one by one, so a missed one would show)."""
    from tuiflow.engine.store import WorkflowStore

    home_dir = tmp_path / "home"
    shutil.copytree(demo_home.root, home_dir)
    home = Home.open(home_dir)
    app = TuiflowApp(home, clock=lambda: demo.NOW, live=True, keymap={}, initial_workflow=IDS["diamond"])
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)

        def line_of(name: str) -> str:
            # what is on screen (a screenshot reuses every line not marked for repaint)
            return next(line for line in screen_lines(app) if f"{name} " in line)

        assert " failed " in line_of("broken") and "upstream_failed" in line_of("publish")
        before = line_of("score")
        store = WorkflowStore(home)
        run, version = store.load_run(IDS["diamond"])
        run.retry(["broken"], demo.NOW)  # what the coordinator does on `tuiflow retry`
        store.write_run(run, version)
        deadline = time.monotonic() + 15
        while " failed " in line_of("broken"):
            assert time.monotonic() < deadline, "the retried task never changed on screen"
            await asyncio.sleep(0.05)
        assert " ready " in line_of("broken") and " pending " in line_of("publish")
        assert line_of("score") == before


async def test_a_screen_closed_while_it_fetches_drops_the_late_result(demo_home):
    """A refresh whose files were read before its screen closed (Escape, or the app
    quitting) arrives after the screen's widgets are gone: it is thrown away, not drawn
    (drawing it would query widgets that no longer exist, and fail the app)."""
    app = make_app(demo_home, initial_workflow=IDS["diamond"])
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, WorkflowScreen) and screen.loaded
        late = await asyncio.to_thread(screen.load, demo.NOW)
        screen._fetching = True  # as while that fetch ran
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, WorkflowScreen)
        screen._done(late)
        assert not screen._fetching
    # leaving the context re-raises whatever the app raised


async def test_keymap_rebinds_by_id(demo_home, tmp_path):
    home_dir = tmp_path / "home"
    shutil.copytree(demo_home.root, home_dir)
    home = Home.open(home_dir)
    app = TuiflowApp(
        home,
        clock=lambda: demo.NOW,
        live=False,
        keymap={"workflow.cancel": "x"},
        initial_workflow=IDS["fanout"],
    )
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        await pilot.press("x")
        await pilot.pause()
        assert type(app.screen).__name__ == "ConfirmScreen"


def plant_hostile_text(home: Home) -> None:
    """What other users of a shared home can write into records the dashboard shows:
    escape sequences and markup in a workflow's name (its summary), a task's error and
    worker (its run state), its log, and a worker's host and queues (its heartbeat)."""
    import msgpack

    from spool import layout
    from spool.liveness import HeartbeatWriter
    from tuiflow.engine.store import WorkflowStore

    store = WorkflowStore(home)
    run, version = store.load_run(IDS["diamond"])
    broken = run.definition.index["broken"]
    run.reason[broken] = "boom\x1b[2J [red]x[/red]"
    run.worker[broken] = "node\x1b[31m"
    store.write_run(run, version)  # and its summary: rewritten below
    path = f"{store.dir(IDS['diamond'])}/{layout.SUMMARY_FILE}"
    with open(path, "rb") as f:
        summary = msgpack.unpackb(f.read())
    summary["name"] = "[b]ev\x1b]0;x\x07"
    with open(path, "wb") as f:
        f.write(msgpack.packb(summary))
    log = layout.attempt_file(layout.attempt_dir(home.root, IDS["diamond"], "broken", 0), layout.STDOUT_FILE)
    with open(log, "ab") as f:
        f.write("out\x1b[2J\x9b31m\n".encode())  # ESC, and CSI as one C1 character
    writer = HeartbeatWriter(home.workers_dir, "evil-worker")
    writer.beat({"host": "h\x1b]0;t\x07", "queues": ["q\x1b[2J"], "slots": 1, "running": []})
    writer.close()


async def test_other_users_text_is_drawn_safe(demo_home, tmp_path):
    """No control character of a record reaches the terminal (or a browser's, under
    `tuiflow serve`): escapes are drawn as ␛..., markup as the brackets it is."""
    home_dir = tmp_path / "home"
    shutil.copytree(demo_home.root, home_dir)
    home = Home.open(home_dir)
    plant_hostile_text(home)
    app = make_app(home)
    seen: list[str] = []
    async with app.run_test(size=(140, 50)) as pilot:  # narrow: workers get a HOST column
        await settle(pilot)
        overview = "\n".join(screen_lines(app))
        assert "[b]ev␛]0;x␇" in overview  # the name, in the workflow list
        assert "h␛]0;t␇" in overview and "q␛[2J" in overview  # the heartbeat's host and queues
        seen.append(overview)
        app.open_workflow(IDS["diamond"])
        await settle(pilot)
        tasks = "\n".join(screen_lines(app))
        assert "node␛[31m" in tasks and "boom␛[2J [red]x[/red]" in tasks
        seen.append(tasks)
        app.open_task(IDS["diamond"], "broken", "error")
        await settle(pilot)
        error = "\n".join(screen_lines(app))
        assert "boom␛[2J [red]x[/red]" in error
        seen.append(error)
        log_text = "\n".join(app.screen.query_one("#task-log").lines)
        assert "out␛[2J\\x9b31m" in log_text
        seen.append(log_text)
    for text in seen:
        assert not any(c in text for c in "\x1b\x07\x9b"), text


async def test_the_empty_home_hint_quotes_the_home(tmp_path):
    app = TuiflowApp(Home.open(tmp_path / "empty"), live=False, keymap={}, home_label="/shared/my home")
    async with app.run_test(size=(100, 28)) as pilot:
        await settle(pilot)
        hint = "\n".join(screen_lines(app))
        assert "tuiflow worker --home '/shared/my home'" in hint


async def test_gpu_tab_says_why_it_is_empty_and_workers_show_their_models(demo_home):
    app = make_app(demo_home, initial_workflow=IDS["diamond"], initial_tab="gpu")
    async with app.run_test(size=(130, 36)) as pilot:
        await settle(pilot)
        text = " ".join(line.strip() for line in screen_lines(app))
        assert "No GPU here: no task of this workflow held a GPU or ran a model executor" in text
        assert "(diffusers, transformers, vllm)" in text
        await pilot.press("escape")
        await settle(pilot)
        overview = "\n".join(screen_lines(app))
        assert "MODELS" in overview and "0: tiny-sd, tiny-llama" in overview
        assert "0: Qwen2.5-0.5B-Instruct" in overview  # the dead worker's last heartbeat


def test_screenshots_script_writes_the_readme_pictures(tmp_path):
    from tuiflow.fixtures import screenshots

    written = screenshots.shoot_all(str(tmp_path), only={"overview", "task-error"})
    assert sorted(Path(p).name for p in written) == ["overview.svg", "task-error.svg"]
    overview = (tmp_path / "overview.svg").read_text()
    assert overview.startswith("<svg") and "fan0ut9k" in overview
    # the README shows the committed pictures: they must be the ones the script draws
    committed = Path(__file__).resolve().parent.parent / "screenshots" / "overview.svg"
    assert committed.read_text() == overview, (
        "screenshots/ is stale: run python -m tuiflow.fixtures.screenshots"
    )


def test_keymap_file_errors_name_the_file_and_the_bad_id(tmp_path, monkeypatch):
    from tuiflow.app.app import load_keymap

    path = tmp_path / "keymap.json"
    monkeypatch.setenv("TUIFLOW_KEYMAP", str(path))
    assert load_keymap() == {}  # no file: the defaults
    path.write_text('{"workflow.cancel": "x", "tasks.sort": "O"}')
    assert load_keymap() == {"workflow.cancel": "x", "tasks.sort": "O"}
    path.write_text('{"workflow.cancle": "x"}')
    with pytest.raises(SystemExit, match=r"keymap .*keymap.json: unknown binding id 'workflow.cancle'"):
        load_keymap()
    path.write_text('["x"]')
    with pytest.raises(SystemExit, match="must map binding ids to keys"):
        load_keymap()
    path.write_text("{not json")
    with pytest.raises(SystemExit, match=r"keymap .*keymap.json"):
        load_keymap()
