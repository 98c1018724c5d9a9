"""tuiflow: GPU workflow DAGs on a shared filesystem.

The product package: the workflow model, the coordinator, the client API, the CLI and the
Textual dashboard, built on `spool` (the filesystem substrate), `workers` and `analyzer`.

Inside a task, use `set_output`, `get_upstream_output`, `upstream_outputs` and `task_info`
(importing them is cheap). To build workflows in Python, use `Workflow`.
"""

from typing import Any

from tuiflow.sdk.runtime import (
    get_upstream_output,
    record_asset,
    set_output,
    span,
    task_info,
    upstream_outputs,
)

__version__ = "0.1.0"

__all__ = [
    "Workflow",
    "__version__",
    "get_upstream_output",
    "record_asset",
    "set_output",
    "span",
    "task_info",
    "upstream_outputs",
]


def __getattr__(name: str) -> Any:
    # Tasks import tuiflow for set_output: keep pydantic and yaml out of that import.
    if name == "Workflow":
        from tuiflow.sdk.builder import Workflow

        return Workflow
    raise AttributeError(f"module 'tuiflow' has no attribute {name!r}")
