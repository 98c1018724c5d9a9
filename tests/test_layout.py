"""One module owns the home's layout (`spool/layout.py`): no other module spells a
directory or file name of a home, a workflow or an attempt. Checked on the source: every
string constant in the code (docstrings and comments aside) is compared with the names."""

from __future__ import annotations

import ast
from pathlib import Path

from spool import layout

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spool", "workers", "analyzer", "tuiflow")
#: a home's names that are also ordinary words, checked only as path parts ("/tasks/", "tasks/")
WORDS = {
    layout.TASKS_DIR,
    layout.TRACE_DIR,
    layout.LOGS_DIR,
    layout.WORKERS_DIR,
    layout.QUEUES_DIR,
    layout.COMPLETIONS_DIR,
    layout.CONTROL_DIR,
    layout.COORDINATOR_DIR,
    layout.WORKFLOWS_DIR,
    layout.LEASE_DIR,
    layout.KILL_DIR,
    layout.CANCEL_MARKER,
    layout.BROKEN_MARKER,
    layout.READY_DIR,
    layout.CLAIMED_DIR,
    layout.DELAYED_DIR,
    layout.DEAD_DIR,
}
#: of those, the ones no other string of the code equals: checked as whole strings too
BARE = {
    layout.TASKS_DIR,
    layout.TRACE_DIR,
    layout.LOGS_DIR,
    layout.KILL_DIR,
    layout.QUEUES_DIR,
    layout.WORKFLOWS_DIR,
    layout.CLAIMED_DIR,
    layout.DELAYED_DIR,
    layout.LEASE_DIR,
}
FILE_NAMES = {
    getattr(layout, n)
    for n in dir(layout)
    if n.isupper() and isinstance(getattr(layout, n), str) and getattr(layout, n) not in WORDS
}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _path_parts(tree: ast.AST) -> set[int]:
    """Constants used as a path component: an argument of os.path.join / Path(...) /
    .joinpath(...), or an operand of `/` (pathlib)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("join", "Path", "PurePath", "joinpath"):
                ids.update(id(a) for a in node.args)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            ids.update((id(node.left), id(node.right)))
    return ids


def _offending(text: str, as_path: bool) -> list[str]:
    found = [name for name in FILE_NAMES if name in text]
    if as_path and text in BARE:
        found.append(text)
    for word in WORDS:
        if f"/{word}/" in text or text.startswith(f"{word}/") or text.endswith(f"/{word}"):
            found.append(f"{word}/")
    return found


def test_no_module_but_spool_layout_spells_a_path_of_the_home():
    offences = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "spool/layout.py":
                continue
            tree = ast.parse(path.read_text(), rel)
            docs, parts = _docstrings(tree), _path_parts(tree)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docs:
                    continue
                if names := _offending(node.value, id(node) in parts):
                    offences.append(f"{rel}:{node.lineno}: {node.value!r} ({', '.join(sorted(names))})")
    assert not offences, "spell these with spool.layout:\n" + "\n".join(offences)
