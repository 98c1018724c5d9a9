"""GPU telemetry (`workers.gpustats`) without a GPU: a fake `pynvml` module stands in for
nvidia-ml-py, with utilisation that changes on every read and memory the test controls. It
records every value it handed out, so the expected mean and peak are computed from what the
sampler actually saw. Without `pynvml` (or when `nvmlInit` fails) everything is absent and
nothing raises.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types

import pytest

from analyzer.contract import ATTR_GPU_MEMORY_USAGE, ATTR_GPU_UTILIZATION
from workers import gpustats
from workers.gpustats import GpuSampler, memory_used, nvml_device, wait_memory_freed

# A sampler thread that dies of an exception is a bug here, not a warning.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

GIB = 1024**3


class NVMLError(Exception):
    pass


class FakeNvml:
    """The part of nvidia-ml-py that gpustats uses, over `count` fake devices. Handles are
    NVML indices; UUIDs are "GPU-fake-<index>". Utilisation of device d on its n-th read is
    (n * 37 + d * 11) % 101; memory is `self.used[d]`. Successful reads are recorded."""

    def __init__(self, count: int = 4):
        self.count = count
        self.used = {d: (d + 1) * GIB for d in range(count)}
        self.inits = 0
        self.init_error = False
        self.fail_util_after: dict[int, int] = {}  # device -> successful util reads before it fails
        self.util_seen: dict[int, list[int]] = {d: [] for d in range(count)}
        self.mem_seen: dict[int, list[int]] = {d: [] for d in range(count)}
        self.calls = 0
        self._lock = threading.Lock()

    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        m.NVMLError = NVMLError
        m.nvmlInit = self.nvmlInit
        m.nvmlShutdown = lambda: None
        m.nvmlDeviceGetHandleByIndex = self.by_index
        m.nvmlDeviceGetHandleByUUID = self.by_uuid
        m.nvmlDeviceGetUtilizationRates = self.utilization
        m.nvmlDeviceGetMemoryInfo = self.memory
        return m

    def nvmlInit(self) -> None:
        time.sleep(0.01)  # widen the window in which racing callers could init twice
        with self._lock:
            self.inits += 1
        if self.init_error:
            raise NVMLError("Driver Not Loaded")

    def by_index(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise NVMLError("Invalid Argument")
        return index

    def by_uuid(self, uuid: bytes) -> int:
        assert isinstance(uuid, bytes)
        prefix = b"GPU-fake-"
        if not uuid.startswith(prefix):
            raise NVMLError("Not Found")
        return self.by_index(int(uuid[len(prefix) :]))

    def utilization(self, d: int) -> types.SimpleNamespace:
        with self._lock:
            self.calls += 1
            seen = self.util_seen[d]
            if d in self.fail_util_after and len(seen) >= self.fail_util_after[d]:
                raise NVMLError("GPU is lost")
            value = (len(seen) * 37 + d * 11) % 101
            seen.append(value)
        return types.SimpleNamespace(gpu=value, memory=0)

    def memory(self, d: int) -> types.SimpleNamespace:
        with self._lock:
            self.calls += 1
            used = self.used[d]
            self.mem_seen[d].append(used)
        return types.SimpleNamespace(used=used, free=80 * GIB - used, total=80 * GIB)


@pytest.fixture(autouse=True)
def clean_nvml(monkeypatch):
    """No real pynvml, no inherited CUDA_VISIBLE_DEVICES, a fresh NVML cache per test."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpustats._reset_nvml()
    yield
    gpustats._reset_nvml()


@pytest.fixture
def fake(monkeypatch) -> FakeNvml:
    f = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", f.module())
    return f


def expected(fake: FakeNvml, devices: list[int], samples: int | None = None) -> dict[str, list]:
    """The attributes from the first `samples` recorded reads (all by default)."""
    util, mem = [], []
    for d in devices:
        us, ms = fake.util_seen[d][:samples], fake.mem_seen[d][:samples]
        util.append(sum(us) / len(us) / 100)
        mem.append(max(ms))
    return {ATTR_GPU_UTILIZATION: util, ATTR_GPU_MEMORY_USAGE: mem}


def assert_attrs(got: dict, want: dict) -> None:
    assert set(got) == {ATTR_GPU_UTILIZATION, ATTR_GPU_MEMORY_USAGE}
    assert got[ATTR_GPU_UTILIZATION] == pytest.approx(want[ATTR_GPU_UTILIZATION], abs=1e-4)
    assert got[ATTR_GPU_MEMORY_USAGE] == want[ATTR_GPU_MEMORY_USAGE]
    assert all(isinstance(m, int) for m in got[ATTR_GPU_MEMORY_USAGE])
    assert all(0.0 <= u <= 1.0 for u in got[ATTR_GPU_UTILIZATION])


# --- without NVML ---------------------------------------------------------------------


def test_without_pynvml_everything_is_absent(caplog):
    caplog.set_level(logging.DEBUG, logger="workers.worker")
    s = GpuSampler([0, 1], interval=0.01)
    s.start()
    time.sleep(0.05)
    assert s.stop() == {}
    assert s.attributes == {}
    with GpuSampler([0]) as s2:
        pass
    assert s2.attributes == {}
    assert memory_used([0]) is None
    assert wait_memory_freed([0], [0], timeout=0.01) is None
    nvml_lines = [r for r in caplog.records if "NVML not available" in r.getMessage()]
    assert len(nvml_lines) == 1
    assert nvml_lines[0].levelno == logging.DEBUG


def test_nvml_init_error_means_absent(fake, caplog):
    caplog.set_level(logging.DEBUG, logger="workers.worker")
    fake.init_error = True
    with GpuSampler([0, 1], interval=0.01) as s:
        time.sleep(0.03)
    assert s.attributes == {}
    assert memory_used([0, 1]) is None
    assert wait_memory_freed([0], [0], timeout=0.01) is None
    assert fake.inits == 1  # tried once per process, not per call
    assert fake.calls == 0
    assert sum("NVML not available" in r.getMessage() for r in caplog.records) == 1


def test_no_gpus_samples_nothing(fake):
    with GpuSampler([], interval=0.01) as s:
        time.sleep(0.03)
    assert s.attributes == {}
    assert fake.calls == 0
    assert memory_used([]) == []


# --- sampling -------------------------------------------------------------------------


def test_sampler_mean_and_peak_in_requested_order(fake):
    fake.used = {0: 3 * GIB, 1: 7 * GIB, 2: GIB, 3: GIB}
    s = GpuSampler([1, 0], interval=0.05)
    s.start()
    time.sleep(0.2)
    fake.used[0] = 5 * GIB  # a peak in the middle of the run, gone before the end
    time.sleep(0.1)
    fake.used[0] = 4 * GIB
    time.sleep(0.2)
    got = s.stop()

    samples = len(fake.util_seen[1])
    assert samples >= 5  # one at start, ~9 on the thread, one at stop
    assert len(fake.util_seen[0]) == samples
    assert fake.util_seen[2] == [] and fake.mem_seen[3] == []
    assert len(set(fake.util_seen[1])) > 1  # the values did change over time
    want = expected(fake, [1, 0])
    assert want[ATTR_GPU_MEMORY_USAGE] == [7 * GIB, 5 * GIB]
    assert_attrs(got, want)
    assert s.stop() == got  # stopping again gives the same attributes
    assert fake.inits == 1


def test_short_call_gets_a_start_and_a_stop_sample(fake):
    t0 = time.monotonic()
    with GpuSampler([2], interval=10.0) as s:
        pass
    assert time.monotonic() - t0 < 1.0  # stop does not wait out the interval
    assert len(fake.util_seen[2]) == 2
    assert_attrs(s.attributes, expected(fake, [2]))


def test_handles_looked_up_once_per_sampler(fake, monkeypatch):
    lookups = []
    by_index = fake.by_index
    monkeypatch.setattr(
        sys.modules["pynvml"], "nvmlDeviceGetHandleByIndex", lambda i: lookups.append(i) or by_index(i)
    )
    with GpuSampler([0, 3], interval=0.02):
        time.sleep(0.15)
    assert lookups == [0, 3]


def test_nvml_error_mid_run_stops_and_keeps_what_was_sampled(fake):
    fake.fail_util_after = {0: 3}  # GPU 0's 4th utilisation read fails: 3 whole samples
    s = GpuSampler([1, 0], interval=0.02)
    s.start()
    deadline = time.monotonic() + 5
    while len(fake.util_seen[0]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the failing read, then several intervals in which nothing is read
    calls = fake.calls
    time.sleep(0.1)
    assert fake.calls == calls  # the thread ended
    got = s.stop()
    assert fake.calls == calls  # and stop did not read again
    # GPU 1 was read in the failing sample before GPU 0 failed: that sample is dropped
    assert len(fake.util_seen[1]) == 4
    assert_attrs(got, expected(fake, [1, 0], samples=3))


def test_error_on_the_first_sample_gives_nothing(fake):
    fake.fail_util_after = {0: 0}
    with GpuSampler([0], interval=0.01) as s:
        time.sleep(0.05)
    assert s.attributes == {}


def test_nvml_initialised_once_across_threads(fake):
    results = []

    def use():
        results.append(memory_used([0, 1]))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.inits == 1
    assert results == [[GIB, 2 * GIB]] * 8


# --- CUDA_VISIBLE_DEVICES -------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "visible", "want"),
    [
        (0, None, 0),
        (3, None, 3),
        (-1, None, None),
        (0, "2,3", 2),
        (1, "2, 3", 3),
        (2, "2,3", None),
        (0, "GPU-aaaa,GPU-bbbb", "GPU-aaaa"),
        (1, "GPU-aaaa,GPU-bbbb", "GPU-bbbb"),
        (0, "MIG-1234", None),
        (1, "GPU-aaaa,MIG-1234", None),
        (0, "", None),
        (0, "-1", None),
        (0, "1,foo,2", 1),
        (1, "1,foo,2", None),  # CUDA ignores everything from the first invalid entry on
    ],
)
def test_nvml_device_mapping(gpu, visible, want):
    assert nvml_device(gpu, visible) == want


def test_sampler_follows_cuda_visible_devices_indices(fake, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with GpuSampler([1, 0], interval=10.0) as s:
        pass
    assert fake.util_seen[0] == [] and fake.util_seen[1] == []
    assert s.attributes[ATTR_GPU_MEMORY_USAGE] == [4 * GIB, 3 * GIB]
    assert memory_used([0]) == [3 * GIB]


def test_sampler_follows_cuda_visible_devices_uuids(fake, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fake-3,GPU-fake-1")
    with GpuSampler([0, 1], interval=10.0) as s:
        pass
    assert_attrs(s.attributes, expected(fake, [3, 1]))
    assert memory_used([1]) == [2 * GIB]


@pytest.mark.parametrize("visible", ["GPU-fake-0,MIG-abcd", "0,9", "GPU-unknown,GPU-fake-1"])
def test_unreadable_gpu_makes_attributes_absent_not_misaligned(fake, monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with GpuSampler([0, 1], interval=0.01) as s:
        time.sleep(0.03)
    assert s.attributes == {}
    assert fake.calls == 0
    assert memory_used([0, 1]) is None


# --- waiting for memory to come back --------------------------------------------------


def test_wait_memory_freed_true_when_memory_drops(fake):
    baseline = memory_used([0, 1])
    assert baseline == [GIB, 2 * GIB]
    fake.used[0] = 30 * GIB  # a model host holds memory
    fake.used[1] = 40 * GIB

    def host_ends():
        fake.used[0] = GIB + 100 * gpustats.MIB  # within the slack
        fake.used[1] = 2 * GIB - 5 * gpustats.MIB  # below the baseline

    timer = threading.Timer(0.2, host_ends)
    timer.start()
    t0 = time.monotonic()
    try:
        assert wait_memory_freed([0, 1], baseline, timeout=5.0, interval=0.02) is True
    finally:
        timer.cancel()
    assert 0.15 <= time.monotonic() - t0 < 2.0


def test_wait_memory_freed_at_once_when_already_back(fake):
    t0 = time.monotonic()
    assert wait_memory_freed([2], [3 * GIB], timeout=5.0) is True
    assert time.monotonic() - t0 < 0.5


def test_wait_memory_freed_false_on_timeout(fake):
    baseline = memory_used([0])
    fake.used[0] = baseline[0] + 257 * gpustats.MIB  # just over the default slack
    t0 = time.monotonic()
    assert wait_memory_freed([0], baseline, timeout=0.3, interval=0.05) is False
    assert 0.25 <= time.monotonic() - t0 < 1.5
    assert wait_memory_freed([0], baseline, timeout=0.1, slack=300 * gpustats.MIB) is True


def test_wait_memory_freed_rejects_a_mismatched_baseline(fake):
    with pytest.raises(ValueError, match="1 values for 2 GPUs"):
        wait_memory_freed([0, 1], [0])
