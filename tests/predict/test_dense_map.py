"""``geossl classify --dense``: one map pixel per ViT patch, georeferenced exactly, streamed in bounded
memory, and end to end from ``geossl probe --dense`` on real EuroSAT patches to a map of the real NAIP scene."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.synthetic import EUROSAT_CLASSES, RGB_MEAN, RGB_STD, make_tiny_encoder, write_synthetic_scene  # noqa: E402
from geossl.cli import main  # noqa: E402
from geossl.models.landcover import LinearHead, load_landcover_model, save_landcover_model  # noqa: E402
from geossl.predict.dense import dense_axis_plan  # noqa: E402
from geossl.predict.scene import classify_scene  # noqa: E402

NAIP = "naip_5m_north_dakota_2019.tif"


def dense_model(root: Path, img_size: int = 32, gsd: float | None = 10.0, dense: bool = True) -> Path:
    enc = make_tiny_encoder(root / "enc", img_size=img_size, gsd=gsd)
    head, dense_head = LinearHead(192, 10), LinearHead(192, 10)
    torch.manual_seed(3)
    torch.nn.init.normal_(dense_head.linear.weight, std=0.3)
    return save_landcover_model(enc, head, EUROSAT_CLASSES, "cls", root / "model", {},
                                dense_head if dense else None, {})


def test_dense_axis_plan_covers_every_whole_patch_once_per_window() -> None:
    plan = dense_axis_plan(100, 32, 32, 8)  # 12 whole patches; 100 - 32 = 68 -> last window at 64
    assert plan.starts == [0, 32, 64] and plan.n_cells == 12
    for s, cells in zip(plan.starts, plan.cells, strict=True):
        assert np.array_equal(cells[:, 0], np.arange(s // 8, s // 8 + 4))  # token j of the window = cell s/8 + j
        assert np.array_equal(cells[:, 1], np.arange(0, 32, 8)) and np.array_equal(cells[:, 2] - cells[:, 1], [8] * 4)
    assert sorted({int(k) for c in plan.cells for k in c[:, 0]}) == list(range(12))
    shifted = dense_axis_plan(107, 32, 16, 8)  # 13 patches: windows 0..64 by 16, then 72 (on the patch grid)
    assert shifted.starts == [0, 16, 32, 48, 64, 72] and shifted.cells[-1][-1, 0] == 12
    with pytest.raises(ValueError, match="multiples of the patch size"):
        dense_axis_plan(100, 32, 12, 8)


def test_dense_map_matches_the_dense_head_window_by_window(tmp_path: Path) -> None:
    """stride = tile on a synthetic scene: each map cell is its window token's probabilities; the shifted
    last window's overlap is the plain mean of both windows' tokens; the nodata collar is nodata."""
    model = load_landcover_model(dense_model(tmp_path, gsd=None))
    scene = write_synthetic_scene(tmp_path / "s.tif", 104, 96, border=16)  # 13 x 12 patches
    res = classify_scene(model, str(scene), tmp_path / "out", dense=True, probs=True, progress=False, preview=False)
    with rasterio.open(scene) as s:
        pixels = torch.from_numpy(s.read().astype(np.float32))
    with rasterio.open(res.probs) as p, rasterio.open(res.class_map) as m:
        probs, classes = p.read(), m.read(1)
        assert (p.width, p.height) == (13, 12) and m.transform == s.transform @ rasterio.Affine.scale(8)
    with torch.no_grad():
        win = lambda r, c: model.predict_patch_proba(pixels[None, :, r : r + 32, c : c + 32])[0].numpy()  # noqa: E731
        a, b = win(32, 64), win(32, 72)  # column windows at 64 and (shifted) 72 overlap on cells 9..11
    np.testing.assert_allclose(probs[:, 4:8, 8], a[:, :, 0], atol=1e-5)  # cell 8: window 64 only
    np.testing.assert_allclose(probs[:, 4:8, 10], (a[:, :, 2] + b[:, :, 1]) / 2, atol=1e-5)
    np.testing.assert_allclose(probs[:, 4:8, 12], b[:, :, 3], atol=1e-5)
    assert np.all(classes[:2, :] == 255) and np.all(classes[:, :2] == 255)  # 16 px collar = 2 patches
    assert np.all(classes[2:, 2:] != 255) and res.geojson is None and res.nodata_cells == 13 * 12 - 11 * 10


@pytest.mark.slow
def test_dense_map_of_naip_is_georeferenced_exactly(tmp_path: Path, scenes_dir: Path) -> None:
    model = dense_model(tmp_path)
    scene = scenes_dir / NAIP
    for extra, read_res in (([], 10.0), (["--no-resample", "--stride", "16", "--blend", "hann"], 5.0)):
        out = tmp_path / f"out{read_res:g}"
        assert main(["classify", "--model", str(model), "--input", str(scene), "--out", str(out), "--quiet",
                     "--bands", "1,2,3", "--dense", *extra]) == 0
        with rasterio.open(scene) as s, rasterio.open(out / f"{scene.stem}_classes.tif") as m:
            read_w, read_h = round(s.width * s.res[0] / read_res), round(s.height * s.res[1] / read_res)
            assert m.crs == s.crs and m.res == (8 * read_res, 8 * read_res)  # 80 m, or 40 m at the native 5 m
            assert (m.transform.c, m.transform.f) == (s.transform.c, s.transform.f)  # the scene origin, exactly
            assert (m.width, m.height) == (read_w // 8, read_h // 8)
            assert s.bounds.left <= m.bounds.left and m.bounds.right <= s.bounds.right
            assert s.bounds.bottom <= m.bounds.bottom and m.bounds.top <= s.bounds.top
            assert "8 px patch" in m.tags()["DENSE"] and (m.read(1) != 255).mean() > 0.9
        assert not (out / f"{scene.stem}_tiles.geojson").exists()


def test_dense_refusals_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plain = dense_model(tmp_path / "plain", dense=False)
    scene = write_synthetic_scene(tmp_path / "s.tif", 64, 64)
    args = ["classify", "--input", str(scene), "--out", str(tmp_path / "o"), "--quiet", "--dense"]
    assert main([*args, "--model", str(plain)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(plain) in err and "geossl probe --dense" in err
    model = dense_model(tmp_path / "dense")
    assert main([*args, "--model", str(model), "--stride", "12"]) == 1
    assert "multiple of the patch size 8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def bench(*extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "classify_memory.py"), "--dense", "--no-preview",
                           *extra], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_dense_map_memory_does_not_grow_with_the_scene() -> None:
    """9x the pixels (12 MB -> 108 MB as float32): the dense map's memory growth stays flat, as the window map's."""
    small, big = bench("--size", "1024"), bench("--size", "3072")
    for r, n in ((small, 1024), (big, 3072)):
        d = r["dense"]
        assert d["dense"]["map_size"] == [n // 8, n // 8] and d["window"]["map_size"] == [n // 32, n // 32]
        assert d["dense"]["windows"] == d["window"]["windows"] == (n // 32) ** 2 and d["ok"]
    grow = big["dense"]["dense"]["classify_growth_mb"] - small["dense"]["dense"]["classify_growth_mb"]
    # a held scene would add >= 96 MB; 60 leaves a measured margin over the 40 MB seen on a busy machine
    assert grow < 60, (small["dense"], big["dense"])


def small_splits(data: Path, out: Path, per: dict[str, int]) -> Path:
    """A splits CSV with ``per[split]`` EuroSAT patches of each class, drawn from the dataset's own split."""
    with open(data / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked, rng = [], np.random.default_rng(0)
    for label in sorted({r["label"] for r in rows}):
        for split, n in per.items():
            pool = [r["path"] for r in rows if r["label"] == label and r["split"] == split]
            picked += [(p, label, split) for p in rng.permutation(pool)[:n]]
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *picked])
    return out


@pytest.mark.slow
def test_probe_dense_then_classify_dense_on_naip(tmp_path: Path, shared_data: Path, scenes_dir: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    data = shared_data / "eurosat-rgb"
    enc = make_tiny_encoder(tmp_path / "enc", img_size=64, gsd=10.0, mean=RGB_MEAN, std=RGB_STD, seed=7)
    splits = small_splits(data, tmp_path / "splits.csv", {"train": 6, "val": 3, "test": 3})
    out = tmp_path / "probe"
    assert main(["probe", "--encoder", str(enc), "--data", str(data), "--splits", str(splits), "--out", str(out),
                 "--workers", "0", "--device", "cpu", "--weight-decays", "1e-1,1e-3", "--no-random-baseline",
                 "--dense", "--dense-tokens", "8"]) == 0
    assert "dense head: token top-1" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["dense"]
    assert d["train_tokens"] == 10 * 6 * 8 and d["val_tokens"] == 10 * 3 * 8
    assert d["test_tokens"] == 10 * 3 * 64  # every token of every 64 px test patch (8 x 8 patches of 8 px)
    assert 0.0 <= d["test_top1"] <= 1.0 and d["weight_decay"] in (1e-1, 1e-3) and d["tokens_per_patch"] == 8
    assert (out / "model" / "dense_head.safetensors").is_file()
    assert json.loads((out / "model" / "head.json").read_text())["dense"]["probe"]["test_top1"] == d["test_top1"]
    maps = tmp_path / "maps"
    assert main(["classify", "--model", str(out / "model"), "--input", str(scenes_dir / NAIP), "--out", str(maps),
                 "--bands", "1,2,3", "--dense", "--quiet"]) == 0
    with rasterio.open(maps / f"{Path(NAIP).stem}_classes.tif") as m:
        assert m.res == (80.0, 80.0) and json.loads(m.tags()["CLASSES"]) == metrics["classes"]
        assert set(np.unique(m.read(1))) - {255} <= set(range(10))


def test_dense_map_with_tta_runs_and_keeps_the_grid(tmp_path: Path) -> None:
    model = load_landcover_model(dense_model(tmp_path / "m"))
    scene = write_synthetic_scene(tmp_path / "s.tif", 96, 80)
    plain = classify_scene(model, str(scene), tmp_path / "plain", dense=True, preview=False, progress=False)
    tta = classify_scene(model, str(scene), tmp_path / "tta", dense=True, tta=True, preview=False, progress=False)
    with rasterio.open(plain.class_map) as a, rasterio.open(tta.class_map) as b:
        assert a.transform == b.transform and a.shape == b.shape == (10, 12)
        assert (b.read(1) != 255).all() and b.tags()["TTA"] == "True"
