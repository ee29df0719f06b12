"""bench/classify_memory.py --quick runs end to end and reports its figures as the last JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # long (subprocesses, real data): in make test, not make check

REPO = Path(__file__).resolve().parents[2]


def test_classify_memory_bench_quick() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "classify_memory.py"), "--quick"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "classify_memory" and result["scene_px"] == [2048, 2048]
    assert result["windows"] == 16 * 16 and result["map_size"] == [16, 16]
    assert result["windows_per_s"] > 0 and result["peak_rss_mb"] >= result["baseline_rss_mb"] > 0
    assert result["ok"] and result["peak_rss_mb"] < result["goal_peak_mb"]
