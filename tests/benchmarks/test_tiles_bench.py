"""bench/tiles.py --quick runs end to end on the real scenes and ends with one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_tiles_quick(shared_data: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "tiles.py"), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["bench"] == "tiles" and summary["quick"] is True
    sizes = {(r["scene"], r["tile_size"]) for r in summary["results"]}
    assert ("naip_5m_north_dakota_2019.tif", 224) in sizes and len(sizes) == 5
    assert all(r["geossl_tiles_per_s"] > 0 and r["torchgeo_tiles_per_s"] > 0 for r in summary["results"])
    assert summary["skipped"] == [{"scene": "s2_like_10m_netherlands_cog.tif", "tile_size": 224,
                                   "why": "scene is 343x206 px"}]
    assert any("tiles/s" in line for line in lines[:-1])


@pytest.mark.slow
def test_bench_tiles_many_scenes(shared_data: Path, tmp_path: Path) -> None:
    """The many-scenes mode: 80 scene files; the LRU pool's open files stay at its bound, the index is reused."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "tiles.py"), "--many", "80", "--many-tiles", "100",
                           "--many-chips", "200"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "tiles-many-scenes" and summary["scenes"] == 80
    assert summary["random_unbounded"]["peak_open_files"] >= 70  # one handle per scene drawn
    assert summary["random_lru"]["peak_open_files"] <= 64 + 8 and summary["goals"]["open_files_bounded"]
    assert summary["shards"]["local_tiles_per_s"] > 0 and summary["shards"]["s3_tiles_per_s"] > 0
    assert summary["startup"]["reuse_index_s"] < summary["startup"]["build_index_s"]
