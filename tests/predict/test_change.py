"""``geossl change`` on the real NAIP time series (two dates a pixel apart) with a tiny random encoder:
georeferencing at patch resolution, the score against cosines computed here from the encoder's own patch
tokens, nodata where either date has none, the transition table's hectares, one-line refusals, series."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import torch
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from bench.synthetic import make_tiny_encoder, write_synthetic_scene
from geossl.cli import main
from geossl.models.encoder import load_encoder
from geossl.models.landcover import LinearHead, save_landcover_model
from geossl.predict.change import change_scene
from geossl.predict.change_outputs import cell_area_ha, date_in_name, series_pairs, series_scenes

NAIP = "naip_north_dakota/m_4709963_se_14_1_{}.tif"
BEFORE, AFTER = "20090818", "20170827"  # origins 2 m and 1 m apart, 724 vs 724 rows: a real resampling
CLASSES = ["water", "crop", "grass", "built"]
HOLE = (300, 420, 380, 520)  # rows, cols (in the after scene's pixels) set to nodata in its copy


def naip(shared_data: Path, date: str) -> Path:
    return shared_data / "timeseries" / NAIP.format(date)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enc")
    return make_tiny_encoder(root / "enc", 4, bands=["red", "green", "blue", "nir"], mean=[110.0] * 4,
                             std=[40.0] * 4, img_size=32)


@pytest.fixture(scope="module")
def after_with_hole(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The after scene with a block of nodata (0), as a cloud mask would leave."""
    out = tmp_path_factory.mktemp("after") / f"m_4709963_se_14_1_{AFTER}.tif"
    with rasterio.open(naip(shared_data, AFTER)) as src:
        data, profile = src.read(), src.profile
    r0, r1, c0, c1 = HOLE
    data[:, r0:r1, c0:c1] = 0
    with rasterio.open(out, "w", **profile, photometric="minisblack") as dst:  # band 4 is NIR, not alpha
        dst.write(data)
    return out


@pytest.fixture(scope="module")
def naip_run(shared_data: Path, encoder_dir: Path, after_with_hole: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("run")
    before = naip(shared_data, BEFORE)
    assert main(["change", "--encoder", str(encoder_dir), "--before", str(before), "--after", str(after_with_hole),
                 "--out", str(out), "--quiet"]) == 0
    stem = f"m_4709963_se_14_1_{BEFORE}_to_m_4709963_se_14_1_{AFTER}"
    return {"out": out, "before": before, "after": after_with_hole, "score": out / f"{stem}_change.tif",
            "preview": out / f"{stem}_change_preview.png", "stac": out / f"{stem}_change.stac.json"}


def window_cosines(encoder_dir: Path, before: Path, after: Path, col: int, row: int, size: int) -> np.ndarray:
    """1 - cosine of the encoder's patch tokens for one window, the after scene warped onto the before grid
    here with rasterio itself (bilinear: the pixel sizes are equal)."""
    encoder = load_encoder(encoder_dir)
    with rasterio.open(before) as a, rasterio.open(after) as b, WarpedVRT(
            b, crs=a.crs, transform=a.transform, width=a.width, height=a.height, resampling=Resampling.bilinear,
            src_nodata=0, nodata=0, add_alpha=True) as vrt:
        window = Window(col, row, size, size)
        xa, xb = a.read(window=window), vrt.read([1, 2, 3, 4], window=window)
        assert (xa != 0).all() and (vrt.read(5, window=window) == 255).all()  # fully valid on both dates
    with torch.no_grad():
        ta, tb = (encoder.patch_grid(torch.from_numpy(x.astype(np.float32))[None])[0] for x in (xa, xb))
        return (1 - torch.nn.functional.cosine_similarity(ta, tb, dim=-1)).numpy()


@pytest.mark.slow
def test_change_map_is_on_the_before_grid_at_patch_resolution(naip_run: dict[str, Path], encoder_dir: Path) -> None:
    with rasterio.open(naip_run["before"]) as a, rasterio.open(naip_run["score"]) as m:
        assert m.crs == a.crs and m.transform == a.transform @ Affine.scale(8)  # one pixel per 8 px patch
        assert (m.width, m.height) == (a.width // 8, a.height // 8) and m.dtypes[0] == "float32"
        assert math.isnan(m.nodata) and m.tags()["TILE_SIZE"] == "32"
        score = m.read(1)
    valid = np.isfinite(score)
    assert valid.mean() > 0.9 and score[valid].min() >= 0.0 and score[valid].max() <= 2.0
    assert score[valid].std() > 0.01  # eleven years apart: not a constant
    # The same cells, computed here from the encoder's patch tokens (window at pixel 256, 256 -> cells 32..35).
    expected = window_cosines(encoder_dir, naip_run["before"], naip_run["after"], 256, 256, 32)
    np.testing.assert_allclose(score[32:36, 32:36], expected, atol=1e-4)
    # Nodata where the after scene has none: every cell inside the hole (in before-grid pixels, 2 m / 1 m off).
    r0, r1, c0, c1 = HOLE
    inside = score[r0 // 8 + 1 : r1 // 8 - 1, c0 // 8 + 1 : c1 // 8 - 1]
    assert inside.size > 50 and np.isnan(inside).all()
    assert np.isfinite(score[r1 // 8 + 2 : r1 // 8 + 10, c0 // 8 : c1 // 8]).all()  # just below it: valid


@pytest.mark.slow
def test_change_preview_and_stac_item_span_both_dates(naip_run: dict[str, Path]) -> None:
    assert naip_run["preview"].stat().st_size > 10_000
    data = json.loads(naip_run["stac"].read_text())
    JsonSchemaSTACValidator().validate_core(data, pystac.STACObjectType.ITEM, data["stac_version"], href="item.json")
    item = pystac.Item.from_dict(data)
    assert item.datetime is None and item.properties["start_datetime"] == "2009-08-18T00:00:00Z"
    assert item.properties["end_datetime"] == "2017-08-27T00:00:00Z"
    assert set(item.assets) == {"score", "preview"}
    assert [link.href for link in item.links if link.rel == "derived_from"] == [
        str(naip_run["before"].resolve()), str(naip_run["after"].resolve())]


@pytest.mark.slow
def test_a_scene_against_itself_scores_zero(shared_data: Path, encoder_dir: Path, tmp_path: Path) -> None:
    scene = str(naip(shared_data, BEFORE))
    res = change_scene(load_encoder(encoder_dir), scene, scene, tmp_path, preview=False, stac=False, progress=False)
    with rasterio.open(res.outputs["score"]) as m:
        score = m.read(1)
    valid = np.isfinite(score)
    assert valid.sum() == res.valid_cells > 0.9 * score.size and np.abs(score[valid]).max() < 1e-5


@pytest.mark.slow
def test_refusals_are_one_line(naip_run: dict[str, Path], encoder_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    pair = ["--before", str(naip_run["before"]), "--after", str(naip_run["after"])]

    def refused(*argv: str) -> str:
        assert main(["change", *argv, "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        return err

    err = refused("--encoder", str(encoder_dir), *pair, "--out", str(naip_run["out"]))
    assert "already exist" in err and "--overwrite" in err
    elsewhere = write_synthetic_scene(tmp_path / "italy.tif", 64, 64, 4)  # UTM 32N, 500 km E: not North Dakota
    err = refused("--encoder", str(encoder_dir), "--before", str(naip_run["before"]), "--after", str(elsewhere),
                  "--out", str(tmp_path / "o1"))
    assert f"{elsewhere}: does not overlap" in err
    rgb = make_tiny_encoder(tmp_path / "rgb", 3, img_size=32)
    err = refused("--encoder", str(rgb), *pair, "--out", str(tmp_path / "o2"))
    assert "has 4 bands, the model expects 3 bands" in err and "--bands" in err
    err = refused("--encoder", str(encoder_dir), *pair, "--out", str(tmp_path / "o3"), "--stride", "12")
    assert "--stride 12" in err and "patch size 8" in err
    plain = save_landcover_model(encoder_dir, LinearHead(192, 4), CLASSES, "cls", tmp_path / "plain", {})
    err = refused("--model", str(plain), *pair, "--out", str(tmp_path / "o4"))
    assert "geossl probe --dense" in err
    err = refused("--encoder", str(encoder_dir), "--series", str(naip_run["out"]), *pair, "--out", str(tmp_path / "o5"))
    assert "either --series or --before and --after" in err
    for k in range(1, 6):
        assert not (tmp_path / f"o{k}").exists() or not [p for p in (tmp_path / f"o{k}").iterdir()
                                                         if p.name != ".lock"]


@pytest.mark.slow
def test_model_writes_from_to_classes_and_hectares(naip_run: dict[str, Path], encoder_dir: Path,
                                                   tmp_path: Path) -> None:
    dense = LinearHead(192, len(CLASSES))
    torch.manual_seed(5)
    torch.nn.init.normal_(dense.linear.weight, std=0.5)
    model = save_landcover_model(encoder_dir, LinearHead(192, len(CLASSES)), CLASSES, "cls", tmp_path / "model",
                                 {}, dense, {})
    out = tmp_path / "out"
    assert main(["change", "--model", str(model), "--before", str(naip_run["before"]), "--after",
                 str(naip_run["after"]), "--out", str(out), "--quiet", "--no-preview", "--no-stac"]) == 0
    stem = f"m_4709963_se_14_1_{BEFORE}_to_m_4709963_se_14_1_{AFTER}"
    with rasterio.open(out / f"{stem}_change.tif") as m, rasterio.open(out / f"{stem}_fromto.tif") as f:
        score, fromto, res = m.read(1), f.read(), m.res
        assert f.transform == m.transform and json.loads(f.tags()["CLASSES"]) == CLASSES
    valid = np.isfinite(score)
    assert ((fromto == 255) == ~valid[None]).all() and fromto[:, valid].max() < len(CLASSES)
    with open(out / f"{stem}_transitions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["from_class", "to_class", "cells", "area_ha"]
    assert sum(int(r["cells"]) for r in rows) == valid.sum()
    cell_ha = abs(res[0] * res[1]) / 10_000  # 40 m x 40 m = 0.16 ha
    assert sum(float(r["area_ha"]) for r in rows) == pytest.approx(valid.sum() * cell_ha, rel=1e-6)
    pairs = {(r["from_class"], r["to_class"]): int(r["cells"]) for r in rows}
    for i, a in enumerate(CLASSES):  # the table is the from-to map, counted
        for j, b in enumerate(CLASSES):
            assert pairs.get((a, b), 0) == int(((fromto[0] == i) & (fromto[1] == j)).sum())


def test_dates_in_file_names_order_a_series(shared_data: Path) -> None:
    assert date_in_name(f"/x/m_4709963_se_14_1_{BEFORE}.tif") == dt.datetime(2009, 8, 18, tzinfo=dt.UTC)
    assert date_in_name("s3://b/landsat/1985.tif") == dt.datetime(1985, 1, 1, tzinfo=dt.UTC)
    assert date_in_name("scene_4709963.tif") is None
    folder = shared_data / "timeseries" / "landsat_pucallpa"
    dated = series_scenes(folder)
    assert [Path(u).stem for u, _ in dated] == ["1985", "1990", "1995", "2000", "2005", "2010", "2015"]
    assert series_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c")]
    assert series_pairs(["a", "b", "c"], consecutive=True) == [("a", "b"), ("b", "c")]
    four = ["a", "b", "c", "d"]
    assert series_pairs(four, all_pairs=True) == [(x, y) for i, x in enumerate(four) for y in four[i + 1:]]
    with pytest.raises(ValueError, match="give one"):
        series_pairs(four, consecutive=True, all_pairs=True)


def test_cell_area_is_geodesic_on_a_lon_lat_grid() -> None:
    t = Affine(0.01, 0.0, -74.7, 0.0, -0.01, -8.0)
    crs = rasterio.crs.CRS.from_epsg(4326)
    r = 6_371_008.8  # the mean Earth radius: a sphere is within 0.5 % of the ellipsoid here
    lat0, lat1 = math.radians(-8.0), math.radians(-8.01)
    sphere = r * r * math.radians(0.01) * abs(math.sin(lat0) - math.sin(lat1)) / 1e4
    assert cell_area_ha(crs, t, 0) == pytest.approx(sphere, rel=5e-3)
    assert cell_area_ha(rasterio.crs.CRS.from_epsg(26914), Affine(40, 0, 0, 0, -40, 0), 7) == 0.16


@pytest.mark.slow
def test_series_against_the_first_date(shared_data: Path, encoder_dir: Path, tmp_path: Path) -> None:
    """Landsat over Pucallpa (EPSG:4326), three dates by a glob: each against 1985, one CSV row per pair."""
    glob = str(shared_data / "timeseries" / "landsat_pucallpa" / "19[89]*.tif")
    assert main(["change", "--encoder", str(encoder_dir), "--series", glob, "--out", str(tmp_path), "--quiet",
                 "--no-preview", "--no-stac", "--no-check-stats"]) == 0
    with open(tmp_path / "change_series.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["before_date"], r["after_date"]) for r in rows] == [("1985-01-01", "1990-01-01"),
                                                                  ("1985-01-01", "1995-01-01")]
    assert all(0.0 <= float(r["mean_score"]) <= 2.0 and float(r["valid_area_ha"]) > 1e5 for r in rows)
    assert (tmp_path / rows[1]["score_map"]).is_file() and rows[1]["score_map"] == "1985_to_1995_change.tif"


@pytest.mark.slow
def test_series_all_pairs(shared_data: Path, encoder_dir: Path, tmp_path: Path) -> None:
    """--all-pairs: three dates give the three (earlier, later) pairs, each a score map named by its dates;
    --all-pairs with --before/--after is refused in one line."""
    glob = str(shared_data / "timeseries" / "landsat_pucallpa" / "19[89]*.tif")
    assert main(["change", "--encoder", str(encoder_dir), "--series", glob, "--all-pairs", "--out", str(tmp_path),
                 "--quiet", "--no-preview", "--no-stac", "--no-check-stats"]) == 0
    with open(tmp_path / "change_series.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["before_date"][:4], r["after_date"][:4]) for r in rows] == [("1985", "1990"), ("1985", "1995"),
                                                                          ("1990", "1995")]
    assert all((tmp_path / r["score_map"]).is_file() for r in rows)
    one = [str(shared_data / "timeseries" / "landsat_pucallpa" / f"{y}.tif") for y in (1985, 1990)]
    assert main(["change", "--encoder", str(encoder_dir), "--before", one[0], "--after", one[1], "--all-pairs",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 1  # the one-line error exit
