"""Scene classification on synthetic scenes: window plan, overlap averaging, nodata, alignment, resampling,
band/statistics checks, atomic outputs and bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from bench.synthetic import make_tiny_model, write_synthetic_scene
from geossl.models.landcover import LandCoverModel, load_landcover_model
from geossl.predict.maps import NODATA_CLASS
from geossl.predict.scene import axis_plan, classify_scene
from geossl.scene.reader import ModelSceneReader

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "rgb": make_tiny_model(root / "rgb", img_size=32),
        "rgb_gsd10": make_tiny_model(root / "rgb_gsd10", img_size=32, gsd=10.0),
    }


@pytest.fixture(scope="module")
def rgb_model(models: dict[str, Path]) -> LandCoverModel:
    return load_landcover_model(models["rgb"])


@pytest.mark.parametrize("length,tile,stride", [(100, 64, 32), (110, 64, 16), (100, 10, 40), (100, 64, 40),
                                                 (934, 32, 32), (100, 32, 24), (64, 64, 64), (97, 32, 7)])
def test_axis_plan_covers_every_cell_once_in_order(length: int, tile: int, stride: int) -> None:
    plan = axis_plan(length, tile, stride)
    assert plan.n_cells == length // stride and plan.n_cells * stride <= length
    fed = np.zeros(plan.n_cells, dtype=int)
    previous_first = -1
    for start, cells in zip(plan.starts, plan.cells, strict=True):
        assert 0 <= start and start + tile <= length
        assert (cells[:, 1] < cells[:, 2]).all() and (cells[:, 2] <= tile).all()
        assert cells[0, 0] >= previous_first  # row-major streaming relies on this
        previous_first = cells[0, 0]
        fed[cells[:, 0]] += 1
    assert (fed >= 1).all()


def test_overlapping_windows_average_probabilities(tmp_path: Path, rgb_model: LandCoverModel) -> None:
    scene = write_synthetic_scene(tmp_path / "s.tif", 160, 128, nodata=None)
    res = classify_scene(rgb_model, str(scene), tmp_path / "out", tile_size=32, stride=16, probs=True,
                         preview=False, progress=False)
    assert res.map_size == (10, 8)
    with rasterio.open(res.probs) as src:
        probs = src.read()
    with rasterio.open(res.class_map) as src:
        classes = src.read(1)
    # Expected, computed independently: every window on the 16 px grid, each cell the mean of the
    # windows that contain its centre.
    with ModelSceneReader(str(scene), rgb_model.meta) as reader:
        starts_x, starts_y = range(0, 160 - 32 + 1, 16), range(0, 128 - 32 + 1, 16)
        p = {}
        for y in starts_y:
            for x in starts_x:
                image, _ = reader.read(x, y, 32, 32)
                with torch.inference_mode():
                    p[(x, y)] = rgb_model.predict_proba(torch.from_numpy(image[None]))[0].numpy()
    for r in range(8):
        for c in range(10):
            cx, cy = (c + 0.5) * 16, (r + 0.5) * 16
            ws = [v for (x, y), v in p.items() if x <= cx < x + 32 and y <= cy < y + 32]
            expected = np.mean(ws, axis=0)
            np.testing.assert_allclose(probs[:, r, c], expected, atol=2e-5)
            assert classes[r, c] == int(np.argmax(expected))


def test_map_is_a_cog_aligned_to_the_scene_with_nodata_border(tmp_path: Path, rgb_model: LandCoverModel) -> None:
    scene = write_synthetic_scene(tmp_path / "b.tif", 300, 200, res=10.0, origin=(600000.123456, 4500000.654321),
                                  nodata=0, border=64)
    res = classify_scene(rgb_model, str(scene), tmp_path / "out", stride=32, progress=False)
    with rasterio.open(scene) as s, rasterio.open(res.class_map) as m:
        assert m.crs == s.crs and m.dtypes == ("uint8",) and m.nodata == NODATA_CLASS
        assert m.transform == s.transform @ Affine.scale(32)  # exact float64, origin = scene origin
        assert (m.transform.c, m.transform.f) == (s.transform.c, s.transform.f)
        assert m.bounds.left >= s.bounds.left and m.bounds.right <= s.bounds.right
        assert m.bounds.bottom >= s.bounds.bottom and m.bounds.top <= s.bounds.top
        assert m.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and m.profile["tiled"]
        assert json.loads(m.tags()["CLASSES"]) == rgb_model.classes
        assert m.colormap(1)[NODATA_CLASS][3] == 0
        cls = m.read(1)
    assert cls.shape == (6, 9)
    assert (cls[:2, :] == NODATA_CLASS).all() and (cls[:, :2] == NODATA_CLASS).all()  # 64 px collar = 2 cells
    assert (cls[2:, 2:] != NODATA_CLASS).all()
    assert res.nodata_cells == int((cls == NODATA_CLASS).sum())
    assert res.preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    features = json.loads(res.geojson.read_text())["features"]
    assert len(features) == res.classified_windows == int((cls != NODATA_CLASS).sum())


def test_nan_pixels_are_nodata(tmp_path: Path, models: dict[str, Path]) -> None:
    path = tmp_path / "f.tif"
    data = np.full((3, 128, 128), 100.0, dtype=np.float32)
    data[:, :64, 64:] = np.nan
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=3, dtype="float32",
                       crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(data)
    res = classify_scene(load_landcover_model(models["rgb"]), str(path), tmp_path / "o", stride=32,
                         preview=False, progress=False)
    with rasterio.open(res.class_map) as m:
        cls = m.read(1)
    assert (cls[:2, 2:] == NODATA_CLASS).all() and (cls[2:, :] != NODATA_CLASS).all()


def test_resampling_to_model_gsd(tmp_path: Path, models: dict[str, Path]) -> None:
    scene = write_synthetic_scene(tmp_path / "five.tif", 256, 192, res=5.0)
    model = load_landcover_model(models["rgb_gsd10"])
    auto = classify_scene(model, str(scene), tmp_path / "a", preview=False, progress=False)
    assert "5 m -> 10 m" in auto.resample_note and auto.map_size == (4, 3)  # 128x96 px at 10 m, 32 px cells
    off = classify_scene(model, str(scene), tmp_path / "b", resample=False, preview=False, progress=False)
    with rasterio.open(auto.class_map) as a, rasterio.open(off.class_map) as b:
        assert a.transform.a == 320.0 and b.transform.a == 160.0 and a.transform.c == b.transform.c == 500000.0
    with pytest.raises(ValueError, match="has no gsd"):
        classify_scene(load_landcover_model(models["rgb"]), str(scene), tmp_path / "c", resample=True, progress=False)


def test_band_selection_and_mismatch(tmp_path: Path, rgb_model: LandCoverModel) -> None:
    scene = write_synthetic_scene(tmp_path / "four.tif", 96, 96, count=4)
    with pytest.raises(ValueError, match=r"four.tif: has 4 bands, the model expects 3 bands \['B4', 'B3', 'B2'\].*--bands"):
        classify_scene(rgb_model, str(scene), tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="band 5 requested but the file has 4 bands"):
        classify_scene(rgb_model, str(scene), tmp_path / "o", bands=[5, 2, 1], progress=False)
    res = classify_scene(rgb_model, str(scene), tmp_path / "o", bands=[3, 2, 1], preview=False, progress=False)
    assert res.map_size == (3, 3)
    assert not any(p.name.startswith(".") for p in (tmp_path / "o").iterdir())  # no temporaries left


def test_statistics_mismatch_is_an_error(tmp_path: Path, rgb_model: LandCoverModel) -> None:
    scene = write_synthetic_scene(tmp_path / "refl.tif", 96, 96, dtype="uint16", nodata=None)
    with rasterio.open(scene, "r+") as dst:
        dst.write(dst.read().astype(np.uint16) * 40 + 3000)
    with pytest.raises(ValueError, match=r"refl.tif: band \d values \(median \d+\) do not match the model's band 'B\d'"):
        classify_scene(rgb_model, str(scene), tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "refl_classes.tif").exists()
    classify_scene(rgb_model, str(scene), tmp_path / "o", check_stats=False, preview=False, progress=False)


def test_bad_scenes_and_outputs(tmp_path: Path, rgb_model: LandCoverModel) -> None:
    small = write_synthetic_scene(tmp_path / "small.tif", 20, 40)
    with pytest.raises(ValueError, match=r"small.tif: 20x40 px is smaller than one 32 px tile"):
        classify_scene(rgb_model, str(small), tmp_path / "o", progress=False)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match=r"broken.tif: cannot open as a raster"):
        classify_scene(rgb_model, str(broken), tmp_path / "o", progress=False)
    scene = write_synthetic_scene(tmp_path / "ok.tif", 64, 64)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=r"a_file/out: output folder is not writable"):
        classify_scene(rgb_model, str(scene), blocker / "out", progress=False)
    classify_scene(rgb_model, str(scene), tmp_path / "o", preview=False, progress=False)
    with pytest.raises(FileExistsError, match=r"ok_classes.tif.*already exist.*--overwrite"):
        classify_scene(rgb_model, str(scene), tmp_path / "o", preview=False, progress=False)
    classify_scene(rgb_model, str(scene), tmp_path / "o", preview=False, overwrite=True, progress=False)


def test_failure_midway_leaves_no_complete_looking_outputs(tmp_path: Path, models: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_landcover_model(models["rgb"])
    scene = write_synthetic_scene(tmp_path / "s.tif", 256, 256)
    calls = {"n": 0}
    original = model.predict_proba

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(x)

    monkeypatch.setattr(model, "predict_proba", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        classify_scene(model, str(scene), tmp_path / "o", batch_size=8, probs=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from geossl.models.landcover import LandCoverModel, load_landcover_model
    from geossl.predict.scene import classify_scene

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])

    model = load_landcover_model(sys.argv[2])
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    before = status("VmRSS")
    classify_scene(model, sys.argv[1], sys.argv[3], stride=384, batch_size=64, preview=True, progress=False)
    print(json.dumps({"before_kb": before, "peak_kb": status("VmHWM")}))
""")


def _peak_kb(scene: Path, model: Path, out: Path) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(scene), str(model), str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_scene_size(tmp_path: Path, models: dict[str, Path]) -> None:
    """10,000^2 x 3 px is 300 MB as uint8 and 1.2 GB as float32; the classifier must hold neither."""
    small = write_synthetic_scene(tmp_path / "small.tif", 800, 800, border=100)
    large = write_synthetic_scene(tmp_path / "large.tif", 10_000, 10_000, border=1000)
    s = _peak_kb(small, models["rgb"], tmp_path / "o_small")
    big = _peak_kb(large, models["rgb"], tmp_path / "o_large")
    # Growth of the peak over the RSS just before classifying (model loaded), small vs large scene.
    small_mb, large_mb = (s["peak_kb"] - s["before_kb"]) / 1024, (big["peak_kb"] - big["before_kb"]) / 1024
    assert large_mb - small_mb < 120, f"classifying took {small_mb:.0f} MB on 800^2 px, {large_mb:.0f} MB on 10,000^2"
    assert large_mb < 300  # a full-scene uint8 read alone would add 300 MB, float32 1.2 GB
    with rasterio.open(tmp_path / "o_large" / "large_classes.tif") as m:
        cls = m.read(1)
    assert cls.shape == (26, 26) and (cls[:2] == NODATA_CLASS).all() and (cls[3:, 3:] != NODATA_CLASS).all()
