from pathlib import Path

from spool import Home
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import load_workflow


def damage(home: str) -> None:
    wf = Path(home).parent / "victim.yaml"
    wf.write_text("name: victim\ntasks:\n  - {name: a, run: 'true'}\n")
    wf_id = Client(Home.open(home)).submit(load_workflow(str(wf)))
    state = Path(home) / "workflows" / wf_id / "state.msgpack"
    state.write_bytes(state.read_bytes()[:30])
