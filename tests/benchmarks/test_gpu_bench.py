"""The GPU benchmarks run end to end on CPU (--quick) and keep their JSON contract, so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(shared_data: Path) -> dict[str, dict[str, Any]]:
    """Both benchmarks, started together (each is mostly import time), parsed from their last stdout line."""
    env = {**os.environ, "GEOSSL_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen([sys.executable, str(REPO / "bench" / f"{name}.py"), "--quick"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("gpu_step", "gpu_e2e")
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.slow
@pytest.mark.slow  # the shared fixture runs the whole quick bench (~11 s): in make test, not the fast lane
def test_gpu_step_quick_reports_a_real_step(results: dict[str, dict[str, Any]]) -> None:
    data = results["gpu_step"]
    assert data["bench"] == "gpu_step" and data["device"] == "cpu"
    (row,) = data["results"]
    assert row["status"] == "ok" and row["config"] == "tiny" and row["batch_size"] == 4 and row["compile"] == 0
    for key in ("img_per_s", "step_ms", "aug_ms", "flops_per_step", "tflops"):
        assert row[key] > 0, key
    assert abs(row["img_per_s"] * row["step_ms"] / 1000 - row["batch_size"]) < 1e-6 * row["batch_size"]
    # The FLOP counter and the analytic ViT formula are independent: they must agree.
    assert abs(row["flops_per_step"] / row["analytic_flops_per_step"] - 1) < 0.1
    assert row["flops_method"] == "FlopCounterMode"
    assert row["mfu"] is None and row["peak_mem_gib"] is None  # no peak figure or CUDA memory on CPU
    assert row["recompiles"] == 0


@pytest.mark.slow
def test_gpu_e2e_quick_reads_real_data_through_the_loader(results: dict[str, dict[str, Any]]) -> None:
    data = results["gpu_e2e"]
    assert data["bench"] == "gpu_e2e"
    rows = {r["source"]: r for r in data["results"]}
    assert set(rows) == {"eurosat", "scenes"}
    assert rows["eurosat"]["bands"] == 3 and rows["scenes"]["bands"] == 4  # EuroSAT RGB vs NAIP RGBN
    for row in rows.values():
        assert row["status"] == "ok" and row["dtype"] == "uint8" and row["workers"] == 2
        for key in ("loader_img_per_s", "step_img_per_s", "e2e_img_per_s", "fraction_of_step"):
            assert row[key] > 0, key
        assert row["fraction_of_step"] == pytest.approx(row["e2e_img_per_s"] / row["step_img_per_s"])
