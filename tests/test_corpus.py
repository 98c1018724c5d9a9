"""The bad-input corpus: what a careless or hostile user (or file) can throw at a shared
home, and the one clear line each must get back.

Each case is `tests/corpus/<name>.case.yaml`::

    command: [validate, "{file}"]   # argv after `tuiflow`; {file} is the case's file,
                                    # {home} the home, {bystander} a workflow already in it
    file: <name>.yaml               # optional: the workflow file (or any file) it uses
    damage: <name>.py               # optional: a module whose damage(home: str) runs first
    exit: 2                         # the exit code
    expect: "priority must be"      # a fragment of what it prints (stdout + stderr)

Every case runs in a fresh home that already holds a bystander workflow (submitted, not
run). Each must: exit as said, print the fragment, print no traceback, and leave the
bystander's records whole (its status still reads, its definition unchanged).
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spool import Home
from tuiflow.engine.client import Client
from tuiflow.engine.compiler import load_workflow

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(CORPUS.glob("*.case.yaml"))
BYSTANDER = (
    "name: bystander\ntasks:\n  - {name: a, run: 'true'}\n  - {name: b, depends_on: [a], run: 'true'}\n"
)


def test_the_corpus_holds_at_least_forty_cases():
    assert len(CASES) >= 40, [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.name.removesuffix(".case.yaml") for c in CASES])
def test_bad_input(case: Path, tmp_path: Path):
    spec = yaml.safe_load(case.read_text())
    home = Home.open(tmp_path / "home")
    (tmp_path / "bystander.yaml").write_text(BYSTANDER)
    client = Client(home)
    bystander = client.submit(load_workflow(str(tmp_path / "bystander.yaml")))
    before = client.run(bystander).definition.to_wire()
    if spec.get("damage"):
        module_spec = importlib.util.spec_from_file_location("damage", CORPUS / spec["damage"])
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        module.damage(home.root)
    values = {
        "file": str(CORPUS / spec["file"]) if spec.get("file") else "",
        "home": home.root,
        "bystander": bystander,
    }
    argv = [str(a).format(**values) for a in spec["command"]]
    if "--home" not in argv:
        argv += ["--home", home.root]
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    out = r.stdout + r.stderr
    shown = f"$ tuiflow {shlex.join(argv)}\n{out[-3000:]}"
    assert r.returncode == spec["exit"], shown
    assert spec["expect"] in out, shown
    assert "Traceback" not in out, shown
    assert Client(Home.open(home.root, create=False)).run(bystander).definition.to_wire() == before, shown
