"""bench/learning_curve.py end to end on real EuroSAT patches with a tiny ViT: snapshots, probes, PNG, JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_e2e_demo import TINY, small_splits

REPO = Path(__file__).resolve().parents[2]


def load_bench(name: str):  # noqa: ANN201 - a module
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sized_overrides_fit_the_image_budget() -> None:
    trials = load_bench("trials")
    for images, batch in ((30_000, 64), (100_000, 64), (500, 32)):
        limit, epochs = (int(o.split("=")[1]) for o in trials.sized_overrides(images, batch))
        assert epochs >= 2 and limit <= trials.TRAIN_IMAGES
        if images > 4 * batch * epochs:  # not clipped by the minimum subset size
            assert abs(limit * epochs - images) <= epochs


def test_the_last_mark_is_probed_first_then_the_rest_in_order() -> None:
    curve = load_bench("learning_curve")
    snaps = [{"mark": m} for m in (30.0, 120.0, 10.0, 60.0)]
    assert [s["mark"] for s in curve.probe_order(snaps)] == [120.0, 10.0, 30.0, 60.0]
    assert curve.probe_order([]) == [] and curve.probe_order([{"mark": 5.0}]) == [{"mark": 5.0}]


@pytest.mark.slow
def test_learning_curve_snapshots_and_probes(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    curve = load_bench("learning_curve")
    splits = small_splits(shared_data, tmp_path / "splits.csv", {"train": 10, "val": 3, "test": 5})
    run = tmp_path / "curve"
    tiny = [o for o in TINY if not o.startswith(("data.limit", "optim.epochs"))]
    assert curve.main(["--minutes", "0.03,0.06", "--run-dir", str(run), "--splits", str(splits), "--workers", "0",
                       *tiny]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "learning_curve" and result["test_count"] == 50
    assert [p["mark"] for p in result["points"]] == [0.03, 0.06]
    steps = [p["step"] for p in result["points"]]
    assert 0 < steps[0] < steps[1]  # the second snapshot trained longer than the first
    for point in result["points"]:
        assert point["minutes"] >= point["mark"] - 1e-9  # taken once the mark had passed
        assert 0.0 <= point["linear_top1"] <= 1.0 and (Path(point["encoder"]) / "model.safetensors").is_file()
    assert set(result["baselines"]) == {"band-statistics", "random-init"}
    png = run / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads((run / "learning_curve.json").read_text())["points"] == result["points"]
    # the same command again trains and probes nothing more: the snapshots and probes on disk are reused
    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    assert curve.main(["--minutes", "0.03,0.06", "--run-dir", str(run), "--splits", str(splits), "--workers", "0",
                       *tiny]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["points"] == result["points"] and again["complete"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")} == mtimes
    # other marks into the same folder are refused rather than mixed into this curve
    with pytest.raises(SystemExit, match="planned with other marks"):
        curve.main(["--minutes", "0.03,0.09", "--run-dir", str(run), "--splits", str(splits), *tiny])
