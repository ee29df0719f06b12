"""Band statistics vs numpy on synthetic scenes with nodata/NaN, the CLI, and the real data sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geossl.cli import main as geossl_main
from geossl.data.patches import PatchDataset
from geossl.data.scenes import RandomTileDataset
from geossl.data.stats import BandStats, compute_stats, detect_kind


def _scene(path: Path, array: np.ndarray, nodata: float | None) -> str:
    count, height, width = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=array.dtype,
                       crs="EPSG:32631", transform=from_origin(400_000, 5_600_000, 20, 20), nodata=nodata) as dst:
        dst.write(array)
    return str(path)


def _expected(array: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    values = array[:, valid].astype(np.float64)
    return {"mean": values.mean(axis=1), "std": values.std(axis=1),
            "p2": np.percentile(values, 2, axis=1), "p98": np.percentile(values, 98, axis=1)}


@pytest.fixture()
def nodata_scene(tmp_path: Path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(1)
    array = rng.gamma(2.0, 900.0, size=(3, 48, 40)).astype(np.uint16) + 1
    array[:, :10, :] = 9999  # a nodata stripe with a value that would wreck the mean if counted
    array[1, 30, 7] = 9999  # nodata in one band only: the whole pixel is invalid
    return _scene(tmp_path / "scene.tif", array, nodata=9999), array


def test_whole_scene_stats_equal_numpy(nodata_scene: tuple[str, np.ndarray]) -> None:
    uri, array = nodata_scene
    valid = (array != 9999).all(axis=0)
    stats = compute_stats(uri, n_tiles=1, tile_size=40)  # a 40x40 tile of a 40-wide scene, one per row offset
    ds = RandomTileDataset(uri, tile_size=40, length=1, min_valid_fraction=0.0)
    row = int(ds.draw(0)[1].row_off)
    exp = _expected(array[:, row : row + 40], valid[row : row + 40])
    for key in ("mean", "std", "p2", "p98"):
        np.testing.assert_allclose(getattr(stats, key), exp[key], rtol=1e-12)
    assert stats.n_pixels == int(valid[row : row + 40].sum()) and stats.dtype == "uint16"
    assert stats.bands == ["band_1", "band_2", "band_3"] and stats.sources == [uri]
    assert max(stats.p98) < 9999


def test_sampled_tiles_stats_equal_numpy_over_the_same_tiles(nodata_scene: tuple[str, np.ndarray]) -> None:
    uri, _ = nodata_scene
    stats = compute_stats(uri, kind="scenes", bands=[3, 1], n_tiles=25, tile_size=12, seed=4)
    ds = RandomTileDataset(uri, tile_size=12, length=25, bands=[3, 1], min_valid_fraction=0.0, seed=4)
    images = np.concatenate([ds[i]["image"].numpy() for i in range(25)], axis=2)
    masks = np.concatenate([ds[i]["mask"].numpy() for i in range(25)], axis=1)
    assert 0 < masks.mean() < 1  # the sample did include nodata
    exp = _expected(images, masks)
    for key in ("mean", "std", "p2", "p98"):
        np.testing.assert_allclose(getattr(stats, key), exp[key], rtol=1e-10)
    assert stats.bands == ["band_3", "band_1"] and stats.n_pixels == int(masks.sum())


def test_nan_ignored_and_percentile_sample_bounded(tmp_path: Path) -> None:
    array = np.arange(2 * 64 * 64, dtype=np.float32).reshape(2, 64, 64)
    array[0, ::2, :] = np.nan
    uri = _scene(tmp_path / "nan.tif", array, nodata=None)
    stats = compute_stats(uri, n_tiles=1, tile_size=64)
    exp = _expected(array, np.isfinite(array).all(axis=0))
    np.testing.assert_allclose(stats.mean, exp["mean"], rtol=1e-12)
    np.testing.assert_allclose(stats.p98, exp["p98"], rtol=1e-6)
    capped = compute_stats(uri, n_tiles=1, tile_size=64, max_values=500)
    np.testing.assert_allclose(capped.mean, exp["mean"], rtol=1e-12)  # mean/std stay exact
    np.testing.assert_allclose(capped.p2, exp["p2"], rtol=0.05)  # percentiles from a 500-pixel sample
    all_nan = _scene(tmp_path / "all_nan.tif", np.full((1, 8, 8), np.nan, np.float32), nodata=None)
    with pytest.raises(ValueError, match=r"all_nan\.tif: no valid pixels"):
        compute_stats(all_nan, n_tiles=2, tile_size=8)


def test_patch_stats_and_kind_detection(tmp_path: Path) -> None:
    from PIL import Image

    for k, name in enumerate(["a", "b"]):
        (tmp_path / "p" / name).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((4, 4, 3), 10 * k + j, np.uint8)).save(tmp_path / "p" / name / f"{j}.png")
    assert detect_kind(str(tmp_path / "p")) == "patches"
    stats = compute_stats(str(tmp_path / "p"), n_tiles=100)
    values = np.array([0, 1, 2, 10, 11, 12], dtype=np.float64)
    np.testing.assert_allclose(stats.mean, [values.mean()] * 3)
    np.testing.assert_allclose(stats.std, [values.std()] * 3)
    np.testing.assert_allclose(stats.p98, [np.percentile(np.repeat(values, 16), 98)] * 3)
    assert detect_kind(str(tmp_path / "p" / "a" / "0.png")) == "scenes"


def test_cli_writes_json_and_reports_errors(nodata_scene: tuple[str, np.ndarray], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    uri, _ = nodata_scene
    out = tmp_path / "out" / "stats.json"
    code = geossl_main(["stats", "--input", uri, uri, "--out", str(out), "--bands", "2,3", "--tiles", "8",
                        "--tile-size", "16"])
    assert code == 0
    saved = BandStats.load(out)
    assert saved.count == 2 and json.loads(out.read_text())["bands"] == ["band_2", "band_3"]
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and "2 bands (uint16)" in line[0] and str(out) in line[0]
    assert geossl_main(["stats", "--input", str(tmp_path / "nope.tif"), "--out", str(out), "--overwrite"]) == 1
    assert "nope.tif: no such file" in capsys.readouterr().err
    assert geossl_main(["stats", "--input", uri, "--out", str(out), "--bands", "1,x"]) == 1
    assert "--bands" in capsys.readouterr().err
    assert BandStats.load(out).count == 2  # a failed run leaves the previous file intact


@pytest.mark.slow
def test_real_data_stats(shared_data: Path) -> None:
    rgb = compute_stats(shared_data / "eurosat-rgb", n_tiles=300, seed=0)
    # README: mean (0.3444, 0.3803, 0.4078) over all 27,000 images, in [0, 1] units
    np.testing.assert_allclose(np.array(rgb.mean) / 255, [0.3444, 0.3803, 0.4078], atol=0.02)
    ms = compute_stats(shared_data / "eurosat-ms", bands=[4, 3, 2], n_tiles=40)
    assert ms.dtype == "uint16" and ms.count == 3 and 300 < ms.mean[0] < 3000
    assert len(PatchDataset(shared_data / "eurosat-ms", limit=40)) == 40
    scenes = compute_stats(shared_data / "scenes" / "landsat7_300m_RGB.byte.tif", n_tiles=32, tile_size=64)
    assert scenes.dtype == "uint8" and min(scenes.p2) > 0  # nodata 0 excluded
