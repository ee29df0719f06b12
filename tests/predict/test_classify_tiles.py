"""Tile classification (EuroSAT MS GeoTIFFs, RGB JPEGs), GeoJSON footprints, embeddings, CLI errors, a full
disk while writing maps and tables, tiles far larger than the model's."""

from __future__ import annotations

import csv
import errno
import io
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from PIL import Image
from pyproj import Transformer
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds

from bench.synthetic import make_tiny_model, write_synthetic_scene
from geossl.cli import main
from geossl.predict import classify_tiles, embed
from geossl.predict.geojson import footprint_lonlat, signed_area

MS_GLOB = "eurosat-ms/Forest/Forest_1*.tif"
RGB_GLOB = "eurosat-rgb/River/River_1?.jpg"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tile-models")
    return {
        "rgb": make_tiny_model(root / "rgb", img_size=64),
        "ms": make_tiny_model(root / "ms", 13, img_size=64, mean=[1500.0] * 13, std=[1000.0] * 13),
    }


def test_footprint_is_closed_ccw_lonlat() -> None:
    from rasterio.transform import Affine

    ring = footprint_lonlat(Affine(10, 0, 500000, 0, -10, 4649776), 0, 0, 64, 64, "EPSG:32633")
    assert ring[0] == ring[-1] and signed_area(ring) > 0
    lon, lat = ring[0]
    assert 14.9 < lon < 15.1 and 41.9 < lat < 42.1  # x = lon first (EPSG:4326's own order is lat, lon)
    south_up = footprint_lonlat(Affine(10, 0, 500000, 0, 10, 4649136), 0, 0, 64, 64, "EPSG:32633")
    assert signed_area(south_up) > 0


@pytest.mark.slow
def test_eurosat_ms_tiles_csv_and_geojson(shared_data: Path, models: dict[str, Path], tmp_path: Path) -> None:
    files = sorted((shared_data / "eurosat-ms").glob(MS_GLOB.split("/", 1)[1]))
    assert len(files) > 5
    res = classify_tiles(models["ms"], str(shared_data / MS_GLOB), tmp_path, progress=False)
    assert res.tiles == len(files) and res.geojson == tmp_path / "predictions.geojson"
    rows = list(csv.DictReader(open(res.csv)))
    assert [r["path"] for r in rows] == [str(f) for f in files]
    assert list(rows[0]) == ["path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    for r in rows:
        p = [float(r["probability"]), float(r["probability_2"]), float(r["probability_3"])]
        assert 1.0 >= p[0] >= p[1] >= p[2] >= 0.0 and sum(p) <= 1.0 + 1e-3
        assert len({r["class"], r["class_2"], r["class_3"]}) == 3
    features = json.loads(res.geojson.read_text())["features"]
    assert len(features) == len(files)
    for feature, f in zip(features, files, strict=True):
        assert feature["properties"]["path"] == str(f)
        assert feature["properties"]["class"] == rows[files.index(f)]["class"]
        polygon = shapely.Polygon(feature["geometry"]["coordinates"][0])
        with rasterio.open(f) as src:  # the tile centre, transformed independently, lies inside
            cx, cy = src.xy(src.height / 2, src.width / 2)
            lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
        assert polygon.contains(shapely.Point(lon, lat)) and polygon.exterior.is_ccw


@pytest.mark.slow
def test_rgb_jpegs_give_csv_without_geojson(shared_data: Path, models: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "predictions.geojson").write_text("stale")
    code = main(["classify", "--model", str(models["rgb"]), "--input", str(shared_data / RGB_GLOB),
                 "--out", str(tmp_path), "--quiet", "--overwrite"])
    assert code == 0
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert len(table) == 10 and table["path"].str.endswith(".jpg").all()
    assert set(table["class"]) <= set(json.loads((models["rgb"] / "head.json").read_text())["classes"])
    assert not (tmp_path / "predictions.geojson").exists()  # a stale file is not left to pass as this run's
    assert "not georeferenced" in capsys.readouterr().out


@pytest.mark.slow
def test_unreadable_tile_is_skipped_and_reported(shared_data: Path, models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    for f in sorted((shared_data / "eurosat-rgb" / "River").glob("River_1?.jpg"))[:3]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = classify_tiles(models["rgb"], str(folder), tmp_path / "out", progress=False)
    assert res.tiles == 3 and len(res.skipped) == 1 and "broken.jpg" in res.skipped[0]
    assert "1 unreadable skipped" in res.summary()


@pytest.mark.slow
def test_embeddings_geoparquet(shared_data: Path, scenes_dir: Path, models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "emb.parquet"
    res = embed(models["ms"], str(shared_data / MS_GLOB), out, progress=False)
    table = gpd.read_parquet(out)
    assert len(table) == res.rows > 5 and table.crs.equals("OGC:CRS84")
    assert table.geometry.notna().all() and table.geometry.is_valid.all()
    assert np.stack(table["embedding"]).shape == (res.rows, 192)
    assert (table[["col_off", "row_off"]] == 0).all().all() and (table["width"] == 64).all()
    assert table["crs"].str.startswith("EPSG:326").all()
    # Scene windows: one row per valid grid window, footprints inside the scene's.
    out2 = tmp_path / "landsat.parquet"
    rgb = tmp_path / "rgb-encoder"  # a model folder is also an encoder folder
    shutil.copytree(models["rgb"], rgb)
    embed(rgb, str(scenes_dir / "landsat7_300m_RGB.byte.tif"), out2, tile_size=64, progress=False)
    windows = gpd.read_parquet(out2)
    assert len(windows) > 50 and (windows["valid_fraction"] >= 0.5).all()
    with rasterio.open(scenes_dir / "landsat7_300m_RGB.byte.tif") as s:
        west, south, east, north = transform_bounds(s.crs, "EPSG:4326", *s.bounds, densify_pts=21)
    minx, miny, maxx, maxy = windows.total_bounds
    assert west - 1e-6 <= minx and maxx <= east + 1e-6 and south - 1e-6 <= miny and maxy <= north + 1e-6
    # Not georeferenced: plain rows, null geometry, still readable.
    out3 = tmp_path / "jpeg.parquet"
    embed(models["rgb"], str(shared_data / RGB_GLOB), out3, progress=False)
    jpeg = pd.read_parquet(out3)
    assert len(jpeg) == 10 and jpeg["geometry"].isna().all()
    with pytest.raises(FileExistsError, match="emb.parquet already exists"):
        embed(models["ms"], str(shared_data / MS_GLOB), out, progress=False)


@pytest.mark.slow
def test_cli_errors_are_one_line(shared_data: Path, models: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        return err

    ms = str(shared_data / MS_GLOB)
    encoder_only = tmp_path / "enc"
    encoder_only.mkdir()
    for name in ("model.safetensors", "geossl.json"):
        shutil.copy(models["rgb"] / name, encoder_only / name)
    assert "has no head" in run("classify", "--model", str(encoder_only), "--input", ms, "--out", str(tmp_path / "o"))
    err = run("classify", "--model", str(models["rgb"]), "--input", ms, "--out", str(tmp_path / "o"))
    assert "Forest_1" in err and "has 13 bands, the model expects 3 bands" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "not writable" in run("classify", "--model", str(models["ms"]), "--input", ms, "--out", str(blocker / "o"))
    assert "nothing matches" in run("classify", "--model", str(models["ms"]), "--input", str(tmp_path / "*.tif"),
                                    "--out", str(tmp_path / "o"))
    assert main(["classify", "--model", str(models["ms"]), "--input", ms, "--out", str(tmp_path / "o"), "--quiet"]) == 0
    capsys.readouterr()
    assert "already exist" in run("classify", "--model", str(models["ms"]), "--input", ms, "--out", str(tmp_path / "o"))


def test_a_second_classify_into_a_folder_in_use_is_refused(shared_data: Path, models: dict[str, Path],
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23): two classify runs into one --out both passed the existing-output check, and the
    later one replaced the other's maps. The folder is now locked while a run writes it."""
    from geossl.io import RunLock

    out = tmp_path / "o"
    ms = str(shared_data / MS_GLOB)
    with RunLock(out, "geossl classify", "--out"):  # another classify holds the folder
        assert main(["classify", "--model", str(models["ms"]), "--input", ms, "--out", str(out), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "another geossl classify" in err and "choose another --out" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    assert main(["classify", "--model", str(models["ms"]), "--input", ms, "--out", str(out), "--quiet"]) == 0
    assert len(list(out.glob("*.csv"))) == 1  # the tiles table, written once the folder is free


def classify_cli(model: Path, inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return ["classify", "--model", str(model), "--input", *map(str, inputs), "--out", str(out), "--quiet", *extra]


def visible(folder: Path) -> list[str]:
    """What a user sees in the folder, and any partial file an atomic write left (the lock aside)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock")


@pytest.mark.parametrize("failing", ["classes", "probs"])
def test_a_full_disk_while_writing_a_map_names_it_and_leaves_nothing(
        failing: str, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23): a full disk while writing a map gave no path, and the maps already written blocked a
    rerun. The scene's error names the map being written and says the disk is full; no map of the failed
    scene stays (the class map committed before its probabilities failed is removed); the rerun maps it."""
    import geossl.io as io_module
    import geossl.predict.maps as maps_module

    scene = write_synthetic_scene(tmp_path / "s.tif", 160, 128, nodata=None)
    out = tmp_path / "out"
    real_copy = maps_module.rio_copy

    def copy_until_full(src: object, dst: object, **kwargs: object) -> None:
        if f"s_{failing}.tif" not in Path(str(dst)).name:
            return real_copy(src, dst, **kwargs)
        if failing == "classes":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RasterioIOError("Write failed. See previous exception for details.")  # GDAL's words: no errno

    monkeypatch.setattr(maps_module, "rio_copy", copy_until_full)
    if failing == "probs":
        monkeypatch.setattr(io_module, "disk_is_full", lambda folder: True)
    assert main(classify_cli(models["rgb"], [scene], out, "--probs")) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"geossl classify: error: {scene}: {out / f's_{failing}.tif'}: cannot write (the disk is full)"
    assert visible(out) == ["manifest.jsonl"]  # no map, no partial or stream file
    monkeypatch.undo()
    assert main(classify_cli(models["rgb"], [scene], out, "--probs")) == 0
    assert {"s_classes.tif", "s_probs.tif", "s_tiles.geojson"} <= set(visible(out))


def test_a_full_disk_while_writing_the_tiles_table_leaves_neither_table(
        models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The GeoJSON is complete before the CSV's last rows reach the disk: when they do not fit, the GeoJSON
    went too, else it alone refused the rerun ("predictions.geojson already exists")."""
    import geossl.predict.tiles as tiles_module

    tiles = [write_synthetic_scene(tmp_path / f"t{i}.tif", 64, 64, nodata=None, origin=(5e5 + 640 * i, 5e6))
             for i in range(3)]
    out = tmp_path / "out"

    class FullAtClose(io.StringIO):
        def close(self) -> None:  # the buffered rows are written only now, and do not fit
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiles_module, "open", lambda *args, **kwargs: FullAtClose(), raising=False)
    assert main(classify_cli(models["rgb"], tiles, out)) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"geossl classify: error: {out / 'predictions.csv'}: cannot write (the disk is full)"
    assert visible(out) == []
    monkeypatch.undo()
    assert main(classify_cli(models["rgb"], tiles, out)) == 0
    assert visible(out) == ["predictions.csv", "predictions.geojson"]


def test_a_tile_far_larger_than_the_models_is_named_in_a_warning(
        models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (#23): a 3000 x 3000 JPEG was classified as one tile (about 2 GB) without a word. A tile
    over LARGE_TILE_FACTOR x the model's size is named with the way to map it (small images here: the
    factor is lowered to 2, so 160 px > 2 x 64 px)."""
    import geossl.predict.tiles as tiles_module

    monkeypatch.setattr(tiles_module, "LARGE_TILE_FACTOR", 2)
    rng = np.random.default_rng(0)
    jpeg, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    Image.fromarray(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)).save(jpeg)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(small)  # 2 x 64: no warning
    assert main(classify_cli(models["rgb"], [jpeg, small], tmp_path / "o1", "--no-check-stats")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: {jpeg}: 160x160 px is over 2x the model's 64 px tile, yet classified as one tile "
                        "(one label, memory growing with its size); to map it window by window, georeference it "
                        "(a GeoTIFF with a CRS) and pass --mode scene, or cut it into tiles"]
    scene = write_synthetic_scene(tmp_path / "scene.tif", 160, 160, nodata=None)
    assert main(classify_cli(models["rgb"], [scene], tmp_path / "o2", "--mode", "tiles", "--no-check-stats")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {scene}: 160x160 px is over 2x")
    assert warnings[0].endswith("; to map it window by window, pass --mode scene")
