"""Scenes -> tiles: exact pixels and georeferencing vs direct rasterio reads, masks, edges, determinism, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from geossl.data.scene_index import scene_info
from geossl.data.scenes import GridTiles, RandomTileDataset
from geossl.data.uris import expand_inputs

REAL_SCENES = ["naip_5m_north_dakota_2019.tif", "s2_like_10m_netherlands_cog.tif", "landsat7_300m_RGB.byte.tif"]


def make_scene(path: Path, array: np.ndarray, nodata: float | None = None, crs: str = "EPSG:32614",
               transform: rasterio.Affine | None = None, mask: np.ndarray | None = None) -> str:
    """Write a GeoTIFF (C,H,W); ``mask`` (H,W bool, True = valid) becomes an internal GDAL mask."""
    count, height, width = array.shape
    transform = transform or from_origin(600_000.5, 5_300_000.25, 10.0, 10.0)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=array.dtype,
        crs=crs, transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(array)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return str(path)


def direct_read(uri: str, window: Window, bands: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference: rasterio's own read and its per-band masks (all bands valid = valid), NaN excluded."""
    with rasterio.open(uri) as src:
        indexes = bands or list(range(1, src.count + 1))
        data = src.read(indexes, window=window)
        valid = (src.read_masks(indexes, window=window) != 0).all(axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return data, valid


def window_of(bounds: torch.Tensor, transform: rasterio.Affine, size: int) -> Window:
    col, row = ~transform @ (float(bounds[0]), float(bounds[3]))
    return Window(round(col), round(row), size, size)


@pytest.fixture()
def holey_scene(tmp_path: Path) -> str:
    """uint16, 4 bands, 120x90; nodata 0 in the left 40 columns and in one pixel of band 3."""
    rng = np.random.default_rng(0)
    array = rng.integers(1, 60_000, size=(4, 90, 120), dtype=np.uint16)
    array[:, :, :40] = 0
    array[2, 50, 80] = 0
    return make_scene(tmp_path / "holey.tif", array, nodata=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_SCENES)
def test_real_scene_tiles_equal_direct_reads(scenes_dir: Path, name: str) -> None:
    uri = str(scenes_dir / name)
    info = scene_info(uri)
    with rasterio.open(uri) as src:
        assert (info.width, info.height, info.count, info.dtype) == (src.width, src.height, src.count, src.dtypes[0])
        assert info.transform == src.transform and info.crs == src.crs and info.nodata == src.nodata
    ds = RandomTileDataset(uri, tile_size=48, length=12, seed=3)
    assert ds.band_count == info.count and ds.dtype == info.dtype
    for i in range(len(ds)):
        item = ds[i]
        window = window_of(item["bounds"], info.transform, 48)
        data, valid = direct_read(uri, window)
        assert item["bounds"].dtype == torch.float64
        assert item["bounds"].tolist() == list(rasterio.windows.bounds(window, info.transform))
        assert np.array_equal(item["image"].numpy(), data.astype(item["image"].numpy().dtype))
        assert np.array_equal(item["mask"].numpy(), valid) and valid.mean() >= 0.9
        assert item["crs"] == info.crs.to_string() and item["scene"] == 0
    grid = GridTiles(uri, tile_size=100, stride=250, edge="shift")
    for batch in grid.read_batches(batch_size=7):
        for k in range(len(batch["index"])):
            col, row, width, height = batch["window"][k].tolist()
            window = Window(col, row, width, height)
            data, valid = direct_read(uri, window)
            assert np.array_equal(batch["image"][k].numpy(), data.astype(batch["image"].numpy().dtype))
            assert np.array_equal(batch["mask"][k].numpy(), valid)
            assert batch["transform"][k].tolist() == list(rasterio.windows.transform(window, info.transform))[:6]
            assert batch["bounds"][k].tolist() == list(rasterio.windows.bounds(window, info.transform))
    last = grid.windows[-1]
    assert (last.col_off + last.width, last.row_off + last.height) == (info.width, info.height)


@pytest.mark.slow
def test_all_real_scenes_together_mixed_crs(scenes_dir: Path) -> None:
    ds = RandomTileDataset(str(scenes_dir), tile_size=32, length=60, bands=[1, 2, 3], seed=1)
    assert [Path(s.uri).name for s in ds.scenes] == sorted(REAL_SCENES)
    assert ds.dtype == "float64" and ds.band_count == 3  # uint8 + float64 promote; tensors are float32
    items = [ds[i] for i in range(len(ds))]
    assert {it["crs"] for it in items} == {"EPSG:32618", "EPSG:26914", "EPSG:4326"}
    assert all(it["image"].dtype == torch.float32 and it["image"].shape == (3, 32, 32) for it in items)
    batch = torch.utils.data.default_collate(items[:8])
    assert batch["image"].shape == (8, 3, 32, 32) and len(batch["crs"]) == 8


@pytest.mark.slow
def test_dataloader_two_workers_same_tiles_and_epochs(scenes_dir: Path) -> None:
    uri = str(scenes_dir / "landsat7_300m_RGB.byte.tif")
    ds = RandomTileDataset(uri, tile_size=32, length=16, seed=5)
    single = [ds[i] for i in range(16)]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    batches = list(loader)
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.stack([s["image"] for s in single]))
    assert torch.equal(torch.cat([b["bounds"] for b in batches]), torch.stack([s["bounds"] for s in single]))
    ds.set_epoch(1)  # must reach the persistent workers
    epoch1 = torch.cat([b["bounds"] for b in loader])
    assert torch.equal(epoch1, torch.stack([ds[i]["bounds"] for i in range(16)]))
    assert not torch.equal(epoch1, torch.stack([s["bounds"] for s in single]))


def test_determinism_per_seed_epoch_index(holey_scene: str) -> None:
    a = RandomTileDataset(holey_scene, tile_size=16, length=20, seed=11)
    b = RandomTileDataset(holey_scene, tile_size=16, length=20, seed=11)
    assert torch.equal(a[7]["image"], b[7]["image"]) and torch.equal(a[7]["bounds"], b[7]["bounds"])
    assert torch.equal(a[19]["bounds"], a[19]["bounds"])
    epoch0 = torch.stack([a[i]["bounds"] for i in range(20)])
    a.set_epoch(3)
    b.set_epoch(3)
    epoch3 = torch.stack([a[i]["bounds"] for i in range(20)])
    assert not torch.equal(epoch0, epoch3) and torch.equal(epoch3[4], b[4]["bounds"])
    other_seed = RandomTileDataset(holey_scene, tile_size=16, length=20, seed=12)
    assert not torch.equal(epoch0, torch.stack([other_seed[i]["bounds"] for i in range(20)]))
    assert len({tuple(r.tolist()) for r in epoch0}) > 15  # tiles differ within an epoch
    with pytest.raises(IndexError):
        a[20]


def test_nodata_mask_and_min_valid_threshold(holey_scene: str) -> None:
    info = scene_info(holey_scene)
    ds = RandomTileDataset(holey_scene, tile_size=16, length=40, min_valid_fraction=0.9)
    assert ds.dtype == "uint16" and ds[0]["image"].dtype == torch.int32
    for i in range(len(ds)):
        item = ds[i]
        data, valid = direct_read(holey_scene, window_of(item["bounds"], info.transform, 16))
        assert np.array_equal(item["mask"].numpy(), valid) and item["mask"].float().mean() >= 0.9
        assert np.array_equal(item["image"].numpy(), data.astype(np.int32))
    loose = RandomTileDataset(holey_scene, tile_size=16, length=60, min_valid_fraction=0.0)
    fractions = [float(loose[i]["mask"].float().mean()) for i in range(60)]
    assert min(fractions) < 0.9  # without the threshold such tiles exist: the threshold did the work
    # A 90 px tile always includes >= 10 nodata columns (at most 80 of 90 valid): never served at 95%.
    with pytest.raises(ValueError, match=r"holey\.tif \(best \d+%\).*min_valid_fraction"):
        RandomTileDataset(holey_scene, tile_size=90, length=5, min_valid_fraction=0.95)[0]


def test_nan_float_scene_and_internal_mask(tmp_path: Path) -> None:
    array = np.linspace(-1.0, 1.0, 2 * 40 * 40, dtype=np.float32).reshape(2, 40, 40)
    array[0, 5, 6] = np.nan
    array[1, 30, 31] = np.inf
    mask = np.ones((40, 40), dtype=bool)
    mask[20:, :10] = False
    uri = make_scene(tmp_path / "float.tif", array, mask=mask)
    grid = GridTiles(uri, tile_size=40)
    item = grid[0]
    expected_valid = mask.copy()
    expected_valid[5, 6] = expected_valid[30, 31] = False
    assert np.array_equal(item["mask"].numpy(), expected_valid)
    assert torch.isfinite(item["image"]).all() and item["image"].dtype == torch.float32
    assert item["image"][0, 5, 6] == 0 and item["image"][0, 7, 7] == array[0, 7, 7]
    f64 = make_scene(tmp_path / "f64.tif", array.astype(np.float64) * 1000 + 500, nodata=500.0)
    tiles = GridTiles(f64, tile_size=20, bands=[2])
    assert tiles.dtype == "float64" and tiles.band_count == 1 and len(tiles) == 4
    data, valid = direct_read(f64, Window(20, 20, 20, 20), [2])
    assert np.array_equal(tiles[3]["image"].numpy(), np.nan_to_num(data, posinf=500.0).astype(np.float32))  # non-finite -> nodata
    assert np.array_equal(tiles[3]["mask"].numpy(), valid) and not valid.all()


def test_grid_edges_shift_and_pad_exact(holey_scene: str) -> None:
    info = scene_info(holey_scene)  # 120 x 90
    shift = GridTiles(holey_scene, tile_size=32, stride=32)
    assert sorted({int(w.col_off) for w in shift.windows}) == [0, 32, 64, 88]
    assert sorted({int(w.row_off) for w in shift.windows}) == [0, 32, 58]
    assert shift.grid_shape == (3, 4) and len(shift) == 12
    item = shift[len(shift) - 1]
    assert item["window"] == (88, 58, 32, 32)
    data, valid = direct_read(holey_scene, Window(88, 58, 32, 32))
    assert np.array_equal(item["image"].numpy(), data.astype(np.int32)) and np.array_equal(item["mask"].numpy(), valid)
    pad = GridTiles(holey_scene, tile_size=32, stride=32, edge="pad")
    assert sorted({int(w.col_off) for w in pad.windows}) == [0, 32, 64, 96]
    assert sorted({int(w.row_off) for w in pad.windows}) == [0, 32, 64]
    corner = pad[len(pad) - 1]
    assert corner["window"] == (96, 64, 32, 32)
    inside, inside_valid = direct_read(holey_scene, Window(96, 64, 24, 26))
    assert np.array_equal(corner["image"][:, :26, :24].numpy(), inside.astype(np.int32))
    assert np.array_equal(corner["mask"][:26, :24].numpy(), inside_valid)
    assert not corner["mask"][26:].any() and not corner["mask"][:, 24:].any()
    assert (corner["image"][:, 26:] == 0).all()  # padded with the nodata value
    assert corner["bounds"].tolist() == list(rasterio.windows.bounds(Window(96, 64, 32, 32), info.transform))
    batches = list(pad.read_batches(batch_size=5))
    assert [len(b["index"]) for b in batches] == [5, 5, 2]
    assert torch.equal(batches[2]["image"][1], corner["image"])
    overlap = GridTiles(holey_scene, tile_size=32, stride=16)
    assert sorted({int(w.col_off) for w in overlap.windows}) == [0, 16, 32, 48, 64, 80, 88]


def test_small_scene_and_bad_inputs_name_the_file(tmp_path: Path, holey_scene: str) -> None:
    small = make_scene(tmp_path / "small.tif", np.ones((3, 10, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"small\.tif: scene is 12x10 px, smaller than tile_size 16"):
        GridTiles(small, tile_size=16)
    padded = GridTiles(small, tile_size=16, edge="pad")
    assert len(padded) == 1 and int(padded[0]["mask"].sum()) == 120
    with pytest.raises(ValueError, match=r"small\.tif: scene is 12x10 px"):
        RandomTileDataset([holey_scene, small], tile_size=16, length=4, bands=[1, 2, 3])
    with pytest.raises(ValueError, match=r"holey\.tif: band index \[5\] out of range"):
        RandomTileDataset(holey_scene, tile_size=16, length=4, bands=[1, 5])
    with pytest.raises(ValueError, match=r"small\.tif: has 3 bands but .*holey\.tif has 4"):
        RandomTileDataset([holey_scene, small], tile_size=8, length=4)
    (tmp_path / "fake.tif").write_text("not a tiff")
    with pytest.raises(ValueError, match=r"fake\.tif: cannot open as a raster"):
        scene_info(str(tmp_path / "fake.tif"))
    with pytest.raises(FileNotFoundError, match=r"missing\.tif: no such file"):
        RandomTileDataset(str(tmp_path / "missing.tif"), tile_size=8, length=1)
    with pytest.raises(ValueError, match="edge must be"):
        GridTiles(small, tile_size=4, edge="wrap")


def test_expand_inputs_files_dirs_globs(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    a = make_scene(tmp_path / "d" / "a.tif", np.ones((1, 4, 4), np.uint8))
    b = make_scene(tmp_path / "d" / "sub" / "b.TIFF", np.ones((1, 4, 4), np.uint8))
    (tmp_path / "d" / "notes.txt").write_text("x")
    assert expand_inputs(str(tmp_path / "d")) == [a, b]
    assert expand_inputs([str(tmp_path / "d" / "*.tif"), a]) == [a]
    assert expand_inputs(str(tmp_path / "d" / "**")) == [a, b]
    assert expand_inputs("s3://bucket/key.tif") == ["/vsis3/bucket/key.tif"]
    with pytest.raises(FileNotFoundError, match=r"nothing matches"):
        expand_inputs(str(tmp_path / "d" / "*.jp2"))
    with pytest.raises(FileNotFoundError, match=r"nope: no such file"):
        expand_inputs(str(tmp_path / "nope"))
