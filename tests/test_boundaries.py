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
FORBIDDEN_ANYWHERE = {"pickle", "cPickle", "dill", "marshal", "shelve"}
UI = {"textual", "textual_serve"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    ours = set(ALLOWED)
    for path in (ROOT / package).rglob("*.py"):
        imported = _imports(path)
        bad = (imported & ours) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        assert not imported & FORBIDDEN_ANYWHERE, f"{path.relative_to(ROOT)} imports a pickle-like module"
        if package in ("spool", "analyzer", "workers"):
            assert not imported & UI, f"{path.relative_to(ROOT)} imports a UI library"


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
