"""Labels as geodata on the real EuroSAT MS patches, taken as 820 scenes in several UTM zones.

The label files are built by the test itself (bench/label_examples.py): centre points in EPSG:4326
(GeoJSON) and footprints as polygons (GeoPackage). Probing from the points must read exactly the
pixels of the class-folder dataset, and so give exactly its features and accuracy.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import safetensors.torch
import torch
from pyproj import Transformer

from bench.label_examples import eurosat_ms_labels
from bench.synthetic import make_tiny_encoder
from geossl.labels.chips import build_label_chips
from geossl.labels.options import LabelOptions
from geossl.models.encoder import read_meta
from geossl.probe.run import ProbeOptions, run_probe

pytestmark = pytest.mark.slow
FAST = dict(weight_decays=[1e-2, 1e-4], max_iter=30, workers=0, random_baseline=False)


@pytest.fixture(scope="module")
def ms(shared_data: Path) -> Path:
    return shared_data / "eurosat-ms"


@pytest.fixture(scope="module")
def label_files(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return eurosat_ms_labels(shared_data, tmp_path_factory.mktemp("labels"))


@pytest.fixture(scope="module")
def encoder13(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc13", 13, img_size=64, gsd=10.0)


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_points_probe_equals_the_class_folder_probe(ms: Path, label_files: tuple[Path, Path], encoder13: Path,
                                                    tmp_path: Path) -> None:
    points, _ = label_files
    geo = run_probe(ProbeOptions(encoder=str(encoder13), data=ms, out=tmp_path / "geo",
                                 labels=LabelOptions(scenes=[str(ms)], labels=points), **FAST))
    rows = read_table(tmp_path / "geo" / "chips.csv")
    with open(ms / "labels.csv", newline="") as fh:
        truth = list(csv.DictReader(fh))
    assert len(rows) == len(truth) == 820 and geo["labels"]["skipped"] == {}
    # each point's chip is its own file, whole: same pixels, same georeferencing
    for row, true in zip(rows, truth, strict=True):
        assert Path(row["scene"]) == ms / true["path"] and row["label"] == true["label"]
        assert (int(row["col_off"]), int(row["row_off"]), int(row["size"])) == (0, 0, 64)
    for row in rows[::41]:
        with rasterio.open(tmp_path / "geo" / row["path"]) as chip, rasterio.open(row["scene"]) as src:
            assert np.array_equal(chip.read(), src.read()) and chip.crs == src.crs
            assert chip.transform.almost_equals(src.transform, precision=1e-9)
    # the same files as a class-folder set with the same split
    split_csv = tmp_path / "splits.csv"
    with open(split_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        writer.writerows([Path(r["scene"]).relative_to(ms).as_posix(), r["label"], r["split"]] for r in rows)
    folder = run_probe(ProbeOptions(encoder=str(encoder13), data=ms, splits=split_csv, out=tmp_path / "folder",
                                    **FAST))
    geo_feats = safetensors.torch.load_file(geo["cache"]["path"])["features"]
    folder_feats = safetensors.torch.load_file(folder["cache"]["path"])["features"]
    assert torch.equal(geo_feats, folder_feats)
    for key in ("linear_top1", "knn_top1", "macro_f1", "linear_val_top1"):
        assert geo[key] == folder[key], key
    assert geo["baselines"]["band-statistics"]["linear_top1"] == folder["baselines"]["band-statistics"]["linear_top1"]
    assert geo["counts"] == folder["counts"] and geo["labels"]["split"]["mode"] == "random"


def test_polygons_cut_the_same_chips_as_points(ms: Path, label_files: tuple[Path, Path], encoder13: Path,
                                               tmp_path: Path) -> None:
    """Footprints reprojected to EPSG:4326 and back: each yields exactly its own file as one chip, even
    when more chips per polygon are allowed and neighbouring patches touch it."""
    _, polygons = label_files
    meta = read_meta(encoder13)
    result = build_label_chips(LabelOptions(scenes=[str(ms)], labels=polygons, chips_per_polygon=3), meta, tmp_path)
    rows = read_table(result.table)
    files = gpd.read_file(polygons)["file"].tolist()
    assert len(rows) == 820 and result.report["kind"] == "polygons"
    for row in rows:
        assert Path(row["scene"]) == ms / files[int(row["source_row"])]
        assert (row["col_off"], row["row_off"]) == ("0", "0")


def _blocks(points: gpd.GeoDataFrame, crs: str, size: float) -> list[tuple[int, int]]:
    """Reference block index of each point, computed here independently of geossl.labels.split."""
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    out = []
    for geom in points.geometry:
        x, y = to_utm.transform(geom.x, geom.y)
        out.append((math.floor(x / size), math.floor(y / size)))
    return out


def test_spatial_split_keeps_each_block_in_one_split(ms: Path, label_files: tuple[Path, Path], encoder13: Path,
                                                     tmp_path: Path) -> None:
    points, _ = label_files
    size = 20_000.0
    result = build_label_chips(LabelOptions(scenes=[str(ms)], labels=points, split="spatial", block_size=size),
                               read_meta(encoder13), tmp_path)
    rows = read_table(result.table)
    report = result.report["split"]
    assert report["mode"] == "spatial" and report["crs"].startswith("EPSG:326")
    blocks = _blocks(gpd.read_file(points), report["crs"], size)
    split_of_block: dict[tuple[int, int], set[str]] = {}
    for row in rows:
        split_of_block.setdefault(blocks[int(row["source_row"])], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of_block.values())
    assert max(sum(blocks[int(r["source_row"])] == b for r in rows) for b in split_of_block) > 1  # neighbours exist
    assert len(split_of_block) == sum(report["blocks"].values())
    chips = report["chips"]
    assert chips["train"] > chips["test"] > chips["val"] > 0  # whole blocks, near 70/20/10
    # every class in every split, or the probe could not run
    for cls in {r["label"] for r in rows}:
        assert {r["split"] for r in rows if r["label"] == cls} == {"train", "val", "test"}


def test_split_column_in_the_labels_is_used(ms: Path, label_files: tuple[Path, Path], encoder13: Path,
                                            tmp_path: Path) -> None:
    points, _ = label_files
    frame = gpd.read_file(points)
    rng = np.random.default_rng(1)
    frame["split"] = rng.choice(["train", "train", "val", "test", ""], size=len(frame))
    path = tmp_path / "with_split.gpkg"
    frame.to_file(path, driver="GPKG")
    result = build_label_chips(LabelOptions(scenes=[str(ms)], labels=path), read_meta(encoder13), tmp_path / "out")
    rows = read_table(result.table)
    assert result.report["split"]["mode"] == "column"
    assert result.report["skipped"]["no_split"] == int((frame["split"] == "").sum())
    assert [r["split"] for r in rows] == [s for s in frame["split"] if s]
