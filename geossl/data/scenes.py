"""Tiles from georeferenced scenes (GeoTIFF/COG, local or S3): random tiles for training, a grid for inference.

We read pixel windows straight from each scene in its own CRS and resolution: self-supervision needs
no common grid, and skipping reprojection is what makes this ~30x faster per core than a warping
reader (see :mod:`geossl.data.torchgeo_compat`). Every tile carries exact float64 georeferencing from
the scene's affine transform, plus a validity mask: the rule of :mod:`geossl.data.raster` (per-band
nodata, NaN/inf, explicit mask or alpha, outside the scene), the same one inference applies.

Random tiles are a *map-style* dataset: item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``,
so DistributedSampler ranks see disjoint tiles, DataLoader workers change nothing, and a resumed
run replays exactly.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Any

import affine
import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geossl.data.handles import DEFAULT_MAX_OPEN, HandlePool
from geossl.data.patches import compact_torch_dtype, to_compact_tensor
from geossl.data.raster import WindowReader, fill_value, open_raster, plan_axis
from geossl.data.scene_index import SceneInfo, scene_info, scene_infos
from geossl.data.uris import expand_inputs

MAX_DRAWS = 100  # random tiles: redraws before giving up on reaching min_valid_fraction


class SceneReader:
    """Windowed reads of selected bands + a validity mask, through a bounded pool of open handles.

    Reading and the validity rule are :class:`geossl.data.raster.WindowReader`'s (the same as at
    inference). Handles live in a :class:`~geossl.data.handles.HandlePool` (per process, so forked
    DataLoader workers open their own; pickling drops them): readers of one dataset share a pool, so
    thousands of scenes never hold more than its ``max_open`` files. Without a pool, the reader has
    its own (one handle).
    """

    def __init__(self, info: SceneInfo, bands: list[int] | None = None, pool: HandlePool | None = None) -> None:
        self.info = info
        self.indexes = list(bands) if bands is not None else list(range(1, info.count + 1))
        self.np_dtype = np.dtype(info.dtype)
        self.is_float = np.issubdtype(self.np_dtype, np.floating)
        self.fill = fill_value(info.nodata, self.np_dtype)
        self.remote = info.uri.startswith("/vsis3/")
        self.pool = pool if pool is not None else HandlePool(1)
        self._key = (info.uri, tuple(self.indexes))

    def _open(self) -> WindowReader:
        return WindowReader(open_raster(self.info.uri), self.indexes, self.info.uri, own_env=True)

    def _reader(self) -> WindowReader:
        return self.pool.get(self._key, self._open)

    def handle(self) -> rasterio.DatasetReader:
        """This process's open dataset."""
        return self._reader().ds

    def read(self, col: int, row: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(C,h,w) pixels and (h,w) bool valid mask of a window; parts outside the scene are padded invalid."""
        return self._reader().read(col, row, width, height)


def georef(
    col: int, row: int, width: int, height: int, transform: affine.Affine
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bounds (left, bottom, right, top), the tile's 6 affine coefficients), float64, from the scene transform.

    The georeferencing of every tile served here and of every chip cut from it (:mod:`geossl.data.shards`).
    Plain float arithmetic, identical to ``rasterio.windows.bounds``/``transform`` but ~10x cheaper
    (this runs once per tile). Bounds of a rotated transform are the envelope of the 4 corners.
    """
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    # Same operation order as affine's ``transform * (col, row)``, so results match it bit for bit.
    corners = [(cc, rr) for cc in (col, col + width) for rr in (row, row + height)]
    xs = [cc * a + rr * b + c for cc, rr in corners]
    ys = [cc * d + rr * e + f for cc, rr in corners]
    bounds = torch.tensor([min(xs), min(ys), max(xs), max(ys)], dtype=torch.float64)
    return bounds, torch.tensor([a, b, xs[0], d, e, ys[0]], dtype=torch.float64)


def _check_bands(bands: list[int] | None, info: SceneInfo) -> list[int] | None:
    if bands is None:
        return None
    bands = [int(b) for b in bands]
    bad = [b for b in bands if not 1 <= b <= info.count]
    if not bands or bad:
        raise ValueError(f"{info.uri}: band index {bad or bands} out of range: the scene has {info.count} bands")
    return bands


class RandomTileDataset(torch.utils.data.Dataset):
    """``length`` random square tiles per epoch from one or more scenes (any CRS, band count must agree).

    Scenes are drawn in proportion to their area; tiles with fewer than ``min_valid_fraction`` valid
    pixels are redrawn (bounded), never served. At most ``max_open`` scenes are open at once per process
    (an LRU pool); ``index`` names a GeoParquet scene index (:mod:`geossl.data.scene_index`) built on
    first use and reused while current, so start-up opens no scene. Items: ``{"image": (C,T,T) raw units, compact dtype,
    "mask": (T,T) bool (True = valid), "bounds": float64 (left, bottom, right, top) in the scene CRS,
    "crs": str, "scene": int}``. Invalid pixels keep the nodata value (non-finite ones become it, or 0).
    """

    def __init__(
        self,
        scenes: str | list[str],
        tile_size: int,
        length: int,
        bands: list[int] | None = None,
        min_valid_fraction: float = 0.9,
        seed: int = 0,
        max_open: int = DEFAULT_MAX_OPEN,
        index: str | os.PathLike[str] | None = None,
    ) -> None:
        if tile_size < 1 or length < 1:
            raise ValueError(f"tile_size and length must be >= 1, got {tile_size} and {length}")
        if not 0.0 <= min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must lie in [0, 1], got {min_valid_fraction}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        # headers from a current scene index (nothing opened), else read in parallel (and indexed)
        self.scenes, self.index_status = scene_infos(expand_inputs(scenes), index)
        self.bands = _check_bands(bands, self.scenes[0])
        first = self.scenes[0]
        for info in self.scenes:
            _check_bands(self.bands, info)
            if bands is None and info.count != first.count:
                raise ValueError(f"{info.uri}: has {info.count} bands but {first.uri} has {first.count}; pass bands=")
            if info.width < tile_size or info.height < tile_size:
                raise ValueError(f"{info.uri}: scene is {info.width}x{info.height} px, smaller than tile_size {tile_size}")
        self.tile_size, self.length = tile_size, length
        self.min_valid_fraction, self.seed = min_valid_fraction, seed
        # The scenes' pixel dtype (promoted when they differ): every tile is served in it (chips are cut in it).
        self.np_dtype = np.result_type(*[np.dtype(s.dtype) for s in self.scenes])
        self.pool = HandlePool(max_open)  # all scenes share it: open files stay bounded whatever their count
        self._readers = [SceneReader(info, self.bands, self.pool) for info in self.scenes]
        positions = np.array([(s.width - tile_size + 1) * (s.height - tile_size + 1) for s in self.scenes], float)
        self._cumulative = (np.cumsum(positions) / positions.sum()).tolist()
        # Each scene's CRS as items carry it (``SceneInfo.crs_string``), computed once: to_string() costs ~40 us.
        self.crs_strings = [info.crs_string for info in self.scenes]
        # Shared memory: set_epoch in the main process reaches persistent DataLoader workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def band_count(self) -> int:
        return len(self.bands) if self.bands is not None else self.scenes[0].count

    @property
    def dtype(self) -> str:
        """Numpy name of the pixel dtype of the scenes (promoted when they differ)."""
        return self.np_dtype.name

    @property
    def torch_dtype(self) -> torch.dtype:
        return compact_torch_dtype(self.np_dtype)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's tiles: tile ``i`` of epoch ``e`` comes from an RNG seeded by (seed, e, i)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return self.length

    def draw(self, i: int, epoch: int | None = None) -> tuple[int, Window, np.ndarray, np.ndarray]:
        """(scene index, window, pixels, valid mask) of tile ``i``; deterministic in (seed, epoch, i)."""
        if not 0 <= i < self.length:
            raise IndexError(f"tile index {i} out of range for {self.length} tiles")
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng((self.seed, epoch, i))
        size = self.tile_size
        best: dict[int, float] = {}
        for _ in range(MAX_DRAWS):
            u_scene, u_row, u_col = rng.random(3).tolist()  # one call: the RNG is a hot spot per tile
            s = min(bisect.bisect_right(self._cumulative, u_scene), len(self.scenes) - 1)
            info = self.scenes[s]
            row = int(u_row * (info.height - size + 1))
            col = int(u_col * (info.width - size + 1))
            data, valid = self._readers[s].read(col, row, size, size)
            fraction = np.count_nonzero(valid) / valid.size
            if fraction >= self.min_valid_fraction:
                return s, Window(col, row, size, size), data, valid
            best[s] = max(best.get(s, 0.0), fraction)
        tried = "; ".join(f"{self.scenes[s].uri} (best {f:.0%})" for s, f in best.items())
        raise ValueError(
            f"no {size}px tile with >= {self.min_valid_fraction:.0%} valid pixels in {MAX_DRAWS} draws "
            f"(item {i}, epoch {epoch}): {tried}. Lower the valid share a tile needs "
            "(data.min_valid_fraction; --min-valid for geossl chips) or check the nodata value."
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item_of(*self.draw(int(i)))

    def item_of(self, s: int, window: Window, data: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
        """The item of a drawn tile: compact pixels, mask, bounds in the scene's CRS, CRS, scene."""
        size = self.tile_size
        bounds, _ = georef(int(window.col_off), int(window.row_off), size, size, self.scenes[s].transform)
        if data.dtype != self.np_dtype:
            data = data.astype(self.np_dtype)
        return {
            "image": to_compact_tensor(data),
            "mask": torch.from_numpy(valid),
            "bounds": bounds,
            "crs": self.crs_strings[s],
            "scene": s,
        }


class GridTiles(torch.utils.data.Dataset):
    """A regular grid of windows over ONE scene, for inference (classified maps, embeddings).

    ``edge="shift"``: the last row/column of windows is moved back to end exactly at the scene edge
    (overlapping its neighbour, no padding). ``edge="pad"``: windows run past the edge; padded pixels
    hold the nodata value (0 without one) and are masked invalid. Items: ``image``, ``mask``,
    ``window`` (col_off, row_off, width, height), ``transform`` (the tile's affine a..f, float64),
    ``bounds`` (left, bottom, right, top, float64).
    """

    def __init__(
        self,
        scene: str,
        tile_size: int,
        stride: int | None = None,
        bands: list[int] | None = None,
        edge: str = "shift",
    ) -> None:
        stride = tile_size if stride is None else stride
        if tile_size < 1 or stride < 1:
            raise ValueError(f"tile_size and stride must be >= 1, got {tile_size} and {stride}")
        if edge not in ("shift", "pad"):
            raise ValueError(f"edge must be 'shift' or 'pad', got {edge!r}")
        self.info = scene_info(scene)
        if edge == "shift" and (self.info.width < tile_size or self.info.height < tile_size):
            raise ValueError(
                f"{self.info.uri}: scene is {self.info.width}x{self.info.height} px, smaller than tile_size "
                f"{tile_size}; use edge='pad' or a smaller tile"
            )
        self.bands = _check_bands(bands, self.info)
        self.tile_size, self.stride, self.edge = tile_size, stride, edge
        cols = plan_axis(self.info.width, tile_size, stride, edge=edge).starts
        rows = plan_axis(self.info.height, tile_size, stride, edge=edge).starts
        self.windows = [Window(c, r, tile_size, tile_size) for r in rows for c in cols]
        self.grid_shape = (len(rows), len(cols))
        self._reader = SceneReader(self.info, self.bands)

    @property
    def band_count(self) -> int:
        return len(self.bands) if self.bands is not None else self.info.count

    @property
    def dtype(self) -> str:
        return self.info.dtype

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        window = self.windows[i]
        col, row, width, height = (int(v) for v in (window.col_off, window.row_off, window.width, window.height))
        data, valid = self._reader.read(col, row, width, height)
        bounds, transform = georef(col, row, width, height, self.info.transform)
        return {
            "image": to_compact_tensor(data),
            "mask": torch.from_numpy(valid),
            "window": (col, row, width, height),
            "transform": transform,
            "bounds": bounds,
        }

    def read_batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Stacked batches in grid order (row-major); only one batch is in memory at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            items = [self[k] for k in range(start, min(start + batch_size, len(self)))]
            yield {
                "image": torch.stack([it["image"] for it in items]),
                "mask": torch.stack([it["mask"] for it in items]),
                "window": torch.tensor([it["window"] for it in items], dtype=torch.int64),
                "transform": torch.stack([it["transform"] for it in items]),
                "bounds": torch.stack([it["bounds"] for it in items]),
                "index": torch.arange(start, start + len(items)),
            }
