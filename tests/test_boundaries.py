"""The four packages keep the boundaries ARCHITECTURE.md draws (checked on the source, so a
violation fails even when the offending import sits in a branch tests never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "spool": {"spool"},
    "analyzer": {"analyzer"},
    "workers": {"workers", "spool", "analyzer"},
    "tuiflow": {"tuiflow", "workers", "spool", "analyzer"},
}
#: leaf modules of spool (they import nothing of ours) that every package may use: the
#: root of the error family and the home's layout
SHARED_LEAVES = {"spool.errors", "spool.layout"}
FORBIDDEN_ANYWHERE = {"pickle", "cPickle", "dill", "marshal", "shelve"}
UI = {"textual", "textual_serve"}
TERMINAL = {"rich", "textual", "textual_serve", "typer"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, fully named (``from a.b import c`` gives ``a.b``)."""
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # `from spool import layout` imports spool.layout
                full = f"{node.module}.{alias.name}"
                out.add(full if full in SHARED_LEAVES else node.module)
    return out


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    ours = set(ALLOWED)
    for path in (ROOT / package).rglob("*.py"):
        imported = _imports(path)
        top = _top(imported - SHARED_LEAVES)
        bad = (top & ours) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        assert not _top(imported) & FORBIDDEN_ANYWHERE, (
            f"{path.relative_to(ROOT)} imports a pickle-like module"
        )
        if package in ("spool", "analyzer", "workers"):
            assert not _top(imported) & UI, f"{path.relative_to(ROOT)} imports a UI library"


def test_the_shared_leaves_import_nothing_of_ours():
    for module in SHARED_LEAVES:
        path = ROOT / (module.replace(".", "/") + ".py")
        imported = _top(_imports(path))
        assert not imported & set(ALLOWED), f"{module} imports {sorted(imported & set(ALLOWED))}"


def test_the_engine_imports_no_terminal_ui_and_no_private_name():
    """tuiflow/engine is the core a daemon runs: no rich, textual or typer, nothing from the
    command line, the dashboard or the fixtures, and no private name of another package."""
    for path in (ROOT / "tuiflow" / "engine").rglob("*.py"):
        rel = path.relative_to(ROOT)
        imported = _imports(path)
        assert not _top(imported) & TERMINAL, f"{rel} imports {sorted(_top(imported) & TERMINAL)}"
        outside = [m for m in imported if m.startswith(("tuiflow.cli", "tuiflow.app", "tuiflow.fixtures"))]
        assert not outside, f"{rel} imports {outside}"
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("tuiflow"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, f"{rel}:{node.lineno} imports private {private} from {node.module}"


def test_nothing_but_fixtures_and_tests_imports_the_fixtures():
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            if "fixtures" in path.parts:
                continue
            bad = [m for m in _imports(path) if m.startswith("tuiflow.fixtures")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_eval_or_exec_anywhere():
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in ("eval", "exec"), f"{path}:{node.lineno} calls {node.func.id}"


@pytest.mark.parametrize("package", ["analyzer", "spool"])
def test_lazy_exports_survive_submodule_imports(package):
    """A lazily exported name that equals a submodule's name is shadowed by the module
    object as soon as anything imports that submodule (the import system binds it on the
    package). Checked in a fresh interpreter, after importing every submodule."""
    import subprocess
    import sys

    code = f"""
import importlib, pkgutil, types
pkg = importlib.import_module({package!r})
modules = {{m.name for m in pkgutil.iter_modules(pkg.__path__)}}
assert not modules & set(pkg._EXPORTS), sorted(modules & set(pkg._EXPORTS))
assert set(pkg.__all__) == set(pkg._EXPORTS), sorted(set(pkg.__all__) ^ set(pkg._EXPORTS))
for m in sorted(modules):
    importlib.import_module({package!r} + "." + m)
for name, module in pkg._EXPORTS.items():
    value = getattr(pkg, name)
    assert not isinstance(value, types.ModuleType), name
    assert value is getattr(importlib.import_module({package!r} + "." + module), name), name
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
