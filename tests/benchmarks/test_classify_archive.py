"""bench/classify_archive.py --quick: an archive of real scene copies (some corrupt, two folders with the same
file names) mapped as a user maps it; the rerun does no work, a run killed mid-way and resumed ends with the
very bytes of the uninterrupted run, 2 workers make the maps 1 makes, and the figures end as one JSON line.
Speed ratios are figures, not assertions (they depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about a minute (many subprocesses, real data): in make test, not make check

REPO = Path(__file__).resolve().parents[2]


def test_classify_archive_bench_quick() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "classify_archive.py"), "--quick"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["bench"] == "classify_archive" and (r["good"], r["bad"]) == (10, 3)  # 2 truncated + 1 text file
    assert r["manifest"] == {"done": 10, "failed": 3} and r["pipeline"]["rc"] == 1  # failures counted, exit 1
    assert r["rerun"]["no_work"] and "0 done, 10 skipped as current, 3 failed" in r["rerun"]["summary"]
    assert r["kill"]["maps"] == 10 and r["kill"]["byte_identical"] and r["kill"]["temporary_files_left"] == []
    assert r["workers"]["same_maps"]
    assert r["windows"] > 0 and r["forward_windows_per_s"] > 0 and r["memory"]["one_scene_rc"] == 0
