"""The model libraries, imported in the model host only when a model is loaded."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(Exception):
    """A library an executor needs is not installed; the message says what to install."""


def require(executor: str, *names: str) -> list[ModuleType]:
    """The modules `names`, or MissingDependency naming the extra that brings them."""
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError as e:
        raise MissingDependency(
            f"the {executor} executor needs `pip install 'tuiflow[{executor}]'` ({e.name} is missing)"
        ) from None
