"""Labels as geodata over the real NAIP scene: a land-cover raster in another CRS and grid, polygons
several chips large, points in a third CRS, and ``geossl classify`` on the probe's model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer

from bench.label_examples import NAIP, NAIP_CLASSES, naip_fields, naip_label_raster
from bench.synthetic import make_tiny_encoder
from geossl.cli import main
from geossl.labels.chips import build_label_chips
from geossl.labels.options import LabelOptions
from geossl.models.encoder import read_meta

pytestmark = pytest.mark.slow
TILE = 16  # at the encoder's 10 m: the 5 m scene is resampled, 160 m chips


@pytest.fixture(scope="module")
def naip(shared_data: Path) -> Path:
    return shared_data / NAIP


@pytest.fixture(scope="module")
def files(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("naip-labels")
    encoder = make_tiny_encoder(out / "enc", 4, img_size=TILE, gsd=10.0, bands=["R", "G", "B", "NIR"],
                                mean=[120.0] * 4, std=[60.0] * 4)
    return {"raster": naip_label_raster(shared_data, out / "landcover_3857.tif"),
            "fields": naip_fields(shared_data, out / "fields.geojson"), "encoder": encoder}


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def reference_majority(raster: Path, row: dict[str, str]) -> tuple[int, float, float]:
    """Majority class, purity and labelled share under a chip, by sampling the label raster at the chip's
    10 m pixel centres transformed with pyproj (not GDAL's warper)."""
    minx, miny, maxx, maxy = (float(row[k]) for k in ("minx", "miny", "maxx", "maxy"))
    step = (maxx - minx) / TILE
    xs, ys = np.meshgrid(minx + step * (np.arange(TILE) + 0.5), maxy - step * (np.arange(TILE) + 0.5))
    with rasterio.open(raster) as lab:
        x, y = Transformer.from_crs(row["crs"], lab.crs, always_xy=True).transform(xs.ravel(), ys.ravel())
        r, c = rasterio.transform.rowcol(lab.transform, x, y)
        data = lab.read(1)
    r, c = np.asarray(r), np.asarray(c)
    inside = (r >= 0) & (r < data.shape[0]) & (c >= 0) & (c < data.shape[1])
    values = data[r[inside], c[inside]]
    values = values[values != 0]
    counts = np.bincount(values, minlength=4)
    return int(counts.argmax()), float(counts.max() / max(values.size, 1)), values.size / xs.size


def test_label_raster_in_another_crs_labels_chips_by_majority(naip: Path, files: dict[str, Path],
                                                              tmp_path: Path) -> None:
    opts = LabelOptions(scenes=[str(naip)], label_raster=files["raster"], class_names=dict(NAIP_CLASSES),
                        min_purity=0.8)
    result = build_label_chips(opts, read_meta(files["encoder"]), tmp_path)
    rows = read_table(result.table)
    assert result.report["kind"] == "raster" and result.report["skipped"].get("impure", 0) > 0
    assert "resampled 5 m -> 10 m" in result.report["scenes"]["reading"][0][0]
    names = {v: k for k, v in NAIP_CLASSES.items()}
    agree = 0
    for row in rows:
        majority, purity, labelled = reference_majority(files["raster"], row)
        agree += names[row["label"]] == majority
        assert purity >= 0.75 and labelled >= 0.85  # GDAL and pyproj may differ on a pixel at class edges
        assert abs(float(row["purity"]) - purity) < 0.05
    assert agree >= 0.98 * len(rows) and len(rows) > 150
    with rasterio.open(tmp_path / rows[0]["path"]) as chip:
        assert chip.count == 4 and chip.res == pytest.approx((10.0, 10.0)) and chip.crs.to_epsg() == 26914


def test_polygon_chips_lie_inside_their_polygon_and_stay_in_one_split(naip: Path, files: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    meta = read_meta(files["encoder"])
    opts = LabelOptions(scenes=[str(naip)], labels=files["fields"], label_field="landcover", chips_per_polygon=3,
                        fractions=(0.5, 0.25, 0.25))
    rows = read_table(build_label_chips(opts, meta, tmp_path / "a", seed=0).table)
    fields = gpd.read_file(files["fields"]).to_crs("EPSG:26914")
    per_polygon: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        per_polygon.setdefault(int(row["source_row"]), []).append(row)
        box = shapely.box(*(float(row[k]) for k in ("minx", "miny", "maxx", "maxy")))
        assert fields.geometry.iloc[int(row["source_row"])].buffer(1e-6).contains(box)
    assert all(len(chips) == 3 for chips in per_polygon.values())  # 400 m fields hold 4 whole 160 m chips
    assert all(len({c["split"] for c in chips}) == 1 for chips in per_polygon.values())
    again = read_table(build_label_chips(opts, meta, tmp_path / "b", seed=0).table)
    other = read_table(build_label_chips(opts, meta, tmp_path / "c", seed=5).table)
    key = [(r["col_off"], r["row_off"]) for r in rows]
    assert key == [(r["col_off"], r["row_off"]) for r in again]
    assert key != [(r["col_off"], r["row_off"]) for r in other]


def test_points_in_a_third_crs_are_centred_on_their_chip(naip: Path, files: dict[str, Path], tmp_path: Path) -> None:
    """Points in EPSG:3035 (LAEA Europe) over a scene in EPSG:26914: the chip centre is within one pixel."""
    with rasterio.open(naip) as src:
        left, bottom, right, top = src.bounds
    xs, ys = np.linspace(left + 300, right - 300, 5), np.linspace(bottom + 300, top - 300, 4)
    pts = [shapely.Point(x, y) for x in xs for y in ys]
    frame = gpd.GeoDataFrame({"class": ["a", "b"] * 10}, geometry=pts, crs="EPSG:26914").to_crs("EPSG:3035")
    path = tmp_path / "pts_3035.gpkg"
    frame.to_file(path, driver="GPKG")
    result = build_label_chips(LabelOptions(scenes=[str(naip)], labels=path), read_meta(files["encoder"]),
                               tmp_path / "o")
    rows = read_table(result.table)
    assert len(rows) == 20 and result.report["label_field"] == "class"
    for row in rows:
        cx = (float(row["minx"]) + float(row["maxx"])) / 2
        cy = (float(row["miny"]) + float(row["maxy"])) / 2
        p = pts[int(row["source_row"])]
        assert abs(cx - p.x) <= 5.0 + 1e-6 and abs(cy - p.y) <= 5.0 + 1e-6  # half a 10 m pixel


def test_probe_from_a_label_raster_then_classify_the_scene(naip: Path, files: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe"
    rc = main(["probe", "--encoder", str(files["encoder"]), "--label-raster", str(files["raster"]),
               "--scenes", str(naip), "--class-names", "1=Water,2=Vegetation,3=Other", "--split", "spatial",
               "--block-size", "500", "--out", str(out), "--workers", "0", "--no-random-baseline",
               "--weight-decays", "1e-3", "--max-iter", "30"])
    assert rc == 0
    printed = capsys.readouterr()
    assert "spatial split" in printed.out and "labels: " in printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["Other", "Vegetation", "Water"]
    assert metrics["labels"]["split"]["mode"] == "spatial" and metrics["labels"]["split"]["block_size_m"] == 500
    assert (out / "chips.gpkg").is_file() and len(gpd.read_file(out / "chips.gpkg")) == metrics["labels"]["chips"]
    rc = main(["classify", "--model", str(out / "model"), "--input", str(naip), "--out", str(tmp_path / "map"),
               "--no-preview", "--quiet"])
    assert rc == 0
    maps = list((tmp_path / "map").glob("*.tif"))
    assert maps
    with rasterio.open(maps[0]) as m:
        assert m.crs.to_epsg() == 26914 and m.count >= 1


def test_scenes_on_s3_give_the_same_chips_as_local_files(moto_server: str, naip: Path, files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from geossl.data.s3 import s3_client

    s3_client().create_bucket(Bucket="scenes")
    s3_client().upload_file(str(naip), "scenes", f"naip/{naip.name}")
    opts = dict(label_raster=files["raster"], class_names=dict(NAIP_CLASSES))
    meta = read_meta(files["encoder"])
    remote = build_label_chips(LabelOptions(scenes=["s3://scenes/naip/"], **opts), meta, tmp_path / "s3")
    local = build_label_chips(LabelOptions(scenes=[str(naip)], **opts), meta, tmp_path / "local")
    remote_rows, local_rows = read_table(remote.table), read_table(local.table)
    assert remote_rows[0]["scene"] == f"/vsis3/scenes/naip/{naip.name}" and len(remote_rows) == len(local_rows)
    for a, b in zip(remote_rows[::25], local_rows[::25], strict=True):
        assert (a["label"], a["col_off"], a["row_off"]) == (b["label"], b["col_off"], b["row_off"])
        with rasterio.open(tmp_path / "s3" / a["path"]) as ra, rasterio.open(tmp_path / "local" / b["path"]) as rb:
            assert np.array_equal(ra.read(), rb.read())


def test_min_overlap_below_one_allows_chips_overhanging_the_polygon(naip: Path, files: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    opts = LabelOptions(scenes=[str(naip)], labels=files["fields"], label_field="landcover", chips_per_polygon=10,
                        min_overlap=0.6, fractions=(0.5, 0.25, 0.25))
    rows = read_table(build_label_chips(opts, read_meta(files["encoder"]), tmp_path).table)
    fields = gpd.read_file(files["fields"]).to_crs("EPSG:26914")
    covered = []
    for row in rows:
        box = shapely.box(*(float(row[k]) for k in ("minx", "miny", "maxx", "maxy")))
        covered.append(box.intersection(fields.geometry.iloc[int(row["source_row"])]).area / box.area)
    assert min(covered) >= 0.6 - 1e-6 and min(covered) < 0.99  # some overhang, never more than allowed
    assert max(np.bincount([int(r["source_row"]) for r in rows])) > 4  # more than the 4 whole chips inside
