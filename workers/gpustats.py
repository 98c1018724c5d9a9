"""GPU telemetry through NVML: what a task's GPUs did while it ran, and whether memory came
back after a model host ended.

Why NVML and why this shape:

* NVML (the `pynvml` module of the `nvidia-ml-py` package) reads the driver's counters
  without touching CUDA, so sampling never creates a CUDA context in the worker and costs
  two cheap driver calls per GPU per sample. It is optional: without the module, without a
  driver, or when `nvmlInit` fails, every function here returns nothing (None, {}) and
  logs one debug line per process. Telemetry never fails a task.
* NVML is initialised once per process and never shut down (NVML keeps a reference count;
  a worker samples for its whole life), behind a lock so slot threads may race to it.
* NVML numbers devices by PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; the worker's
  ``--gpus`` ids are CUDA ordinals as the worker sees them. `nvml_device` maps one to the
  other. This assumes CUDA and NVML agree on order (identical GPUs on a node, or
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); CUDA's default order is fastest first.
* Span attributes follow the OpenTelemetry hardware conventions (``hw.gpu.utilization``
  as 0..1, ``hw.gpu.memory.usage`` in bytes), one value per GPU in the order of
  ``tuiflow.gpus``. If any of a task's GPUs cannot be read (a MIG entry, an unknown UUID),
  the attributes are absent rather than misaligned.
* NVML's utilisation is the share of the driver's last sample period (1/6 s to 1 s,
  by product) in which a kernel ran; memory "used" is the whole device's, every process
  included, not only the task's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from types import ModuleType, TracebackType
from typing import Any

from analyzer.contract import ATTR_GPU_MEMORY_USAGE, ATTR_GPU_UTILIZATION

log = logging.getLogger("workers.worker")  # the daemon's log, whichever part speaks

MIB = 1024 * 1024

_lock = threading.Lock()
_initialised = False  # True once _nvml() has tried, whatever the outcome
_module: ModuleType | None = None  # the initialised pynvml module, None when absent


def _nvml() -> ModuleType | None:
    """The initialised `pynvml` module, or None without NVML. Imports and initialises on
    first use only (importing tuiflow must not load the driver library), once per process."""
    global _initialised, _module
    if _initialised:
        return _module
    with _lock:
        if _initialised:
            return _module
        try:
            import pynvml

            pynvml.nvmlInit()
            _module = pynvml
        except Exception as e:  # ImportError, NVMLError (no driver, no library), OSError
            # Telemetry is optional: whatever the binding raises, NVML is simply absent.
            log.debug("NVML not available, no GPU telemetry: %s: %s", type(e).__name__, e)
            _module = None
        _initialised = True
        return _module


def _reset_nvml() -> None:
    """Forget the process-wide NVML state, so that the next call initialises again. For
    tests, which swap the `pynvml` module between cases."""
    global _initialised, _module
    with _lock:
        if _module is not None:
            try:
                _module.nvmlShutdown()
            except Exception:
                pass
        _initialised = False
        _module = None


def nvml_device(gpu: int, cuda_visible_devices: str | None) -> int | str | None:
    """The NVML device behind CUDA ordinal `gpu`, as the worker sees it.

    Parameters:
        gpu: an id from the worker's ``--gpus`` (a CUDA ordinal in the worker's process).
        cuda_visible_devices: the worker's own ``CUDA_VISIBLE_DEVICES`` (None: unset).

    Returns:
        an NVML index (int) or a GPU UUID (str, for ``nvmlDeviceGetHandleByUUID``), or None
        when the device cannot be sampled: out of range, a MIG instance (NVML reports no
        utilisation for MIG), or an entry CUDA itself would not accept.

    Unset: ordinal k is NVML index k. Set (Slurm gives "2,3" or "GPU-<uuid>,..."), ordinal
    k is the k-th entry. As CUDA does, the list ends at the first entry that is neither an
    index nor a UUID (so "-1" hides every device).
    """
    if gpu < 0:
        return None
    if cuda_visible_devices is None:
        return gpu
    entries: list[int | str | None] = []
    for raw in cuda_visible_devices.split(","):
        entry = raw.strip()
        if entry.isdigit():
            entries.append(int(entry))
        elif entry.startswith("GPU-"):
            entries.append(entry)
        elif entry.startswith("MIG-"):
            entries.append(None)
        else:
            break
    return entries[gpu] if gpu < len(entries) else None


def _handles(nvml: ModuleType, gpus: Sequence[int]) -> list[Any] | None:
    """NVML handles for `gpus`, in order; None if any of them cannot be had."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    handles = []
    try:
        for gpu in gpus:
            ref = nvml_device(gpu, visible)
            if ref is None:
                log.debug("GPU %d (CUDA_VISIBLE_DEVICES=%r) cannot be sampled through NVML", gpu, visible)
                return None
            if isinstance(ref, str):
                # bytes: old bindings pass the argument to ctypes as is; new ones accept both
                handles.append(nvml.nvmlDeviceGetHandleByUUID(ref.encode()))
            else:
                handles.append(nvml.nvmlDeviceGetHandleByIndex(ref))
    except Exception as e:  # NVMLError: no such index or UUID, GPU lost
        log.debug("no NVML handle for GPUs %s: %s", list(gpus), e)
        return None
    return handles


def memory_used(gpus: Sequence[int]) -> list[int] | None:
    """Bytes of device memory used now on each of `gpus`, in order (every process's, as
    NVML counts it); None without NVML or when a GPU cannot be read."""
    nvml = _nvml()
    if nvml is None:
        return None
    handles = _handles(nvml, gpus)
    if handles is None:
        return None
    try:
        return [int(nvml.nvmlDeviceGetMemoryInfo(h).used) for h in handles]
    except Exception as e:  # NVMLError: GPU lost, driver gone
        log.debug("NVML memory read failed for GPUs %s: %s", list(gpus), e)
        return None


def wait_memory_freed(
    gpus: Sequence[int],
    baseline: Sequence[int],
    timeout: float = 10.0,
    slack: int = 256 * MIB,
    interval: float = 0.1,
) -> bool | None:
    """Wait for the memory of a host process that ended to come back.

    The driver frees a dead process's memory asynchronously, and a process that was killed
    mid-call may leave it held a while; starting the next engine before that would make it
    size its cache on memory that is not there.

    Parameters:
        gpus: the GPUs the ended process used.
        baseline: bytes used on each of them before that process started (`memory_used`).
        timeout: seconds to wait at most.
        slack: bytes above the baseline still counted as freed (other processes move too).
        interval: seconds between reads.

    Returns:
        True once every GPU is within `slack` of its baseline, False when `timeout` passed
        first, None without NVML (nothing can be checked).

    Raises:
        ValueError: `baseline` does not have one value per GPU (a caller's mistake).
    """
    if len(baseline) != len(gpus):
        raise ValueError(f"baseline has {len(baseline)} values for {len(gpus)} GPUs")
    deadline = time.monotonic() + timeout
    while True:
        used = memory_used(gpus)
        if used is None:
            return None
        if all(u <= b + slack for u, b in zip(used, baseline, strict=True)):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))


class GpuSampler:
    """Samples utilisation and memory of a task's GPUs while it runs, on a daemon thread.

    ``start()`` takes a sample at once and then one every `interval` seconds; ``stop()``
    takes a last one and returns the span attributes: the mean utilisation (0..1) and the
    peak memory used (bytes) per GPU, in the order of `gpus`. Two samples at least, so a
    call shorter than `interval` still gets values. Without NVML, with no GPUs, or when no
    complete sample was taken, the attributes are {}. An NVML error mid-run stops sampling
    and keeps what was sampled before it.

    Use ``start()``/``stop()``, or ``with GpuSampler(gpus) as s: ...`` and then
    ``s.attributes``.
    """

    def __init__(self, gpus: Sequence[int], interval: float = 0.2):
        self.gpus = list(gpus)
        self.interval = interval
        self.attributes: dict[str, list] = {}  # set by stop()
        self._nvml: ModuleType | None = None
        self._handles: list[Any] = []
        self._started = False
        self._stopped = False
        self._failed = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # Running totals; a sample is committed whole under the lock or not at all.
        self._commit = threading.Lock()
        self._count = 0
        self._util_sum = [0] * len(self.gpus)
        self._mem_peak = [0] * len(self.gpus)

    def start(self) -> None:
        """Begin sampling (once; a second call does nothing). Does nothing without NVML or
        GPUs."""
        if self._started:
            return
        self._started = True
        if not self.gpus:
            return
        nvml = _nvml()
        if nvml is None:
            return
        handles = _handles(nvml, self.gpus)
        if handles is None:
            return
        self._nvml, self._handles = nvml, handles
        if not self._sample():
            return
        self._thread = threading.Thread(target=self._run, name="tuiflow-gpustats", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, list]:
        """Stop sampling and return the span attributes ({} when there are none). Calling it
        again returns the same attributes."""
        if self._stopped:
            return dict(self.attributes)
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 2 * self.interval))
        if self._nvml is not None and not self._failed:
            self._sample()
        with self._commit:
            if self._count:
                self.attributes = {
                    ATTR_GPU_UTILIZATION: [round(s / self._count / 100, 4) for s in self._util_sum],
                    ATTR_GPU_MEMORY_USAGE: list(self._mem_peak),
                }
        return dict(self.attributes)

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            if not self._sample():
                return

    def _sample(self) -> bool:
        """Read every GPU once and commit the sample; False (and sampling ends) on an NVML
        error, with the sample dropped so that no GPU is counted more often than another."""
        nvml = self._nvml
        assert nvml is not None
        try:
            utils = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
            mems = [nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles]
        except Exception as e:  # NVMLError: GPU lost, driver gone; never the task's failure
            self._failed = True
            log.debug("NVML sampling of GPUs %s stopped: %s", self.gpus, e)
            return False
        with self._commit:
            self._count += 1
            for i, (u, m) in enumerate(zip(utils, mems, strict=True)):
                self._util_sum[i] += u
                if m > self._mem_peak[i]:
                    self._mem_peak[i] = int(m)
        return True

    def __enter__(self) -> GpuSampler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
