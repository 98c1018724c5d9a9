"""The chaos harness (tests/support/chaos.py), short form: the real engine as processes,
SIGKILLed at random (workers and the coordinator), then every invariant checked.

The long form runs by hand:
    python tests/support/chaos.py --tasks 2000 --kills 20 --faults all
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.chaos import ChaosResult, ChaosSetupError, fuse_unavailable, run_chaos

TASKS = 300
KILLS = 6
#: the run counts as hung after this long (each run takes ~10-30 s on a 2-core VM)
HANG_AFTER = 75.0
WALL_LIMIT = 90.0


def _verdict(result: ChaosResult) -> str:
    lines = [result.summary_line(), *(f"  {v}" for v in result.violations)]
    return "\n".join(lines)


def _check(result: ChaosResult) -> None:
    assert result.ok, _verdict(result)
    assert result.worker_kills >= 1 and result.coordinator_kills >= 1, _verdict(result)
    assert result.kills >= 5, _verdict(result)
    assert result.elapsed < WALL_LIMIT, _verdict(result)
    assert [w.state for w in result.workflows] == [w.expected for w in result.workflows], _verdict(result)
    assert result.executions >= TASKS - 10, _verdict(result)  # every task that can run, ran


@pytest.mark.slow
def test_chaos_local_disk(tmp_path):
    result = run_chaos(tmp_path, tasks=TASKS, kills=KILLS, faults="none", seed=8, timeout=HANG_AFTER)
    _check(result)


@pytest.mark.slow
@pytest.mark.fuse
def test_chaos_two_clients_with_faults(tmp_path):
    reason = fuse_unavailable()
    if reason:
        pytest.skip(f"FUSE tests skipped: {reason}")
    try:
        result = run_chaos(tmp_path, tasks=TASKS, kills=KILLS, faults="all", seed=7, timeout=HANG_AFTER)
    except ChaosSetupError as e:
        pytest.skip(f"FUSE tests skipped: {e}")
    _check(result)
