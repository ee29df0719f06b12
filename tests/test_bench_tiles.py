"""bench/tiles.py --quick runs end to end on the real scenes and ends with one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
