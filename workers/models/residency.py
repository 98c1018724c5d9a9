"""The models a model host keeps loaded: least recently used first out, idle ones dropped.

A model is kept under its key (executor, model, dtype, engine arguments): two tasks with
the same key share it, whatever else they ask (prompts, sampling). At most `max_models`
stay loaded, their weights within `budget` bytes (`--gpu-memory-budget`; a model's
``footprint()``, measured once loaded: the least recently used others go until the new
one fits, and a model larger than the budget alone stays, alone), and one unused for `ttl`
seconds is dropped before the next request is served (its memory goes back to the slot:
`torch.cuda.empty_cache` where CUDA is in use).
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
GPU_MEMORY_BUDGET_ENV = "TUIFLOW_GPU_MEMORY_BUDGET"
DEFAULT_TTL = 600.0
DEFAULT_MODELS_PER_SLOT = 2


class Residency:
    """Loaded models by key, in order of last use (see the module docstring)."""

    def __init__(
        self,
        max_models: int = DEFAULT_MODELS_PER_SLOT,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        budget: int | None = None,
    ):
        self.max_models = max_models
        self.ttl = ttl
        self.clock = clock
        self.budget = budget
        #: key -> (model, last used, bytes it holds)
        self._models: collections.OrderedDict[Hashable, tuple[Any, float, int]] = collections.OrderedDict()

    def get(self, key: Hashable, load: Callable[[], Any]) -> tuple[Any, float]:
        """The model under `key` and the seconds loading it took now (0.0 on a warm hit)."""
        self.drop_idle()
        held = self._models.pop(key, None)
        if held is not None:
            self._models[key] = (held[0], self.clock(), held[2])
            return held[0], 0.0
        while len(self._models) >= self.max_models:
            self._evict(next(iter(self._models)))
        t0 = time.perf_counter()
        model = load()
        seconds = time.perf_counter() - t0
        size = footprint(model)
        while self.budget is not None and self._models and self.held_bytes() + size > self.budget:
            self._evict(next(iter(self._models)))
        self._models[key] = (model, self.clock(), size)
        return model, seconds

    def held_bytes(self) -> int:
        """The bytes the loaded models hold, as measured when each was loaded."""
        return sum(size for _, _, size in self._models.values())

    def drop_idle(self) -> None:
        now = self.clock()
        for key in [k for k, (_, used, _) in self._models.items() if now - used > self.ttl]:
            self._evict(key)

    def loaded(self) -> list[Hashable]:
        """The keys of the models loaded, least recently used first."""
        return list(self._models)

    def _evict(self, key: Hashable) -> None:
        del self._models[key]
        gc.collect()  # the model's tensors are only freed once nothing refers to them
        _empty_cuda_cache()


def footprint(model: Any) -> int:
    """The bytes a loaded model holds (its ``footprint()``; 0 when it cannot say)."""
    measure = getattr(model, "footprint", None)
    return int(measure()) if callable(measure) else 0


def module_bytes(module: Any) -> int:
    """The bytes of a torch module's parameters and buffers."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TB": 1000**4, "TIB": 1024**4}  # fmt: skip


def parse_bytes(text: str) -> int:
    """A size such as ``20GiB``, ``512MB`` or ``1000000`` in bytes (ValueError otherwise)."""
    number = text.strip().rstrip("bBiIkKmMgGtT ")
    unit = text.strip()[len(number) :].strip().upper()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a size such as 20GiB or 512MB, got {text!r}") from None
    if unit not in _UNITS or value < 0:
        raise ValueError(f"expected a size such as 20GiB or 512MB, got {text!r}")
    return int(value * _UNITS[unit])


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")  # never imported here just to empty a cache
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
