"""The analyzer benchmark still runs (tiny sizes: the real figures are in docs/analyzer.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "analyzer_bench.py"


@pytest.mark.slow
def test_benchmark_runs_and_reports_both_measurements(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--json",
            "--spans",
            "3000",
            "--tasks",
            "60",
            "--dir",
            str(tmp_path / "wf"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["generated"]["spans"] == 3000
    assert result["generated"]["tasks"] == 60
    assert result["analysis"]["spans_read"] == 3000
    assert result["analysis"]["lines_skipped"] == 0
    assert result["baseline"]["spans_read"] == 3000
    assert result["analysis"]["peak_rss_bytes"] > 0
    assert result["targets"]["met"] is True
