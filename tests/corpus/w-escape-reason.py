"""Damage: the bystander's run state says its first task failed on a worker whose id and
error hold escape sequences (a task's error is whatever its program raised or printed)."""

from spool import Home
from tuiflow.engine.store import WorkflowStore


def damage(home: str) -> None:
    store = WorkflowStore(Home.open(home, create=False))
    (wf_id,) = store.ids()
    run, version = store.load_run(wf_id)
    run.reason[0] = "boom\x1b[2J\x1b]0;pwned\x07 [red]not markup[/red]"
    run.worker[0] = "node\x1b[31m-7"
    store.write_run(run, version)
