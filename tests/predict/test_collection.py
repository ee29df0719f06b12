"""The folder-level products of `geossl classify` (issue #25): VRTs over the class maps (one per CRS), an
optional mosaic COG in one CRS, a STAC Collection of the scene Items with the ML-model extension, and the
area of each class. Real scenes copied into tmp_path, a tiny random model; synthetic maps for the VRT's
placement arithmetic, checked against pixel coordinates worked out in the test."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.transform import from_origin

from bench.synthetic import make_tiny_model
from geossl.cli import main
from geossl.predict.collection import SceneMap, class_areas, write_vrts
from geossl.predict.maps import NODATA_CLASS

LANDSAT, NAIP = "landsat7_300m_RGB.byte.tif", "naip_5m_north_dakota_2019.tif"
FAST = ("--tile-size", "32", "--stride", "64", "--bands", "1,2,3", "--no-preview", "--quiet")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("collection-model") / "m", img_size=32)


def classify(model: Path, inputs: list[Path], out: Path, *extra: str) -> int:
    return main(["classify", "--model", str(model), "--input", *map(str, inputs), "--out", str(out), *FAST, *extra])


def write_map(path: Path, data: np.ndarray, left: float, top: float, res: float, crs: str = "EPSG:32614") -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint8", crs=crs, transform=from_origin(left, top, res, res), nodata=NODATA_CLASS) as dst:
        dst.write(data, 1)
    return path


def test_vrt_places_maps_of_two_pixel_sizes_and_keeps_a_neighbour_under_nodata(tmp_path: Path) -> None:
    # a: 4x4 cells of 10 m at (1000, 2000); b: 2x2 cells of 20 m whose top-left cell is nodata, 20 m east
    a = write_map(tmp_path / "a_classes.tif", np.full((4, 4), 1, np.uint8), 1000, 2000, 10)
    b_data = np.array([[NODATA_CLASS, 2], [2, 2]], np.uint8)
    b = write_map(tmp_path / "b_classes.tif", b_data, 1020, 2000, 20)
    maps = [SceneMap("a", "a", {"classes": b}), SceneMap("b", "b", {"classes": a})]  # b listed first: on top
    (vrt,) = write_vrts(tmp_path, maps)
    assert vrt.name == "classes.vrt"
    with rasterio.open(vrt) as src:
        assert src.crs.to_epsg() == 32614 and src.res == (10.0, 10.0)
        assert (src.bounds.left, src.bounds.top, src.bounds.right, src.bounds.bottom) == (1000, 2000, 1060, 1960)
        got = src.read(1)
    expected = np.full((4, 6), NODATA_CLASS, np.uint8)
    expected[:, 0:4] = 1  # a everywhere it lies
    expected[:, 2:6] = np.kron(b_data, np.ones((2, 2), np.uint8))  # b over a, each 20 m cell as 2x2 of 10 m
    expected[0:2, 2:4] = 1  # ...except where b is nodata: a shows through
    np.testing.assert_array_equal(got, expected)


def test_one_vrt_per_crs_and_rotated_maps_left_out(tmp_path: Path) -> None:
    a = write_map(tmp_path / "a_classes.tif", np.zeros((2, 2), np.uint8), 0, 100, 10, "EPSG:32614")
    b = write_map(tmp_path / "b_classes.tif", np.ones((2, 2), np.uint8), 0, 100, 10, "EPSG:32615")
    vrts = write_vrts(tmp_path, [SceneMap("a", "a", {"classes": a}), SceneMap("b", "b", {"classes": b})])
    assert sorted(p.name for p in vrts) == ["classes_epsg32614.vrt", "classes_epsg32615.vrt"]
    with rasterio.open(tmp_path / "classes_epsg32615.vrt") as src:
        assert src.crs.to_epsg() == 32615 and src.read(1).tolist() == [[1, 1], [1, 1]]


def test_class_areas_against_pixel_counts_and_the_pixel_area(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4, (700, 300)).astype(np.uint8)  # more rows than one strip
    data[:5] = NODATA_CLASS
    path = write_map(tmp_path / "m.tif", data, 0, 7000, 10)
    areas = class_areas(path, ["w", "x", "y", "z", "never"])
    for name, pixels, hectares in areas:
        k = "wxyz".index(name)
        assert pixels == int((data == k).sum())
        assert hectares == pytest.approx(pixels * 10 * 10 / 1e4)
    assert [a[0] for a in areas] == ["w", "x", "y", "z"]  # absent classes are not listed


def test_geographic_areas_shrink_towards_the_pole(tmp_path: Path) -> None:
    data = np.zeros((2, 1), np.uint8)
    data[1, 0] = 1  # map row 1 is the southern one (60.0-60.1 N); row 0 spans 60.1-60.2 N
    path = write_map(tmp_path / "g.tif", data, 10.0, 60.2, 0.1, "EPSG:4326")
    areas = {name: ha for name, _, ha in class_areas(path, ["north", "south"])}

    def ellipsoid_ha(lat0: float, lat1: float) -> float:
        """A 0.1-degree cell on WGS84: M N cos(lat) dlat dlon at mid-latitude (M, N the radii of curvature)."""
        a, e2 = 6378137.0, 0.00669437999014
        lat = np.radians((lat0 + lat1) / 2)
        w = 1 - e2 * np.sin(lat) ** 2
        m, n = a * (1 - e2) / w ** 1.5, a / w ** 0.5
        return m * n * np.cos(lat) * np.radians(lat1 - lat0) * np.radians(0.1) / 1e4

    assert areas["south"] == pytest.approx(ellipsoid_ha(60.0, 60.1), rel=1e-4)
    assert areas["north"] == pytest.approx(ellipsoid_ha(60.1, 60.2), rel=1e-4)
    assert areas["north"] < areas["south"]


def test_classify_writes_vrts_mosaic_collection_and_areas_for_the_folder(
        scenes_dir: Path, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in (LANDSAT, NAIP):
        shutil.copyfile(scenes_dir / name, inputs / name)
    out = tmp_path / "maps"
    assert classify(model, [inputs], out, "--mosaic-crs", "EPSG:4326") == 0
    printed = capsys.readouterr().out
    assert "folder products: 2 map(s) in" in printed and "collection.json" in printed

    maps = sorted(out.glob("*_classes.tif"))
    crs_of = {}
    for path in maps:
        with rasterio.open(path) as src:
            crs_of[path.name] = src.crs.to_epsg()
    assert len(set(crs_of.values())) == 2  # the two scenes are in different CRSs: one VRT each
    for path in maps:
        vrt = out / f"classes_epsg{crs_of[path.name]}.vrt"
        with rasterio.open(vrt) as v, rasterio.open(path) as m:
            window = v.window(*m.bounds)
            np.testing.assert_array_equal(v.read(1, window=window.round_offsets().round_lengths()), m.read(1))

    with rasterio.open(out / "mosaic.tif") as mosaic:
        assert mosaic.crs.to_epsg() == 4326
        assert mosaic.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert json.loads(mosaic.tags()["CLASSES"]) == json.loads(rasterio.open(maps[0]).tags()["CLASSES"])
        values = set(np.unique(mosaic.read(1)).tolist())
    assert values - {NODATA_CLASS} and values <= set(range(10)) | {NODATA_CLASS}

    rows = list(csv.DictReader((out / "areas.csv").open()))
    for path in maps:
        stem = path.name.removesuffix("_classes.tif")
        with rasterio.open(path) as src:
            counts = np.bincount(src.read(1).ravel(), minlength=256)
        mine = {r["class"]: int(r["pixels"]) for r in rows if r["map"] == stem}
        assert sum(mine.values()) == int(counts[:NODATA_CLASS].sum()) > 0
    assert any(r["map"] == "mosaic" for r in rows)

    collection = pystac.Collection.from_file(str(out / "collection.json"))
    items = list(collection.get_items())
    assert sorted(i.id for i in items) == sorted(p.stem for p in maps)
    west, south, east, north = collection.extent.spatial.bboxes[0]
    for item in items:
        assert west <= item.bbox[0] and south <= item.bbox[1] and item.bbox[2] <= east and item.bbox[3] <= north
    doc = json.loads((out / "collection.json").read_text())
    assert any("mlm" in url for url in doc["stac_extensions"])
    assert doc["mlm:output"][0]["classification:classes"][0]["name"] == json.loads(
        rasterio.open(maps[0]).tags()["CLASSES"])[0]
    assert {"mosaic", "areas", "model"} <= set(doc["assets"])


def test_a_bad_mosaic_crs_is_refused_before_any_work(scenes_dir: Path, model: Path, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """capfd: GDAL's own "ERROR 1: PROJ" line went to the process's stderr before geossl's (#23 sweep)."""
    out = tmp_path / "maps"
    assert classify(model, [scenes_dir / LANDSAT], out, "--mosaic-crs", "EPSG:999999") != 0
    err = capfd.readouterr().err.strip()
    assert err.startswith("geossl classify: error: --mosaic-crs EPSG:999999: not a CRS") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert not list(out.glob("*_classes.tif")) if out.exists() else True
