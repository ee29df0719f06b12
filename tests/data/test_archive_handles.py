"""Archive scale: the handle pool never exceeds its bound, tiles do not depend on it, and the scene
index is built once and reused while current (start-up then opens no scene)."""

from __future__ import annotations

import os
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.warp import transform_bounds

import geossl.data.scenes as scenes_module
from geossl.data.handles import HandlePool
from geossl.data.scene_index import load_index, scene_infos
from geossl.data.scenes import RandomTileDataset

SCENES = ("naip_5m_north_dakota_2019.tif", "landsat7_300m_RGB.byte.tif")


class Handle:
    def __init__(self, key: int, log: list[tuple[str, int]]) -> None:
        self.key, self.log = key, log
        log.append(("open", key))

    def close(self) -> None:
        self.log.append(("close", self.key))


def test_pool_is_an_lru_against_a_reference() -> None:
    rng = np.random.default_rng(0)
    pool, log = HandlePool(3), []
    reference: OrderedDict[int, None] = OrderedDict()  # the LRU rule, written out
    for key in rng.integers(0, 7, size=300).tolist():
        expected: list[tuple[str, int]] = []
        if key in reference:
            reference.move_to_end(key)
        else:
            if len(reference) == 3:
                expected.append(("close", reference.popitem(last=False)[0]))
            reference[key] = None
            expected.append(("open", key))
        before = len(log)
        assert pool.get(key, lambda k=key: Handle(k, log)).key == key
        assert log[before:] == expected and len(pool) == len(reference) <= 3
    assert pool.peak == 3 and pool.opens == sum(1 for e in log if e[0] == "open")
    assert len(pickle.loads(pickle.dumps(pool))) == 0  # handles never travel to another process


def scene_links(folder: Path, scenes_dir: Path, n: int, copy: bool = False) -> list[str]:
    """``n`` scene files (symbolic links to the real scenes, alternating; copies when the test changes
    them, the shared data is never touched): an archive in miniature."""
    folder.mkdir()
    paths = []
    for i in range(n):
        path = folder / f"scene_{i:04d}.tif"
        if copy:
            shutil.copyfile(scenes_dir / SCENES[i % 2], path)
        else:
            path.symlink_to(scenes_dir / SCENES[i % 2])
        paths.append(str(path))
    return paths


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_files_stay_bounded_and_tiles_do_not_depend_on_the_bound(scenes_dir: Path, tmp_path: Path) -> None:
    paths = scene_links(tmp_path / "archive", scenes_dir, 40)
    small = RandomTileDataset(paths, tile_size=32, length=300, bands=[1, 2, 3], min_valid_fraction=0.0,
                              max_open=4)
    large = RandomTileDataset(paths, tile_size=32, length=300, bands=[1, 2, 3], min_valid_fraction=0.0,
                              max_open=1000)
    before = open_fds()
    peak = 0
    for i in range(300):
        a, b = small[i], large[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) and a["scene"] == b["scene"]
        peak = max(peak, open_fds() - before)
    assert len(small.pool) <= 4 and small.pool.peak == 4 and len({small[i]["scene"] for i in range(300)}) > 30
    assert large.pool.peak > 30  # the unbounded pool kept one handle per scene drawn
    assert peak <= 4 + large.pool.peak + 4  # file descriptors follow the pools (GDAL may hold a few more)
    large.pool.close()
    small.pool.close()


def test_scene_index_is_reused_while_current(scenes_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    paths = scene_links(tmp_path / "archive", scenes_dir, 6, copy=True)
    index = tmp_path / "index.parquet"
    built, status = scene_infos(paths, index, workers=2)
    assert status == "built" and index.is_file()
    import geopandas as gpd

    frame = gpd.read_parquet(index)
    assert list(frame["uri"]) == paths and frame.crs.to_epsg() == 4326
    with rasterio.open(paths[0]) as src:
        expected = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    assert np.allclose(frame.geometry.iloc[0].bounds, expected, atol=1e-6)

    def no_open(uri: str) -> None:
        raise AssertionError(f"{uri} was opened although the index is current")

    monkeypatch.setattr(scenes_module, "open_raster", no_open)
    reused, status = scene_infos(paths, index)
    assert status == "reused" and reused == built
    dataset = RandomTileDataset(paths, tile_size=32, length=5, bands=[1, 2, 3], index=index)  # opens nothing
    assert dataset.index_status == "reused"
    monkeypatch.undo()
    os.utime(paths[2], ns=(1, 1))  # a scene changed (a copy: never the shared data)
    assert load_index(paths, index) is None  # a changed file makes the index stale
    assert scene_infos(paths, index)[1] == "built"
    assert load_index(paths[:-1], index) is None  # another set of scenes: not this index
