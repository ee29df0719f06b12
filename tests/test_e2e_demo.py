"""The main command end to end on the real data: pretrain (tiny) -> probe -> classify the NAIP scene."""

import csv
import json
from math import comb
from pathlib import Path

import pytest
import rasterio

from geossl.cli import main
from geossl.demo import map_classifier

TINY = ["model.extra={depth: 2, embed_dim: 96, num_heads: 3}", "data.limit=256", "data.batch_size=32",
        "optim.epochs=2", "augment.n_local=2", "head.out_dim=256", "head.hidden_dim=128", "head.bottleneck_dim=64",
        "eval.knn_max_train=100", "eval.knn_max_val=50", "data.num_workers=0", "trainer.log_every_steps=4"]


def small_splits(root: Path, out: Path, per_class: dict[str, int]) -> Path:
    """The first N rows per (class, split) of EuroSAT's own splits.csv: a small, fixed, stratified subset."""
    taken: dict[tuple[str, str], int] = {}
    rows = []
    with open(root / "eurosat-rgb" / "splits.csv") as fh:
        for row in csv.DictReader(fh):
            key = (row["label"], row["split"])
            if taken.get(key, 0) < per_class[row["split"]]:
                taken[key] = taken.get(key, 0) + 1
                rows.append({"path": str(root / "eurosat-rgb" / row["path"]), "label": row["label"], "split": row["split"]})
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def p_value_at_least(correct: int, n: int, chance: float) -> float:
    """Probability of >= correct successes out of n by guessing (binomial tail)."""
    return sum(comb(n, k) * chance**k * (1 - chance) ** (n - k) for k in range(correct, n + 1))


@pytest.mark.slow
def test_demo_pretrain_probe_classify(shared_data, tmp_path, capsys):
    splits = small_splits(shared_data, tmp_path / "splits.csv", {"train": 20, "val": 5, "test": 10})
    run = tmp_path / "demo"
    rc = main(["demo", "--run-dir", str(run), "--data", str(shared_data), "--splits", str(splits),
               "--labels-per-class", "5,all", "--seeds", "1", "--finetune-epochs", "2", *TINY])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    err = capsys.readouterr().err
    # the one-line summary shows the encoder beside both baselines and states the gain over the best one
    (line,) = [ln for ln in err.splitlines() if ln.startswith("geossl demo: pretrained")]
    assert "encoder" in line and "band statistics" in line and "random init" in line and "vs best baseline" in line
    assert "fine-tuned end to end" in line
    tuned = json.loads((run / "finetune/metrics.json").read_text())
    assert summary["finetuned_top1"] == tuned["top1"] and tuned["test_count"] == 100
    assert (run / "finetune/model/head.json").is_file()

    # pretraining wrote its artefacts
    for name in ("encoder/model.safetensors", "encoder/geossl.json", "curves.png", "checkpoints/last.ckpt",
                 "logs/csv/metrics.csv", "summary.json"):
        assert (run / "pretrain" / name).exists(), name
    # the probe beats chance (10 classes, 100 test patches) by a margin that luck cannot explain
    metrics = json.loads((run / "probe/metrics.json").read_text())
    n_test = metrics["counts"]["test"]["total"]
    assert n_test == 100
    correct = round(metrics["linear_top1"] * n_test)
    assert p_value_at_least(correct, n_test, 0.1) < 1e-6, f"linear top-1 {metrics['linear_top1']}"
    assert set(summary["top1"]) == {"encoder", "band-statistics", "random-init"}
    assert summary["top1"]["encoder"]["linear"] == metrics["linear_top1"]
    for name in ("band-statistics", "random-init"):
        assert summary["top1"][name]["linear"] == metrics["baselines"][name]["linear_top1"]
    best = max(metrics["baselines"].values(), key=lambda b: b["linear_top1"])["linear_top1"]
    assert summary["gain_over_best_baseline"]["linear_points"] == round(100 * (metrics["linear_top1"] - best), 2)
    eff = json.loads((run / "probe/label_efficiency.json").read_text())
    assert set(eff["curves"]) == {"pretrained", "random-init", "band-statistics"}
    assert (run / "probe/label_efficiency.png").exists()

    # the NAIP scene was classified into a map in the scene's CRS
    with rasterio.open(summary["scene_map"]) as dst, rasterio.open(shared_data / "scenes/naip_5m_north_dakota_2019.tif") as src:
        assert dst.crs == src.crs and dst.count == 1 and dst.dtypes[0] == "uint8"
        assert src.bounds.left <= dst.bounds.left and dst.bounds.right <= src.bounds.right + 1e-6
    assert Path(summary["scene_preview"]).exists()
    # the map's classifier is the one that did better on val: the fine-tuned model or the frozen linear head
    tuned = json.loads((run / "finetune/metrics.json").read_text())
    tuned_wins = tuned["chosen"]["val_top1"] >= metrics["linear_val_top1"]
    assert summary["map_classifier"].startswith("fine-tuned model" if tuned_wins else "frozen linear head")

    # running it again reuses every finished step instead of overwriting
    before = (run / "pretrain/encoder/model.safetensors").read_bytes()
    assert main(["demo", "--run-dir", str(run), "--data", str(shared_data), "--splits", str(splits),
                 "--labels-per-class", "5,all", "--seeds", "1", "--finetune-epochs", "2", *TINY]) == 0
    assert (run / "pretrain/encoder/model.safetensors").read_bytes() == before


def test_the_map_uses_the_classifier_that_is_better_on_val(tmp_path: Path) -> None:
    probe = {"linear_val_top1": 0.859, "model_dir": str(tmp_path / "probe/model")}
    tuned = {"chosen": {"val_top1": 0.844}, "model_dir": str(tmp_path / "finetune/model")}
    path, name = map_classifier(probe, tuned)
    assert path == tmp_path / "probe/model" and name == "frozen linear head (val 85.9% vs fine-tuned 84.4%)"
    tuned["chosen"]["val_top1"] = 0.9
    path, name = map_classifier(probe, tuned)
    assert path == tmp_path / "finetune/model" and name.startswith("fine-tuned model (val 90.0%")

