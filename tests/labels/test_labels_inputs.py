"""Labels as geodata: bad input is one line naming the file; unusable labels are skipped and counted;
the split helpers against reference formulas written here."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from bench.synthetic import make_tiny_encoder
from geossl.cli import main
from geossl.labels.catalog import build_catalog
from geossl.labels.chips import build_label_chips
from geossl.labels.label_raster import LabelRaster
from geossl.labels.layers import read_label_layer
from geossl.labels.options import LabelOptions, parse_class_names
from geossl.labels.placement import outside_hint
from geossl.labels.split import deal_blocks, random_split
from geossl.models.encoder import read_meta

LANDSAT = "scenes/landsat7_300m_RGB.byte.tif"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-band encoder at 300 m (Landsat's GSD: no resampling), 8 px chips."""
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc", 3, img_size=8, gsd=300.0,
                             mean=[60.0] * 3, std=[30.0] * 3)


@pytest.fixture(scope="module")
def landsat(shared_data: Path) -> Path:
    return shared_data / LANDSAT


def probe_cli(capsys: pytest.CaptureFixture[str], encoder: Path, out: Path, *args: str) -> tuple[int, str]:
    rc = main(["probe", "--encoder", str(encoder), "--out", str(out), "--workers", "0", *args])
    return rc, capsys.readouterr().err.strip()


def write(frame: gpd.GeoDataFrame, path: Path) -> Path:
    with warnings.catch_warnings():  # pyogrio warns about a layer without CRS: that is the point of one test
        warnings.simplefilter("ignore")
        frame.to_file(path, driver="GPKG" if path.suffix == ".gpkg" else "GeoJSON")
    return path


def scene_points(landsat: Path, n: int = 4) -> list[shapely.Point]:
    with rasterio.open(landsat) as src:
        left, bottom, right, top = src.bounds
    return [shapely.Point(x, (bottom + top) / 2) for x in np.linspace(left + 60_000, right - 60_000, n)]


@pytest.mark.parametrize("case", ["empty", "no_field", "lines", "mixed", "no_crs", "missing", "outside"])
def test_bad_label_layers_are_one_line_naming_the_file(case: str, encoder: Path, landsat: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    pts = scene_points(landsat)
    crs = "EPSG:32618"
    path = tmp_path / f"{case}.gpkg"
    expected = {"empty": "has no features", "no_field": "no label field", "lines": "geometry type LineString",
                "mixed": "mixes points and polygons", "no_crs": "has no CRS", "missing": "labels file not found",
                "outside": "no chip could be cut"}[case]
    if case == "empty":
        write(gpd.GeoDataFrame({"label": []}, geometry=[], crs=crs), path)
    elif case == "no_field":
        write(gpd.GeoDataFrame({"kind": ["a"] * 4}, geometry=pts, crs=crs), path)
    elif case == "lines":
        write(gpd.GeoDataFrame({"label": ["a"]}, geometry=[shapely.LineString(pts[:2])], crs=crs), path)
    elif case == "mixed":
        write(gpd.GeoDataFrame({"label": ["a", "b"]}, geometry=[pts[0], pts[1].buffer(1000)], crs=crs), path)
    elif case == "no_crs":
        write(gpd.GeoDataFrame({"label": ["a"] * 4}, geometry=pts), path)
    elif case == "outside":  # the labels are in the Pacific; the scene is the Bahamas
        write(gpd.GeoDataFrame({"label": ["a", "b"]}, geometry=[shapely.Point(-150, 0), shapely.Point(-151, 1)],
                               crs="EPSG:4326"), path)
    rc, err = probe_cli(capsys, encoder, tmp_path / "out", "--labels", str(path), "--scenes", str(landsat))
    assert rc == 1 and expected in err and str(path) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if case == "outside":  # really elsewhere: both CRSs named, no CRS claimed to fit
        assert "outside 2" in err and "all 2 labels lie outside every scene (labels in EPSG:4326, scenes in " \
            "EPSG:32618): if the labels are in another CRS than their file says" in err


@pytest.mark.parametrize(("kind", "claimed", "true_crs"), [
    ("points", "EPSG:4326", "EPSG:32618"),  # UTM metres in a file that says lon/lat
    ("polygons", "EPSG:4326", "EPSG:32618"),
    ("polygons", "EPSG:32618", "EPSG:4326"),  # lon/lat in a file that says UTM
])
def test_labels_in_the_wrong_crs_are_named_with_the_crs_that_fits(
        kind: str, claimed: str, true_crs: str, encoder: Path, landsat: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23): labels whose file gives the wrong CRS all fell "outside" the scenes with no hint.
    The error names both CRSs and, since the coordinates read in another CRS land on the scene, that one."""
    shapes = [p.buffer(2000) if kind == "polygons" else p for p in scene_points(landsat)]
    frame = gpd.GeoDataFrame({"label": ["a", "b"] * 2}, geometry=shapes, crs="EPSG:32618").to_crs(true_crs)
    path = write(frame.set_crs(claimed, allow_override=True), tmp_path / "labels.gpkg")
    rc, err = probe_cli(capsys, encoder, tmp_path / "out", "--labels", str(path), "--scenes", str(landsat))
    assert rc == 1 and len(err.splitlines()) == 1 and str(path) in err and "no chip could be cut" in err, err
    assert (f"all 4 labels lie outside every scene (labels in {claimed}, scenes in EPSG:32618): read as {true_crs}, "
            f"their coordinates fall on the scenes, so the labels' CRS is probably wrong: set it with "
            f"GeoDataFrame.set_crs('{true_crs}', allow_override=True) or ogr2ogr -a_srs {true_crs}") in err, err


def test_nearly_all_labels_outside_is_named_but_some_inside_is_not(encoder: Path, landsat: Path,
                                                                    tmp_path: Path) -> None:
    """The hint is for (nearly) all labels outside: 19 of 20 is named, 2 of 4 is an ordinary skip count."""
    inside = scene_points(landsat, 2)
    far = [shapely.Point(-150 + i / 10, 0) for i in range(19)]
    layer = read_label_layer(write(gpd.GeoDataFrame({"label": ["a"] * 20}, geometry=[
        *gpd.GeoSeries(inside[:1], crs="EPSG:32618").to_crs("EPSG:4326"), *far], crs="EPSG:4326"),
        tmp_path / "l.gpkg"))
    catalog = build_catalog([str(landsat)], read_meta(encoder))
    hint = outside_hint(layer, catalog, 19)
    assert hint.startswith("19 of 20 labels lie outside every scene (labels in EPSG:4326, scenes in EPSG:32618)")
    assert outside_hint(layer, catalog, 2) == ""


@pytest.mark.parametrize("args, expected", [
    (["--labels", "x.gpkg"], "need --scenes"),
    (["--scenes", "s.tif"], "--scenes needs --labels or --label-raster"),
    (["--labels", "x.gpkg", "--label-raster", "y.tif", "--scenes", "s.tif"], "either --labels"),
    (["--labels", "x.gpkg", "--data", "d", "--scenes", "s.tif"], "--data/--splits are for labelled patches"),
    (["--labels", "x.gpkg", "--scenes", "s.tif", "--min-purity", "0"], "--min-purity"),
    (["--labels", "x.gpkg", "--scenes", "s.tif", "--block-size", "-5"], "--block-size"),
])
def test_conflicting_flags_are_one_line(args: list[str], expected: str, encoder: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = probe_cli(capsys, encoder, tmp_path / "out", *args)
    assert rc == 1 and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_float_label_raster_and_no_overlap_are_one_line(encoder: Path, landsat: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    profile = dict(driver="GTiff", width=4, height=4, count=1, crs="EPSG:4326",
                   transform=rasterio.transform.from_origin(-150, 1, 0.01, 0.01))
    floats = tmp_path / "floats.tif"
    with rasterio.open(floats, "w", dtype="float32", **profile) as dst:
        dst.write(np.ones((1, 4, 4), dtype=np.float32))
    rc, err = probe_cli(capsys, encoder, tmp_path / "o1", "--label-raster", str(floats), "--scenes", str(landsat))
    assert rc == 1 and str(floats) in err and "must be integers" in err
    far = tmp_path / "far.tif"
    with rasterio.open(far, "w", dtype="uint8", **profile) as dst:
        dst.write(np.ones((1, 4, 4), dtype=np.uint8))
    rc, err = probe_cli(capsys, encoder, tmp_path / "o2", "--label-raster", str(far), "--scenes", str(landsat))
    assert rc == 1 and str(far) in err and "no chip of any scene is labelled" in err


def test_uint32_label_rasters_keep_codes_above_int32(encoder: Path, landsat: Path, tmp_path: Path) -> None:
    """Regression (#23): uint32 label rasters were refused as "not integers of at most 32 bits". They are
    read whole: a code above 2**31 - 1 keeps its value (an int32 strip would clip it to 2147483647)."""
    big = 3_000_000_000
    with rasterio.open(landsat) as src:
        crs, (left, top) = src.crs, (src.bounds.left, src.bounds.top)
    codes = np.full((64, 64), 7, dtype=np.uint32)
    codes[:, 32:] = big
    codes[:8, :8] = np.iinfo(np.uint32).max  # nodata
    path = tmp_path / "codes.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint32", crs=crs,
                       transform=rasterio.transform.from_origin(left, top, 300.0375, 300.0375),
                       nodata=np.iinfo(np.uint32).max) as dst:
        dst.write(codes, 1)
    scene = build_catalog([str(landsat)], read_meta(encoder)).scenes[0]
    with LabelRaster(path) as labels:
        chips = list(labels.chip_majorities(scene, 8))
    assert {majority for _, _, majority, _, _ in chips} == {7, big}
    assert all((row, col) != (0, 0) for row, col, *_ in chips)  # the nodata corner is no label


def test_outside_near_edge_and_nodata_labels_are_skipped_and_counted(encoder: Path, landsat: Path,
                                                                     shared_data: Path, tmp_path: Path) -> None:
    """Landsat has a nodata (0) collar: a point there is skipped as nodata, one at a corner as near the
    edge, one in the Pacific as outside; a broken scene among the scenes is skipped too."""
    with rasterio.open(landsat) as src:
        valid = (src.read() != 0).all(axis=0)
        collar = np.argwhere(~valid)
        r, c = collar[len(collar) // 2]
        in_collar = shapely.Point(src.xy(int(r), int(c)))
        corner = shapely.Point(src.xy(1, 1))
        crs = src.crs
        # points whose whole 8 px chip is valid: far from the collar
        inner = [(r, c) for r in range(100, 700, 60) for c in range(100, 700, 60)
                 if valid[r - 6 : r + 6, c - 6 : c + 6].all()]
        good = [shapely.Point(src.xy(r, c)) for r, c in inner[:12]]
    assert len(good) == 12
    frame = gpd.GeoDataFrame({"label": ["a", "b"] * 6 + ["a", "a"]}, geometry=good + [in_collar, corner], crs=crs)
    frame = pd_concat(frame, gpd.GeoDataFrame({"label": ["b"]}, geometry=[shapely.Point(-150, 0)], crs="EPSG:4326"))
    path = write(frame, tmp_path / "labels.gpkg")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    result = build_label_chips(LabelOptions(scenes=[str(landsat), str(broken)], labels=path,
                                            fractions=(0.5, 0.25, 0.25)), read_meta(encoder), tmp_path / "out")
    report = result.report
    assert report["skipped"] == {"near_edge": 1, "nodata": 1, "outside": 1}
    assert report["chips"] == 12 and report["scenes"]["skipped"] == 1 and str(broken) in report["scenes"]["problems"][0]


def pd_concat(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat([a, b.to_crs(a.crs)], ignore_index=True), crs=a.crs)


def test_parse_class_names(tmp_path: Path) -> None:
    assert parse_class_names("1=Water, 2=Trees") == {1: "Water", 2: "Trees"}
    table = tmp_path / "names.csv"
    table.write_text("value,name\n1,Water\n7,Built-up\n")
    assert parse_class_names(str(table)) == {1: "Water", 7: "Built-up"}
    with pytest.raises(ValueError, match="integer values"):
        parse_class_names("x=Water")
    with pytest.raises(ValueError, match="no class name"):
        parse_class_names("3")


@pytest.mark.parametrize(("text", "message"), [
    ("1=Water,1=Trees", "value 1 is named twice ('Water' and 'Trees')"),
    ("1=Water,2=Water", "values 1 and 2 are both named 'Water'"),
])
def test_class_names_given_twice_are_refused(text: str, message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Last-wins would silently mislabel a class (issue #23); a CSV says the same, naming the file."""
    with pytest.raises(ValueError, match=re.escape(f"--class-names: {message}")):
        parse_class_names(text)
    table = tmp_path / "names.csv"
    table.write_text("value,name\n" + text.replace(",", "\n").replace("=", ",") + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{table}: {message}")):
        parse_class_names(str(table))
    rc = main(["probe", "--encoder", str(tmp_path / "enc"), "--out", str(tmp_path / "out"), "--label-raster",
               str(tmp_path / "lc.tif"), "--scenes", str(tmp_path / "s.tif"), "--class-names", text])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith(f"geossl probe: error: --class-names: {message}") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_self_intersecting_polygons_are_repaired_and_counted(encoder: Path, landsat: Path, tmp_path: Path) -> None:
    """A bow-tie polygon (a digitising slip) made GEOS raise "TopologyException: side location conflict"
    when chips were intersected with it; it is repaired with make_valid (two triangles), counted and
    reported. A "polygon" with no area even once repaired is skipped and counted."""
    with rasterio.open(landsat) as src:
        valid = (src.read() != 0).all(axis=0)
        centres = [(r, c) for r in range(150, 650, 70) for c in range(150, 650, 70)
                   if valid[r - 25 : r + 25, c - 25 : c + 25].all()][:12]
        crs, res = src.crs, src.res[0]
        xy = [src.xy(r, c) for r, c in centres]
    assert len(xy) == 12
    half = 20 * res  # 40 px squares hold several 8 px chips
    polygons = [shapely.box(x - half, y - half, x + half, y + half) for x, y in xy[1:]]
    x, y = xy[0]
    bowtie = shapely.Polygon([(x - half, y - half), (x + half, y + half), (x + half, y - half),
                              (x - half, y + half), (x - half, y - half)])
    flat = shapely.Polygon([(x, y), (x + half, y), (x + 2 * half, y), (x, y)])  # no area at all
    assert not bowtie.is_valid and not flat.is_valid
    labels = ["ab"[i % 2] for i in range(12)] + ["a"]
    path = write(gpd.GeoDataFrame({"label": labels}, geometry=[bowtie, *polygons, flat], crs=crs),
                 tmp_path / "labels.gpkg")
    result = build_label_chips(LabelOptions(scenes=[str(landsat)], labels=path, chips_per_polygon=2,
                                            fractions=(0.5, 0.25, 0.25)), read_meta(encoder), tmp_path / "out")
    report = result.report
    assert report["repaired_polygons"] == 1 and report["skipped"] == {"invalid_geometry": 1}
    assert report["chips"] == 24
    rows = gpd.read_file(tmp_path / "out" / "chips.gpkg")
    assert (rows["source_row"] == 0).sum() == 2  # the bow-tie's chips: inside one of its two triangles


def test_random_split_keeps_groups_whole_and_matches_a_stratified_split_of_groups() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), rng.integers(1, 5, size=60))
    labels = np.array(["ab"[g % 2] for g in groups])
    splits = random_split(labels, groups, (0.7, 0.1, 0.2), seed=3)
    for g in np.unique(groups):
        assert len(set(splits[groups == g])) == 1
    # 30 groups per class: 21 / 3 / 6 groups, whatever their chip counts
    for cls in "ab":
        first = {g: splits[groups == g][0] for g in np.unique(groups[labels == cls])}
        assert sorted(list(first.values()).count(s) for s in ("train", "val", "test")) == [3, 6, 21]


def test_deal_blocks_gives_whole_blocks_near_the_target_shares() -> None:
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 200, size=3000)
    labels = np.where(rng.random(3000) < 0.5, "a", "b")
    per_block = deal_blocks(blocks, labels, (0.7, 0.1, 0.2), seed=0)
    chip_split = per_block[blocks]
    shares = np.bincount(chip_split, minlength=3) / chip_split.size
    assert np.allclose(shares, [0.7, 0.1, 0.2], atol=0.03)
    # reference: a block's majority class decides its group; every group reaches every split
    for cls in "ab":
        majority = [b for b in np.unique(blocks) if (labels[blocks == b] == cls).mean() > 0.5]
        assert set(per_block[majority]) == {0, 1, 2}
    assert np.array_equal(per_block, deal_blocks(blocks, labels, (0.7, 0.1, 0.2), seed=0))
