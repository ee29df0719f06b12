"""End to end on the three real scenes: `geossl classify` maps (COG, CRS, alignment, nodata) and GeoJSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from bench.synthetic import make_tiny_model
from geossl.cli import main
from geossl.predict.geojson import signed_area

pytestmark = pytest.mark.slow

NAIP, S2, LANDSAT = "naip_5m_north_dakota_2019.tif", "s2_like_10m_netherlands_cog.tif", "landsat7_300m_RGB.byte.tif"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-models")
    return {
        "rgb": make_tiny_model(root / "rgb", img_size=32, gsd=10.0),  # EuroSAT-like RGB model, 10 m
        "s2": make_tiny_model(root / "s2", 4, img_size=32, gsd=10.0, mean=[1000.0] * 4, std=[400.0] * 4),
    }


def classify(model: Path, scene: Path | str, out: Path, *extra: str) -> int:
    return main(["classify", "--model", str(model), "--input", str(scene), "--out", str(out), "--quiet", *extra])


def check_map(scene: Path, out: Path, stride_px: float) -> np.ndarray:
    """Assertions every scene map must pass; returns the class array."""
    stem = scene.stem
    with rasterio.open(scene) as s, rasterio.open(out / f"{stem}_classes.tif") as m:
        assert m.crs == s.crs and m.count == 1 and m.dtypes[0] == "uint8" and m.nodata == 255
        assert m.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and m.profile["tiled"]
        assert len(json.loads(m.tags()["CLASSES"])) == 10 and m.colormap(1)[0][3] == 255
        assert m.transform.a == pytest.approx(s.transform.a * stride_px, rel=1e-12)
        assert m.transform.e == pytest.approx(s.transform.e * stride_px, rel=1e-12)
        assert (m.transform.c, m.transform.f) == (s.transform.c, s.transform.f)  # same origin, exactly
        eps = 1e-9 * max(abs(s.bounds.left), abs(s.bounds.top), 1.0)
        assert s.bounds.left - eps <= m.bounds.left and m.bounds.right <= s.bounds.right + eps
        assert s.bounds.bottom - eps <= m.bounds.bottom and m.bounds.top <= s.bounds.top + eps
        cls = m.read(1)
        footprint = transform_bounds(s.crs, "EPSG:4326", *s.bounds, densify_pts=21)
    features = json.loads((out / f"{stem}_tiles.geojson").read_text())["features"]
    assert features and len(features) <= cls.size
    tol = 1e-6
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["class"]
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5 and signed_area(ring) > 0  # closed, counter-clockwise
        for lon, lat in ring:
            assert -180 <= lon <= 180 and -90 <= lat <= 90
            assert footprint[0] - tol <= lon <= footprint[2] + tol and footprint[1] - tol <= lat <= footprint[3] + tol
    assert (out / f"{stem}_preview.png").read_bytes()[:4] == b"\x89PNG"
    return cls


def test_naip_rgb_bands_resampled_to_10m_and_native(scenes_dir: Path, models: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    scene = scenes_dir / NAIP
    assert classify(models["rgb"], scene, tmp_path / "x") == 1  # 4 bands for an RGB model
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has 4 bands, the model expects 3 bands" in err and "--bands" in err

    assert classify(models["rgb"], scene, tmp_path / "auto", "--bands", "1,2,3") == 0
    assert "resampled 5 m -> 10 m" in capsys.readouterr().out
    cls = check_map(scene, tmp_path / "auto", stride_px=2 * 32)  # 32 cells of 10 m = 64 scene pixels
    assert cls.shape == (723 * 5 // 10 // 32, 934 * 5 // 10 // 32)

    assert classify(models["rgb"], scene, tmp_path / "native", "--bands", "1,2,3", "--no-resample",
                    "--stride", "16", "--probs") == 0
    cls = check_map(scene, tmp_path / "native", stride_px=16)
    assert cls.shape == (723 // 16, 934 // 16)
    with rasterio.open(tmp_path / "native" / f"{Path(NAIP).stem}_probs.tif") as p:
        probs = p.read()
    valid = cls != 255
    np.testing.assert_allclose(probs[:, valid].sum(axis=0), 1.0, atol=1e-4)
    assert (np.argmax(probs[:, valid], axis=0) == cls[valid]).all()


def test_s2_float64_cog_in_epsg4326(scenes_dir: Path, models: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    scene = scenes_dir / S2
    assert classify(models["s2"], scene, tmp_path, "--tile-size", "32", "--stride", "16") == 0
    assert "not in metres" in capsys.readouterr().out  # a geographic CRS is never resampled silently
    cls = check_map(scene, tmp_path, stride_px=16)
    assert cls.shape == (206 // 16, 343 // 16) and (cls != 255).all()


def test_landsat_nodata_collar_is_nodata_in_the_map(scenes_dir: Path, models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    scene = scenes_dir / LANDSAT
    assert classify(models["rgb"], scene, tmp_path, "--stride", "32") == 0  # 300 m: beyond auto-resampling
    cls = check_map(scene, tmp_path, stride_px=32)
    with rasterio.open(scene) as s:
        data = s.read()
    valid = ~(data == 0).all(axis=0)
    h, w = cls.shape
    frac = valid[: h * 32, : w * 32].reshape(h, 32, w, 32).mean(axis=(1, 3))
    assert (cls[frac == 0] == 255).all() and (frac == 0).sum() > 20  # the collar is there, and nodata
    assert ((cls == 255) == (frac < 0.5)).all()  # min_valid 0.5 decides, cell by cell


def test_scene_on_s3(moto_server: str, scenes_dir: Path, models: dict[str, Path], tmp_path: Path) -> None:
    from geossl.data.s3 import s3_client

    s3_client().create_bucket(Bucket="maps")
    s3_client().upload_file(str(scenes_dir / LANDSAT), "maps", f"in/{LANDSAT}")
    assert classify(models["rgb"], "s3://maps/in/", tmp_path, "--stride", "64", "--no-preview") == 0
    local = tmp_path / "local"
    assert classify(models["rgb"], scenes_dir / LANDSAT, local, "--stride", "64", "--no-preview") == 0
    stem = Path(LANDSAT).stem
    with rasterio.open(tmp_path / f"{stem}_classes.tif") as remote, rasterio.open(local / f"{stem}_classes.tif") as here:
        assert remote.transform == here.transform and (remote.read() == here.read()).all()
