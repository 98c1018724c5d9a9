"""Which tasks may run as one model call (a merged batch): one rule, read by the
coordinator (which bundles such tasks together, `tuiflow.engine.dispatch`) and by the
worker (which runs up to ``--merge-max`` consecutive tasks of a bundle that share a key as
one call, `workers.worker`).

Two tasks share a merge key when they name the same model executor, need as many GPUs,
and their backend's `merge_key` agrees (the same loaded model, and what one call applies
to all its inputs: a diffusers call's size and steps). Each keeps its own prompts, seeds
and output. A task opts out with ``with: {merge: false}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workers.models import imagegen, textgen, vllmgen

#: the model executors (`analyzer.contract.MODEL_EXECUTORS`) and their backends' merge keys
MERGE_KEYS: dict[str, Callable[[dict[str, Any]], tuple[str, ...]]] = {
    "transformers": textgen.merge_key,
    "diffusers": imagegen.merge_key,
    "vllm": vllmgen.merge_key,
}
#: most tasks a worker runs as one call, unless ``--merge-max`` says otherwise
DEFAULT_MERGE_MAX = 8


def merge_key(executor: str, spec: dict[str, Any], gpus: int) -> tuple[Any, ...] | None:
    """The key tasks must share to run as one call; None: this task runs alone."""
    backend_key = MERGE_KEYS.get(executor)
    with_ = spec.get("with")
    if backend_key is None or not isinstance(with_, dict) or with_.get("merge") is False:
        return None
    try:
        return (executor, gpus, *backend_key(with_))
    except (KeyError, TypeError, ValueError):  # not valid: it fails alone, with its own message
        return None
