"""The band-statistics baseline: its numbers against numpy's, and its place beside every probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_helpers import make_encoder, make_patches

from geossl.cli import main
from geossl.probe.baselines import BAND_STAT_NAMES, band_statistics, standardize
from geossl.probe.run import gain_over_baselines


def reference_statistics(image: np.ndarray) -> np.ndarray:
    """Independent formula: per band mean, population std, then numpy's (linear) percentiles."""
    per_stat = [np.nanmean(image, axis=(1, 2)), np.sqrt(np.nanvar(image, axis=(1, 2)))]
    per_stat += [np.nanpercentile(image, q, axis=(1, 2)) for q in (5, 25, 50, 75, 95)]
    return np.concatenate(per_stat)


@pytest.mark.parametrize(("bands", "dtype"), [(3, np.uint8), (13, np.uint16), (4, np.float64)])
def test_band_statistics_match_numpy(bands: int, dtype: type) -> None:
    rng = np.random.default_rng(bands)
    high = 10_000 if dtype is np.uint16 else 255
    images = (rng.random((5, bands, 17, 13)) * high).astype(dtype)
    got = band_statistics(torch.from_numpy(images)).numpy()
    assert got.shape == (5, len(BAND_STAT_NAMES) * bands) and got.dtype == np.float32
    want = np.stack([reference_statistics(img.astype(np.float64)) for img in images])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)


def test_band_statistics_ignore_non_finite_pixels() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 8, 8)) * 100
    images[0, 1, :3] = np.nan
    images[1, 2, 0, 0] = np.inf
    got = band_statistics(torch.from_numpy(images)).numpy()
    clean = np.where(np.isfinite(images), images, np.nan)
    want = np.stack([reference_statistics(img) for img in clean])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # a patch with no valid pixel gets zeros, never NaN
    empty = torch.full((1, 2, 4, 4), float("nan"))
    assert torch.equal(band_statistics(empty), torch.zeros(1, 14))


def test_standardize_uses_train_rows_only() -> None:
    x = torch.tensor([[0.0, 10.0], [2.0, 30.0], [100.0, -5.0]])
    z = standardize(x, [0, 1])
    ref_mean, ref_std = np.array([1.0, 20.0]), np.array([np.sqrt(2.0), np.sqrt(200.0)])  # sample std of 2 rows
    np.testing.assert_allclose(z.numpy(), (x.numpy() - ref_mean) / ref_std, rtol=1e-6)


def test_gain_is_measured_against_the_strongest_baseline() -> None:
    baselines = {"band-statistics": {"linear_top1": 0.736, "knn_top1": 0.55},
                 "random-init": {"linear_top1": 0.689, "knn_top1": 0.611}}
    gain = gain_over_baselines(0.80, 0.60, baselines)
    assert gain == {"linear_points": 6.4, "linear_baseline": "band-statistics",
                    "knn_points": -1.1, "knn_baseline": "random-init"}


def test_probe_reports_baselines_beside_the_encoder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_patches(tmp_path / "data", n_per_class=10)
    enc = make_encoder(tmp_path / "enc", img_size=16, embed_dim=48, seed=3)
    common = ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--device", "cpu",
              "--weight-decays", "1e-2,1e-4"]
    assert main(["probe", "--encoder", str(enc), "--out", str(tmp_path / "out"), *common]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "baselines (linear / k-NN): band statistics" in line and "random init" in line
    assert "over the best baseline" in line
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    base = metrics["baselines"]
    assert set(base) == {"band-statistics", "random-init"}
    assert base["band-statistics"]["feature_dim"] == 7 * 3 and base["random-init"]["feature_dim"] == metrics["feature_dim"]
    # the synthetic classes differ by colour: the colour statistics separate them
    assert base["band-statistics"]["linear_top1"] == 1.0
    best = max(b["linear_top1"] for b in base.values())
    assert metrics["gain_over_best_baseline"]["linear_points"] == pytest.approx(100 * (metrics["linear_top1"] - best))

    # the random-init baseline can be left out; the band statistics cannot, and come from the cache
    assert main(["probe", "--encoder", str(enc), "--out", str(tmp_path / "out2"), "--no-random-baseline", *common]) == 0
    metrics2 = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert set(metrics2["baselines"]) == {"band-statistics"}
    assert metrics2["baselines"]["band-statistics"] == metrics["baselines"]["band-statistics"]
