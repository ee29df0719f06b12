"""``geossl probe`` end to end: outputs exist and parse; real EuroSAT RGB and 13-band MS subsets beat chance."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from encoder_helpers import RGB_MEAN, RGB_STD, make_encoder, make_patches

from geossl.cli import main
from geossl.data.patches import PatchDataset
from geossl.models.landcover import load_landcover_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = {"linear_top1", "knn_top1", "linear_val_top1", "macro_f1", "feature_recipe", "encoder", "encoder_kind",
               "counts", "linear", "knn", "model_dir", "wall_seconds", "classes", "cache", "baselines",
               "gain_over_best_baseline"}


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def check_outputs(out: Path, classes: list[str]) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    n_test = metrics["counts"]["test"]["total"]
    assert set(metrics["linear"]["per_class"]) == set(classes)
    assert {"precision", "recall", "f1", "support"} <= metrics["linear"]["per_class"][classes[0]].keys()
    assert sum(v["support"] for v in metrics["linear"]["per_class"].values()) == n_test
    assert "weight_decay" in metrics["linear"]["chosen"] and len(metrics["linear"]["sweep"]) >= 1
    cm = pd.read_csv(out / "confusion.csv", index_col=0)
    assert list(cm.index) == classes and list(cm.columns) == classes
    assert int(cm.to_numpy().sum()) == n_test
    assert np.trace(cm.to_numpy()) == round(metrics["linear_top1"] * n_test)
    assert is_png(out / "confusion.png")
    assert (out / "model" / "head.json").is_file() and (out / "splits.csv").is_file()
    return metrics


def test_probe_cli_outputs_label_efficiency_and_random_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_patches(tmp_path / "data", n_per_class=10)
    enc = make_encoder(tmp_path / "enc", img_size=16, embed_dim=48, seed=3)
    common = ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--device", "cpu",
              "--weight-decays", "1e-2,1e-4"]
    rc = main(["probe", "--encoder", str(enc), "--out", str(tmp_path / "out"), *common,
               "--labels-per-class", "1,3,all", "--seeds", "2"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("probe (pretrained, cls_last4): linear top-1") and "k-NN top-1" in line
    classes = sorted(["Forest", "SeaLake", "Industrial"])
    metrics = check_outputs(tmp_path / "out", classes)
    assert metrics["counts"]["train"]["total"] == 21 and metrics["counts"]["test"]["total"] == 6
    assert metrics["linear_top1"] == 1.0  # colours separate the classes
    assert metrics["cache"]["hit"] is False

    eff = json.loads((tmp_path / "out" / "label_efficiency.json").read_text())
    assert eff["budgets"] == [1, 3, "all"] and set(eff["curves"]) == {"pretrained", "random-init", "band-statistics"}
    for curve in eff["curves"].values():
        assert [len(r) for r in curve["linear"]["runs"]] == [2, 2, 1]  # "all" has one subset
        assert len(curve["linear"]["mean"]) == len(curve["knn"]["std"]) == 3
    assert is_png(tmp_path / "out" / "label_efficiency.png")

    # The random-init baseline: same command, random:<dir>; its features were cached by the curve above.
    rc = main(["probe", "--encoder", f"random:{enc}", "--out", str(tmp_path / "rnd"), *common])
    assert rc == 0
    rnd = check_outputs(tmp_path / "rnd", classes)
    assert rnd["encoder_kind"] == "random-init" and rnd["cache"]["hit"] is True
    assert rnd["linear_top1"] == eff["curves"]["random-init"]["linear"]["mean"][-1]
    # Its model carries the random weights it was probed with: classify would reproduce the probe.
    model = load_landcover_model(tmp_path / "rnd" / "model")
    assert model.meta.extra["random_init"]["seed"] == 0

    # Bad input through the CLI: one line naming the file, exit 1.
    rc = main(["probe", "--encoder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), *common])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "nowhere: encoder folder not found" in err


def min_correct_beyond_chance(n: int, p: float, alpha: float = 1e-6) -> int:
    """Smallest m with P(Binomial(n, p) >= m) <= alpha: more correct answers than luck gives."""
    tail = 1.0
    for m in range(n + 1):
        if tail <= alpha:
            return m
        tail -= math.comb(n, m) * p**m * (1 - p) ** (n - m)
    return n + 1


def small_splits(rows: list[tuple[str, str, str | None]], out: Path, per: dict[str, int], seed: int = 0) -> Path:
    """A splits CSV with ``per[split]`` images of each class (from the given split when rows have one)."""
    by: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path, label, split in rows:
        by[(label, split or "")].append(path)
    rng = np.random.default_rng(seed)
    out_rows = []
    for label in sorted({lab for _, lab, _ in rows}):
        if all(s for _, _, s in rows):  # a given split: draw each split's rows from it
            for split, n in per.items():
                out_rows += [(p, label, split) for p in rng.permutation(by[(label, split)])[:n]]
        else:
            pool = rng.permutation(by[(label, "")])
            start = 0
            for split, n in per.items():
                out_rows += [(p, label, split) for p in pool[start : start + n]]
                start += n
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *out_rows])
    return out


def probe_real(tmp_path: Path, data: Path, enc: Path, splits: Path) -> dict:
    rc = main(["probe", "--encoder", str(enc), "--data", str(data), "--splits", str(splits), "--out",
               str(tmp_path / "out"), "--workers", "0", "--device", "cpu", "--weight-decays", "1e-1,1e-2,1e-3"])
    assert rc == 0
    metrics = check_outputs(tmp_path / "out", metrics_classes(data))
    n = metrics["counts"]["test"]["total"]
    m = min_correct_beyond_chance(n, 0.1)
    print(f"{data.name}: linear {metrics['linear_top1']:.3f} knn {metrics['knn_top1']:.3f} "
          f"(chance 0.1, n={n}, >= {m / n:.2f} needed)")
    assert metrics["linear_top1"] * n >= m
    assert metrics["knn_top1"] * n >= m
    return metrics


def metrics_classes(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))


PER = {"train": 20, "val": 10, "test": 10}


@pytest.mark.slow
def test_probe_real_eurosat_rgb(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data / "eurosat-rgb"
    with open(data / "splits.csv", newline="") as fh:
        rows = [(r["path"], r["label"], r["split"]) for r in csv.DictReader(fh)]
    enc = make_encoder(tmp_path / "enc", mean=RGB_MEAN, std=RGB_STD, img_size=64, seed=7)
    metrics = probe_real(tmp_path, data, enc, small_splits(rows, tmp_path / "splits.csv", PER))
    assert metrics["counts"]["test"]["total"] == 100 and metrics["feature_dim"] == 4 * 192
    # real colour statistics of real patches are far above chance too: the bar every encoder must clear
    assert metrics["baselines"]["band-statistics"]["linear_top1"] * 100 >= min_correct_beyond_chance(100, 0.1)
    # The saved model reproduces the probe on raw pixels.
    model = load_landcover_model(tmp_path / "out" / "model")
    ds = PatchDataset(tmp_path / "out" / "splits.csv", split="test", classes=model.classes)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.inference_mode():
        acc = float((model(x).argmax(1).numpy() == ds.labels).mean())
    assert acc == pytest.approx(metrics["linear_top1"], abs=1e-6)


@pytest.mark.slow
def test_probe_real_eurosat_ms_13_bands(tmp_path: Path, shared_data: Path) -> None:
    data = shared_data / "eurosat-ms"
    with open(data / "labels.csv", newline="") as fh:
        rows = [(r["path"], r["label"], None) for r in csv.DictReader(fh)]
    splits = small_splits(rows, tmp_path / "splits.csv", PER)
    sample = PatchDataset(data, limit=50)  # per-band statistics of the raw reflectances for the encoder
    x = torch.stack([sample[i]["image"] for i in range(len(sample))]).double()
    mean, std = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
    enc = make_encoder(tmp_path / "enc", in_chans=13, mean=mean, std=std, img_size=64, seed=7)
    metrics = probe_real(tmp_path, data, enc, splits)
    assert metrics["counts"]["test"]["total"] == 100
    assert load_landcover_model(tmp_path / "out" / "model").meta.in_chans == 13
    assert metrics["baselines"]["band-statistics"]["feature_dim"] == 7 * 13


def test_bench_quality_reuse_prints_json_last(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", Path(__file__).resolve().parents[2] / "bench" / "quality.py")
    assert spec and spec.loader
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    data = make_patches(tmp_path / "data", n_per_class=10)
    run = tmp_path / "run"
    enc = make_encoder(run / "encoder", img_size=16, embed_dim=48, seed=5)
    (run / "summary.json").write_text(json.dumps({"status": "finished", "steps": 12, "epochs": 3.0,
                                                  "wall_time_s": 4.5, "encoder_dir": str(enc), "knn_top1": 0.5}))
    assert quality.main(["--config", "configs/demo.yaml", "--run-dir", str(run), "--data", str(data),
                         "--device", "cpu", "--workers", "0", "--reuse"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epochs"] == 3.0 and result["pretrain_wall_s"] == 4.5 and result["machine"].startswith(("CPU", "GPU"))
    assert set(result["baselines"]) == {"band-statistics", "random-init"}
    for row in (result["encoder"], *result["baselines"].values()):
        assert 0.0 <= row["linear_top1"] <= 1.0 and 0.0 <= row["knn_top1"] <= 1.0
    assert result["encoder"]["linear_top1"] == 1.0  # colour-coded classes
    assert result["gain_over_best_baseline"]["linear_points"] == pytest.approx(
        100 * (1.0 - max(b["linear_top1"] for b in result["baselines"].values())))
    assert (run / "probe" / "metrics.json").is_file() and (run / "probe" / "model").is_dir()
    with pytest.raises(SystemExit, match="summary.json not found"):
        quality.main(["--config", "c.yaml", "--run-dir", str(tmp_path / "empty"), "--reuse"])


def test_knn_on_the_probe_features_matches_a_brute_force_vote(tmp_path: Path) -> None:
    """``knn_features_top1``: DINO's weighted vote (k=20, T=0.07, cosine) on the whole feature vector the linear
    head sees, checked against a loop written here on the cached features; ``knn_top1`` stays on the final CLS."""
    data = make_patches(tmp_path / "data", n_per_class=12)
    enc = make_encoder(tmp_path / "enc", img_size=16, embed_dim=48, seed=5)
    rc = main(["probe", "--encoder", str(enc), "--data", str(data), "--cache-dir", str(tmp_path / "cache"),
               "--out", str(tmp_path / "out"), "--workers", "0", "--device", "cpu", "--weight-decays", "1e-2"])
    assert rc == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    split_rows = pd.read_csv(tmp_path / "out" / "splits.csv")
    feats = safetensors.torch.load_file(metrics["cache"]["path"])["features"].double()
    classes = sorted(split_rows["label"].unique())
    labels = np.array([classes.index(c) for c in split_rows["label"]])
    train, test = np.flatnonzero(split_rows["split"] == "train"), np.flatnonzero(split_rows["split"] == "test")

    def vote(x: torch.Tensor) -> float:
        x = x / x.norm(dim=1, keepdim=True)
        right = 0
        for q in test:
            sims = [(float(x[q] @ x[t]), t) for t in train]
            top = sorted(sims, reverse=True)[:20]
            scores = np.zeros(len(classes))
            for s, t in top:
                scores[labels[t]] += np.exp(s / 0.07)
            right += int(scores.argmax() == labels[q])
        return right / len(test)

    assert feats.shape[1] == metrics["feature_dim"] > 48
    assert metrics["knn_features_top1"] == pytest.approx(vote(feats))
    assert metrics["knn_top1"] == pytest.approx(vote(feats[:, -48:]))
    assert metrics["baselines"]["band-statistics"]["knn_features_top1"] == metrics["baselines"]["band-statistics"]["knn_top1"]
