"""The models a model host keeps loaded: least recently used first out, idle ones dropped.

A model is kept under its key (executor, model, dtype, engine arguments): two tasks with
the same key share it, whatever else they ask (prompts, sampling). At most `max_models`
stay loaded, and one unused for `ttl` seconds is dropped before the next request is served
(its memory goes back to the slot: `torch.cuda.empty_cache` where CUDA is in use).
"""

from __future__ import annotations

import collections
import gc
import time
from collections.abc import Callable, Hashable
from typing import Any

#: the environment variables a model host reads its bounds from (`tuiflow worker
#: --model-ttl`, `--models-per-slot` set them for the hosts a worker starts)
MODEL_TTL_ENV = "TUIFLOW_MODEL_TTL"
MODELS_PER_SLOT_ENV = "TUIFLOW_MODELS_PER_SLOT"
DEFAULT_TTL = 600.0
DEFAULT_MODELS_PER_SLOT = 2


class Residency:
    """Loaded models by key, in order of last use (see the module docstring)."""

    def __init__(
        self,
        max_models: int = DEFAULT_MODELS_PER_SLOT,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_models = max_models
        self.ttl = ttl
        self.clock = clock
        self._models: collections.OrderedDict[Hashable, tuple[Any, float]] = collections.OrderedDict()

    def get(self, key: Hashable, load: Callable[[], Any]) -> tuple[Any, float]:
        """The model under `key` and the seconds loading it took now (0.0 on a warm hit)."""
        self.drop_idle()
        held = self._models.pop(key, None)
        if held is not None:
            self._models[key] = (held[0], self.clock())
            return held[0], 0.0
        while len(self._models) >= self.max_models:
            self._evict(next(iter(self._models)))
        t0 = time.perf_counter()
        model = load()
        seconds = time.perf_counter() - t0
        self._models[key] = (model, self.clock())
        return model, seconds

    def drop_idle(self) -> None:
        now = self.clock()
        for key in [k for k, (_, used) in self._models.items() if now - used > self.ttl]:
            self._evict(key)

    def loaded(self) -> list[Hashable]:
        """The keys of the models loaded, least recently used first."""
        return list(self._models)

    def _evict(self, key: Hashable) -> None:
        del self._models[key]
        gc.collect()  # the model's tensors are only freed once nothing refers to them
        _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")  # never imported here just to empty a cache
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
