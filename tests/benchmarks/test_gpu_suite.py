"""bench/gpu_suite.sh runs every stage in its CPU dry mode on real EuroSAT data, so it cannot rot before a
GPU window; bench/prepare_gpu_carry.py builds the carried subset within its byte budget."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # long (subprocesses, real data): in make test, not make check

REPO = Path(__file__).resolve().parents[2]
OUT_FILES = {"env.json", "gpu_step.json", "quality.json", "summary.json", "logs.tar.gz"}
STAGES = ["env", "step_vits16_eager", "step_vits16_compiled", "step_vits8_eager", "size", "pretrain", "probe", "finetune"]


def prepare(shared_data: Path, out: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "prepare_gpu_carry.py"), "--out", str(out),
                           "--source", str(shared_data / "eurosat-rgb"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def split_counts(folder: Path) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    with open(folder / "splits.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            assert (folder / row["path"]).is_file(), row["path"]
            assert row["path"].split("/")[0] == row["label"]  # class folders kept
            counts.setdefault(row["split"], Counter())[row["label"]] += 1
    return counts


def run_suite(out: Path, data: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "GEOSSL_DATA": str(data), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("GEOSSL_SUITE_DRY", None)
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def carry(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("carry")
    prepare(shared_data, out, "--train", "300", "--val", "100", "--test", "200")
    return out


@pytest.fixture(scope="module")
def dry(carry: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("out")
    proc = run_suite(out, carry, "--dry")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def read(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / name).read_text())


def test_prepare_copies_balanced_splits(carry: Path) -> None:
    counts = split_counts(carry / "eurosat-rgb")
    assert {s: sum(c.values()) for s, c in counts.items()} == {"train": 300, "val": 100, "test": 200}
    for c in counts.values():
        assert len(c) == 10 and max(c.values()) - min(c.values()) <= 1  # class-balanced


def test_prepare_fills_train_up_to_the_byte_budget(shared_data: Path, tmp_path: Path) -> None:
    report = prepare(shared_data, tmp_path, "--max-mb", "1.0", "--val", "50", "--test", "100")
    files = sum(p.stat().st_size for p in (tmp_path / "eurosat-rgb").rglob("*") if p.is_file())
    assert report["data_bytes"] == files <= 1_000_000
    assert files > 950_000  # filled, not just capped: one more JPEG (~3.4 KB) would not fit
    counts = split_counts(tmp_path / "eurosat-rgb")
    assert sum(counts["test"].values()) == 100 and sum(counts["val"].values()) == 50
    assert report["counts"]["train"] == sum(counts["train"].values()) > 100


def test_dry_out_holds_what_the_device_tool_returns(dry: tuple[Path, dict[str, Any]]) -> None:
    out, _ = dry
    assert {p.name for p in out.iterdir()} == OUT_FILES  # at most 8 files come back, no folder needed
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    for stage in STAGES:
        assert f"logs/{stage}.out" in names and f"logs/{stage}.log" in names
    assert {"logs/stages.jsonl", "logs/artifacts/probe_metrics.json", "logs/artifacts/run_summary.json"} <= names


def test_dry_env_report(dry: tuple[Path, dict[str, Any]]) -> None:
    env = read(dry[0], "env.json")
    for key in ("python", "torch", "timm", "lightning", "cuda", "gpu", "cpu_count"):
        assert key in env
    assert env["torch"] and env["timm"] and env["lightning"]
    assert {"rasterio", "torchgeo", "kornia", "geopandas", "pyproj", "shapely", "PIL"} <= set(env["imports"])
    assert env["imports"]["PIL"] is not None  # imported for real, version reported
    assert env["cuda"] is False and env["gpu"] is None


def test_dry_step_parts(dry: tuple[Path, dict[str, Any]]) -> None:
    step = read(dry[0], "gpu_step.json")
    assert step["bench"] == "gpu_step" and step["device"] == "cpu"
    assert set(step["parts"]) == {"step_vits16_eager", "step_vits16_compiled", "step_vits8_eager"}
    assert all(p["status"] == "ok" and p["rc"] == 0 for p in step["parts"].values())
    assert len(step["results"]) == 3
    for row in step["results"]:
        assert row["status"] == "ok" and row["img_per_s"] > 0 and row["config"] == "tiny"


def test_dry_quality_run(dry: tuple[Path, dict[str, Any]], carry: Path) -> None:
    q = read(dry[0], "quality.json")
    assert q["mode"] == "dry" and q["data"] == str(carry) and q["machine"].startswith("CPU")
    assert q["stages"] == {"size": "ok", "pretrain": "ok", "probe": "ok", "finetune": "ok"}
    assert q["finetune"]["test_count"] == 100 and 0.0 <= q["finetune"]["top1"] <= 1.0 and q["finetune"]["steps"] > 0
    assert q["sizing"]["n_train"] == 300  # the carried train split, read through GEOSSL_DATA
    assert q["sizing"]["measured_img_per_s"] > 0 and q["sizing"]["epochs"] >= 2
    assert q["pretrain_status"] == "finished" and q["steps"] == q["planned_steps"] > 0 and q["schedule_completed"]
    assert isinstance(q["pretrain_wall_s"], int) and q["pretrain_wall_s_reported"] > 0  # both recorded
    assert q["counts"] == {"train": 100, "val": 100, "test": 100}  # dry splits: 10 per class and split
    assert q["test_count"] == 100
    assert {"band-statistics", "random-init"} <= set(q["baselines"])
    for pair in (q["encoder"], *q["baselines"].values()):
        assert 0.0 <= pair["linear_top1"] <= 1.0 and 0.0 <= pair["knn_top1"] <= 1.0


def test_dry_summary_is_the_last_stdout_line(dry: tuple[Path, dict[str, Any]]) -> None:
    out, last = dry
    assert last == read(out, "summary.json")
    assert last["suite"] == "gpu_suite" and last["mode"] == "dry" and last["ok"] is True
    assert list(last["stages"]) == STAGES and all(s["status"] == "ok" for s in last["stages"].values())
    assert last["quality"]["encoder"] == read(out, "quality.json")["encoder"]


def test_gpu_mode_stops_after_the_env_report_without_a_gpu(carry: Path, tmp_path: Path) -> None:
    proc = run_suite(tmp_path, carry)
    assert proc.returncode == 3, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["mode"] == "gpu" and last["ok"] is False and list(last["stages"]) == ["env"]
    assert read(tmp_path, "env.json")["cuda"] is False
