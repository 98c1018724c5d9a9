"""The shape of the code: the largest classes (methods, lines) and functions (lines).

    python benchmarks/code_shape.py [--root DIR] [--top 12] [packages...]

Prints one table per kind, largest first, for the engine's packages by default (spool,
workers, tuiflow without its dashboard, analyzer). Functions count their own lines (a
method is a function); nested functions count with their parent.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGES = ("spool", "workers", "tuiflow", "analyzer")


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]


def shape(root: Path, packages: tuple[str, ...]) -> tuple[list[tuple], list[tuple], int]:
    classes, functions = [], []
    total = 0
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(), rel)
            total += len(path.read_text().splitlines())
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
                    classes.append((len(methods), _lines(node), f"{rel}:{node.name}"))
            for parent in ast.walk(tree):
                body = getattr(parent, "body", None)
                if not isinstance(body, list) or isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in body:
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                        owner = f"{parent.name}." if isinstance(parent, ast.ClassDef) else ""
                        functions.append((_lines(node), f"{rel}:{owner}{node.name}"))
    return classes, functions, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packages", nargs="*", default=list(PACKAGES))
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    classes, functions, total = shape(Path(args.root), tuple(args.packages))
    print(f"{total:,} lines in {', '.join(args.packages)}")
    print(f"\nlargest classes (methods, lines) of {len(classes)}:")
    for methods, lines, name in sorted(classes, reverse=True)[: args.top]:
        print(f"  {methods:3d} methods {lines:5d} lines  {name}")
    print(f"\nlongest functions (lines) of {len(functions)}:")
    for lines, name in sorted(functions, reverse=True)[: args.top]:
        print(f"  {lines:5d} lines  {name}")


if __name__ == "__main__":
    main()
