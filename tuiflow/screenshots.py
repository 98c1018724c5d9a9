"""Regenerate the README's pictures: ``python -m tuiflow.screenshots [OUT_DIR]``.

Each picture is the dashboard drawn headless on the demo home (`tuiflow.demo`) with the
demo's fixed clock and a fixed terminal size, so running this twice writes the same
files. The snapshot tests draw the same scenes; these are the ones worth showing.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from spool import Home

from . import demo
from .app import TuiflowApp

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "screenshots")


@dataclass(frozen=True)
class Scene:
    name: str
    caption: str
    size: tuple[int, int] = (140, 40)
    workflow: str | None = None
    tab: str = "tasks"
    keys: tuple[str, ...] = ()
    #: a task to open after the workflow: (task name, tab)
    task: tuple[str, str] | None = None


SCENES = (
    Scene("overview", "Workflows, workers (one dead) and queues"),
    Scene("workflow-tasks", "A running 1,002-task fan-out: every task, filterable", workflow="fanout"),
    Scene("workflow-dag", "The DAG by layers, groups folded", workflow="ml-pipeline", tab="dag"),
    Scene("critical-path", "Where the wall time went", workflow="ml-pipeline", tab="critical"),
    Scene("queuing", "Who waited on whom", workflow="ml-pipeline", tab="queuing"),
    Scene("timeline", "Queued, then running, per task", workflow="ml-pipeline", tab="timeline"),
    Scene("lineage", "What fed each task", workflow="ml-pipeline", tab="lineage"),
    Scene("task-error", "A failed task's error and log tail", workflow="diamond", task=("broken", "error")),
    Scene("narrow", "80×24 still works", size=(80, 24)),
)


async def _settle(app: TuiflowApp, pilot) -> None:
    for _ in range(3):
        await pilot.pause()
        fetches = [w for w in app.workers if w.group == "fetch" and not w.is_finished]
        if fetches:
            await app.workers.wait_for_complete(fetches)
    await pilot.pause()


async def _shoot(home: Home, scene: Scene, out_dir: str) -> str:
    app = TuiflowApp(
        home,
        clock=lambda: demo.NOW,
        live=False,
        keymap={},
        home_label="~/tuiflow-home",
        initial_workflow=demo.IDS[scene.workflow] if scene.workflow else None,
        initial_tab=scene.tab,
    )
    async with app.run_test(size=scene.size) as pilot:
        await _settle(app, pilot)
        if scene.task is not None:
            assert scene.workflow is not None
            app.open_task(demo.IDS[scene.workflow], *scene.task)
            await _settle(app, pilot)
        if scene.keys:
            await pilot.press(*scene.keys)
            await _settle(app, pilot)
        return app.save_screenshot(f"{scene.name}.svg", path=out_dir)


def shoot_all(
    out_dir: str = DEFAULT_DIR,
    on_each: Callable[[Scene, str], None] | None = None,
    only: set[str] | None = None,
) -> list[str]:
    """Draw every scene (or those named in `only`) into `out_dir`; returns the files written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="tuiflow-screenshots-") as tmp:
        home = demo.build(os.path.join(tmp, "home"))

        async def run_all() -> None:
            for scene in SCENES:
                if only is not None and scene.name not in only:
                    continue
                path = await _shoot(home, scene, out_dir)
                written.append(path)
                if on_each:
                    on_each(scene, path)

        asyncio.run(run_all())
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    out_dir = os.path.abspath(args[0]) if args else DEFAULT_DIR
    shoot_all(out_dir, on_each=lambda scene, path: print(f"{os.path.relpath(path)}  {scene.caption}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
