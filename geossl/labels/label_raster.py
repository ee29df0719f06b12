"""A land-cover raster as labels: its classes under each chip of a scene's grid, in any CRS.

rasterio's ``reproject`` (GDAL's warper, nearest neighbour: class codes must never be averaged) puts
the label raster onto one strip of chips of the scene's read grid at a time, so a continent-wide
land-cover map over a large scene is never held whole in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geossl.labels.catalog import SceneGrid

FILL = np.iinfo(np.int32).min  # "no label" in the reprojected strip (outside the raster, or its nodata)


def strip_dtype(dtype: np.dtype) -> type[np.signedinteger]:
    """The type the label raster is reprojected into: signed, to hold FILL beside every class code. int32
    holds any code of up to 32 bits except uint32's above 2**31 - 1, which GDAL would clip to 2**31 - 1 (two
    classes merged without a word), so uint32 rasters get int64 strips."""
    return np.int64 if dtype == np.uint32 else np.int32


class LabelRaster:
    """One open single-band integer label raster (any signed or unsigned type of up to 32 bits)."""

    def __init__(self, path: str | Path) -> None:
        from geossl.data.raster import open_raster

        self.path = str(path)
        try:
            self.src = open_raster(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: label raster not found") from None
        src = self.src
        try:
            dtype = np.dtype(src.dtypes[0])
            if dtype.kind not in "iu" or dtype.itemsize > 4:
                raise ValueError(f"{path}: label raster has {dtype} values; class codes must be integers of "
                                 "at most 32 bits (e.g. uint8, uint16, int32, uint32)")
            self.strip_dtype = strip_dtype(dtype)
            if src.crs is None:
                raise ValueError(f"{path}: label raster has no CRS")
            if src.count != 1:
                raise ValueError(f"{path}: label raster has {src.count} bands; expected one band of class codes")
        except Exception:
            src.close()
            raise

    def _pixel_range(self, scene: SceneGrid, tile: int) -> tuple[int, int, int, int]:
        """Chip-grid columns and rows [c0, c1) x [r0, r1) of ``scene`` that the label raster may cover."""
        from rasterio.warp import transform_bounds

        try:
            left, bottom, right, top = transform_bounds(self.src.crs, scene.crs, *self.src.bounds, densify_pts=21)
        except Exception:  # a CRS pair with no transformation here: nothing overlaps
            return 0, 0, 0, 0
        cols, rows = ~scene.transform @ (np.array([left, right, left, right]), np.array([bottom, bottom, top, top]))
        if not (np.isfinite(cols).all() and np.isfinite(rows).all()):
            return 0, 0, 0, 0
        n_cols, n_rows = scene.width // tile, scene.height // tile
        c0 = min(max(0, math.floor(cols.min() / tile)), n_cols)
        c1 = min(max(0, math.ceil(cols.max() / tile)), n_cols)
        r0 = min(max(0, math.floor(rows.min() / tile)), n_rows)
        r1 = min(max(0, math.ceil(rows.max() / tile)), n_rows)
        return c0, c1, r0, r1

    def chip_majorities(self, scene: SceneGrid, tile: int) -> Iterator[tuple[int, int, int, float, float]]:
        """(row, col, majority class, purity, labelled fraction) for each whole chip of the scene's grid
        that the label raster touches; purity and majority count labelled pixels only."""
        from rasterio.enums import Resampling
        from rasterio.warp import reproject

        c0, c1, r0, r1 = self._pixel_range(scene, tile)
        if c1 <= c0 or r1 <= r0:
            return
        for chip_row in range(r0, r1):
            strip = np.full((tile, (c1 - c0) * tile), FILL, dtype=self.strip_dtype)
            transform = scene.transform @ Affine.translation(c0 * tile, chip_row * tile)
            reproject(source=self._band(), destination=strip, src_nodata=self.src.nodata, dst_transform=transform,
                      dst_crs=scene.crs, dst_nodata=FILL, resampling=Resampling.nearest)
            for k in range(c1 - c0):
                block = strip[:, k * tile : (k + 1) * tile]
                labelled = block[block != FILL]
                if labelled.size == 0:
                    continue
                values, counts = np.unique(labelled, return_counts=True)
                best = int(np.argmax(counts))
                yield (chip_row * tile, (c0 + k) * tile, int(values[best]), float(counts[best] / labelled.size),
                       float(labelled.size / block.size))

    def _band(self) -> Any:
        import rasterio

        return rasterio.band(self.src, 1)

    def close(self) -> None:
        self.src.close()

    def __enter__(self) -> LabelRaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
