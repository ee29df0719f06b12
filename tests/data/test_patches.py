"""PatchDataset: real EuroSAT (RGB splits, 13-band MS), synthetic folders/CSVs, and errors that name files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from geossl.data.patches import PatchDataset
from geossl.data.splits import balanced_subset, stratified_split

EUROSAT_CLASSES = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
]  # fmt: skip


def _png(path: Path, value: int, mode: str = "RGB", size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    array = np.full((size, size, channels), value, dtype=np.uint8).squeeze()
    Image.fromarray(array, mode=mode).save(path)


def _tif(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = array.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=array.dtype,
        crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(array)


@pytest.fixture()
def class_tree(tmp_path: Path) -> Path:
    """3 classes x 10 PNGs; pixel value encodes class and item so reads can be checked."""
    root = tmp_path / "tree"
    for c, name in enumerate(["b_water", "a_crop", "c_urban"]):
        for k in range(10):
            _png(root / name / f"{name}_{k:02d}.png", value=c * 20 + k)
    (root / "README.txt").write_text("not an image, at the top level: ignored")
    return root


@pytest.mark.slow
def test_eurosat_rgb_splits_and_class_order(shared_data: Path) -> None:
    root = shared_data / "eurosat-rgb"
    sizes = {s: len(PatchDataset(root, split=s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 19_440, "val": 2_160, "test": 5_400}
    ds = PatchDataset(root, split="val")
    assert ds.classes == EUROSAT_CLASSES
    assert ds.band_count == 3 and ds.dtype == "uint8"
    item = ds[len(ds) - 1]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert ds.classes[item["label"]] == ds.paths[-1].parent.name
    expected = np.asarray(Image.open(ds.paths[-1])).transpose(2, 0, 1)
    assert np.array_equal(item["image"].numpy(), expected)
    swapped = PatchDataset(root, split="val", bands=[3, 2, 1])[len(ds) - 1]["image"].numpy()
    assert np.array_equal(swapped, expected[::-1])
    assert np.bincount(ds.labels, minlength=10).min() > 0


@pytest.mark.slow
def test_eurosat_ms_13_band_uint16(shared_data: Path) -> None:
    root = shared_data / "eurosat-ms"
    ds = PatchDataset(root)
    assert len(ds) == 820 and ds.band_count == 13 and ds.dtype == "uint16"
    assert ds.classes == EUROSAT_CLASSES
    item = ds[5]
    with rasterio.open(ds.paths[5]) as src:
        expected = src.read()
    assert item["image"].dtype == torch.int32  # torch.uint16 lacks max/interpolate: widened, exact
    assert np.array_equal(item["image"].numpy(), expected.astype(np.int32))
    assert ds.classes[item["label"]] == ds.paths[5].parent.name
    rgb = PatchDataset(root, bands=[4, 3, 2], limit=20, seed=1)
    assert len(rgb) == 20 and np.bincount(rgb.labels, minlength=10).tolist() == [2] * 10
    with rasterio.open(rgb.paths[0]) as src:
        assert np.array_equal(rgb[0]["image"].numpy(), src.read([4, 3, 2]).astype(np.int32))
    # No split column in labels.csv: a seeded stratified 70/10/20 split.
    parts = [PatchDataset(root, split=s, seed=3) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 820
    assert not set(parts[0].paths) & set(parts[2].paths)
    batch = next(iter(torch.utils.data.DataLoader(parts[1], batch_size=8)))
    assert batch["image"].shape == (8, 13, 64, 64) and batch["image"].dtype == torch.int32


def test_class_folders_sorted_and_values(class_tree: Path) -> None:
    ds = PatchDataset(class_tree)
    assert ds.classes == ["a_crop", "b_water", "c_urban"]
    assert len(ds) == 30 and ds.band_count == 3 and ds.dtype == "uint8"
    for i in (0, 13, 29):
        item = ds[i]
        name = ds.paths[i].parent.name
        k = int(ds.paths[i].stem.split("_")[-1])
        value = ["b_water", "a_crop", "c_urban"].index(name) * 20 + k
        assert item["label"] == ds.classes.index(name) and item["index"] == i
        assert item["image"].shape == (3, 8, 8) and bool((item["image"] == value).all())
    assert ds[-1]["index"] == 29
    with pytest.raises(IndexError):
        ds[30]


def test_split_and_limit_deterministic(class_tree: Path) -> None:
    train = PatchDataset(class_tree, split="train", seed=7)
    again = PatchDataset(class_tree, split="train", seed=7)
    other = PatchDataset(class_tree, split="train", seed=8)
    assert train.paths == again.paths and train.paths != other.paths
    assert np.bincount(train.labels).tolist() == [7, 7, 7]
    assert len(PatchDataset(class_tree, split="val")) == 3 and len(PatchDataset(class_tree, split="test")) == 6
    small = PatchDataset(class_tree, limit=5, seed=2)
    assert len(small) == 5 and sorted(np.bincount(small.labels).tolist()) == [1, 2, 2]
    assert small.paths == PatchDataset(class_tree, limit=5, seed=2).paths
    fixed = PatchDataset(class_tree, classes=["c_urban", "b_water", "a_crop", "z_unused"])
    assert fixed.classes[fixed[0]["label"]] == fixed.paths[0].parent.name


def test_stratified_split_exact_counts() -> None:
    labels = np.repeat(np.arange(4), [10, 7, 3, 100])
    splits = stratified_split(labels, seed=0)
    for cls, n in enumerate([10, 7, 3, 100]):
        got = splits[labels == cls]
        assert len(got) == n
        assert abs((got == "train").sum() - 0.7 * n) < 1 and abs((got == "test").sum() - 0.2 * n) < 1
    assert np.array_equal(splits, stratified_split(labels, seed=0))
    assert not np.array_equal(splits, stratified_split(labels, seed=1))
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split(labels, fractions=(0.5, 0.5, 0.5))
    assert len(balanced_subset(labels, 8)) == 8 and np.bincount(labels[balanced_subset(labels, 8)]).tolist() == [2] * 4


def test_csv_source_with_split_column_and_tifs(tmp_path: Path) -> None:
    rows = ["path,label,split"]
    for k in range(6):
        _tif(tmp_path / "img" / f"p{k}.tif", np.full((5, 4, 4), 1000 * k, dtype=np.uint16))
        rows.append(f"img/p{k}.tif,{'wet' if k % 2 else 'dry'},{'train' if k < 4 else 'test'}")
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    ds = PatchDataset(tmp_path / "items.csv", split="test", bands=[5, 1])
    assert ds.classes == ["dry", "wet"] and len(ds) == 2 and ds.band_count == 2 and ds.dtype == "uint16"
    assert ds[0]["image"].tolist() == np.full((2, 4, 4), 4000).tolist() and ds[1]["label"] == 1
    with pytest.raises(ValueError, match=r"items\.csv.*split 'val' is empty.*test.*train"):
        PatchDataset(tmp_path / "items.csv", split="val")


def test_csv_errors_name_file_and_problem(tmp_path: Path) -> None:
    _png(tmp_path / "x" / "a.png", 1)
    bad = tmp_path / "list.csv"
    bad.write_text("path,label\nx/a.png,one\nx/missing1.png,two\nx/missing2.png,two\n")
    with pytest.raises(FileNotFoundError, match=r"list\.csv: 2 of 3 listed files do not exist: .*missing1\.png"):
        PatchDataset(bad)
    bad.write_text("path,label\nx/a.png,one\n")
    with pytest.raises(ValueError, match=r"list\.csv: label\(s\) \['one'\] not in the given classes"):
        PatchDataset(bad, classes=["two"])
    bad.write_text("file,class\nx/a.png,one\n")
    with pytest.raises(ValueError, match=r"list\.csv: expected a header with columns path,label"):
        PatchDataset(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        PatchDataset(tmp_path / "nowhere.csv")


def test_folder_errors(tmp_path: Path, class_tree: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "SomeClass").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"empty: no images found"):
        PatchDataset(empty)
    with pytest.raises(ValueError, match=r"a_crop_00\.png: band index \[4\] out of range: the file has 3 bands"):
        PatchDataset(class_tree, bands=[1, 4])
    with pytest.raises(ValueError, match=r"out of range"):
        PatchDataset(class_tree, bands=[0])


def test_bad_files_named_at_getitem(class_tree: Path) -> None:
    good = (class_tree / "a_crop" / "a_crop_00.png").read_bytes()
    (class_tree / "b_water" / "b_water_03.png").write_bytes(good[: len(good) // 2])  # truncated
    (class_tree / "c_urban" / "c_urban_05.png").write_bytes(b"this is not a png")
    _png(class_tree / "c_urban" / "c_urban_07.png", 9, mode="L")  # 1 band among 3-band images
    ds = PatchDataset(class_tree)
    index = {p.name: i for i, p in enumerate(ds.paths)}
    with pytest.raises(ValueError, match=r"b_water_03\.png: not a readable image or truncated"):
        ds[index["b_water_03.png"]]
    with pytest.raises(ValueError, match=r"c_urban_05\.png: not a readable image"):
        ds[index["c_urban_05.png"]]
    with pytest.raises(ValueError, match=r"c_urban_07\.png: has 1 bands .* mixed band counts"):
        ds[index["c_urban_07.png"]]
    assert ds[index["b_water_04.png"]]["image"].shape == (3, 8, 8)
