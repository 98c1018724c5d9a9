from pathlib import Path

from spool import Home
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import load_workflow
from tuiflow.engine.markers import Markers


def damage(home: str) -> None:
    wf = Path(home).parent / "victim.yaml"
    wf.write_text("name: victim\ntasks:\n  - {name: a, run: 'true'}\n")
    wf_id = Client(Home.open(home)).submit(load_workflow(str(wf)))
    Markers(home).broken(wf_id, "its state cannot be written: OverflowError: int too big to convert")
