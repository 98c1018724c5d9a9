"""Small task functions for the examples (the python executor calls module:function)."""

from __future__ import annotations

import tuiflow


def noop() -> None:
    """Do nothing: measures the engine, not the task."""


def score(value: float) -> dict:
    return {"value": value}


def count_inputs() -> dict:
    """How many upstream tasks fed this one."""
    return {"inputs": len(tuiflow.upstream_outputs())}
