"""Windowed reads of one scene in the model's bands, optionally resampled on the fly to its GSD.

We read windows through :class:`geossl.data.raster.WindowReader` rather than a gridded dataset because
classification needs three things at once: any stride, validity masks (the one rule of
:mod:`geossl.data.raster`, the same as in training), and resampling.
Resampling uses a ``WarpedVRT`` in the scene's own CRS whose pixel size is the model's GSD and whose
origin is the scene's origin: the VRT *is* the scene at the model's resolution, so windows, masks and
geotransforms need no special case, and GDAL reads only the source blocks each window touches.
Downsampling averages (no aliasing of 5 m NAIP into 10 m pixels); upsampling is bilinear. A scene
whose explicit mask is not an alpha band (an internal or ``.msk`` mask) would lose it in the VRT, so the
VRT gets an alpha band carrying the warped mask, read as the mask (rule 4).

``onto=ReadGrid(...)`` reads a scene onto *another* scene's read grid instead (``geossl change``: the
second date on the first date's pixels, whatever its own CRS, origin or size). The same ``WarpedVRT``
does it, always with an alpha band: pixels of the grid outside the scene get alpha 0, so they are
invalid even in a file without a nodata value, and windows of both dates line up pixel for pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.enums import MaskFlags, Resampling
from rasterio.transform import Affine, array_bounds
from rasterio.vrt import WarpedVRT
from tqdm import tqdm

from geossl.data.raster import WindowReader, open_raster
from geossl.models.encoder import EncoderMeta
from geossl.scene.bands import check_statistics, fill_invalid, resolve_bands
from geossl.scene.rescale import LinearRescale, check_rescale, fit_percentile_rescale

RESAMPLE_TOLERANCE = 0.05  # a scene within 5 % of the model's GSD is used as it is
AUTO_RESAMPLE_MAX = 4.0  # automatic resampling stays within 4x either way; beyond, --resample must ask for it


def resample_target(
    meta: EncoderMeta, crs: Any, res: tuple[float, float], resample: bool | None, source: str
) -> tuple[float | None, str]:
    """(pixel size in CRS units to resample to, or None; a short reason for the summary).

    ``resample=None`` is automatic: only when the model records its GSD and the CRS is projected in
    linear units (metres, feet) can "10 m" be expressed; geographic CRSs would need a reprojection.
    Automatic resampling also stays within a factor of 4 (5 m NAIP -> 10 m yes, 300 m -> 10 m no).
    """
    if resample is False:
        return None, "resampling off"
    if meta.gsd is None:
        if resample:
            raise ValueError(f"{source}: --resample needs the model's ground sample distance, but its geossl.json has no gsd")
        return None, "model has no gsd"
    if crs is None or not crs.is_projected:
        if resample:
            raise ValueError(
                f"{source}: --resample to {meta.gsd} m needs a projected CRS in metres; the scene's CRS is "
                f"{'missing' if crs is None else crs.to_string()} (reproject it, e.g. gdalwarp -t_srs EPSG:326xx)"
            )
        return None, f"scene CRS {crs.to_string() if crs else 'missing'} is not in metres"
    unit_m = float(crs.linear_units_factor[1])
    pixel_m = 0.5 * (abs(res[0]) + abs(res[1])) * unit_m
    if not resample and abs(pixel_m - meta.gsd) / meta.gsd < RESAMPLE_TOLERANCE:
        return None, f"scene is at {pixel_m:g} m, the model's gsd"
    factor = max(pixel_m / meta.gsd, meta.gsd / pixel_m)
    if resample is None and factor > AUTO_RESAMPLE_MAX:
        # 300 m Landsat into a 10 m model would be 900x the windows of blurred pixels: never by surprise.
        return None, f"not resampled: scene {pixel_m:g} m vs model {meta.gsd:g} m is beyond auto range (--resample forces it)"
    return meta.gsd / unit_m, f"resampled {pixel_m:g} m -> {meta.gsd:g} m"


@dataclass(frozen=True)
class ReadGrid:
    """A read grid to put another scene on: CRS, float64 geotransform, size, and whose grid it is (messages)."""

    crs: Any
    transform: Affine
    width: int
    height: int
    name: str = "the reference grid"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return west, south, east, north


class ModelSceneReader:
    """One open scene (or its resampling VRT): window reads as float32 plus a validity mask.

    ``rescale="percentile"`` maps each band linearly so that the scene's sampled 2nd/98th percentiles
    become the model's p2/p98 (:mod:`geossl.scene.rescale`); every read is then in the model's units.
    ``onto``: read the scene onto that grid (module docstring); ``resample`` is then ignored.
    """

    def __init__(
        self, uri: str, meta: EncoderMeta, bands: Sequence[int] | None = None, resample: bool | None = None,
        *, rescale: str | None = None, onto: ReadGrid | None = None,
    ) -> None:
        self.uri = uri
        self.meta = meta
        self.rescaler: LinearRescale | None = None
        rescale = check_rescale(rescale, meta)
        try:
            self.src = open_raster(uri)
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        src = self.src
        try:
            self.bands = resolve_bands(meta, src.count, uri, bands, src.descriptions)
            if src.crs is None:
                raise ValueError(f"{uri}: not georeferenced (no CRS): a scene map needs one; classify it as a tile")
            self.ds: Any = src
            alpha_band = None
            if onto is not None:
                target, self.resample_note = None, f"read onto the grid of {onto.name}"
                self.ds, alpha_band = self._warped_onto(onto)
            else:
                target, self.resample_note = resample_target(meta, src.crs, src.res, resample, uri)
            if target is not None:
                self.ds, alpha_band = self._warped(target)
            self.windows = WindowReader(self.ds, self.bands, uri, alpha_band=alpha_band)
            self.target_res = target
            self.nodata = src.nodata
            if rescale == "percentile":  # fitted on raw samples: self.rescaler is still None here
                self.rescaler = fit_percentile_rescale(meta, self.sample_pixels(), uri)
        except Exception:
            self.close()
            raise

    def _warped(self, target: float) -> tuple[WarpedVRT, int | None]:
        """The VRT at ``target`` units per pixel, and its added alpha band (None when not needed)."""
        src = self.src
        t = src.transform
        if t.b != 0 or t.d != 0:
            raise ValueError(f"{self.uri}: rotated geotransform; cannot resample on the fly (warp it north-up first)")
        width = int(math.floor(src.width * abs(t.a) / target + 1e-9))
        height = int(math.floor(src.height * abs(t.e) / target + 1e-9))
        if width < 1 or height < 1:
            raise ValueError(f"{self.uri}: smaller than one {target:g}-unit pixel after resampling")
        transform = Affine(math.copysign(target, t.a), 0.0, t.c, 0.0, math.copysign(target, t.e), t.f)
        down = target > abs(t.a)
        flags = [src.mask_flag_enums[b - 1] for b in self.bands]
        # An alpha band travels through the VRT by itself; another per-dataset mask needs an alpha to carry it.
        add_alpha = any(MaskFlags.per_dataset in f and MaskFlags.alpha not in f for f in flags)
        vrt = WarpedVRT(
            src, crs=src.crs, transform=transform, width=width, height=height,
            resampling=Resampling.average if down else Resampling.bilinear,
            src_nodata=src.nodata, nodata=src.nodata, add_alpha=add_alpha,
        )  # fmt: skip
        return vrt, (vrt.count if add_alpha else None)

    def _warped_onto(self, grid: ReadGrid) -> tuple[WarpedVRT, int | None]:
        """The scene on ``grid`` (any CRS), with an alpha band marking where it has valid data.

        Refused in one line when the scene's footprint does not reach the grid. Averaging when the scene's
        pixels are finer than the grid's (as :meth:`_warped`), bilinear otherwise."""
        from rasterio.warp import calculate_default_transform, transform_bounds

        src = self.src
        left, bottom, right, top = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
        g_left, g_bottom, g_right, g_top = grid.bounds
        if min(right, g_right) <= max(left, g_left) or min(top, g_top) <= max(bottom, g_bottom):
            raise ValueError(
                f"{self.uri}: does not overlap {grid.name} (bounds in {grid.crs.to_string()}: "
                f"{left:.10g}, {bottom:.10g}, {right:.10g}, {top:.10g} vs {g_left:.10g}, {g_bottom:.10g}, "
                f"{g_right:.10g}, {g_top:.10g})")
        own, _, _ = calculate_default_transform(src.crs, grid.crs, src.width, src.height, *src.bounds)
        down = abs(grid.transform.a) > abs(own.a) * (1 + RESAMPLE_TOLERANCE)
        # A scene with its own alpha band keeps it (GDAL warps it, 0 outside the scene) and reads it as its
        # mask; any other scene gets one, so the grid outside it is invalid even without a nodata value.
        add_alpha = not any(MaskFlags.alpha in flags for flags in src.mask_flag_enums)
        vrt = WarpedVRT(
            src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
            resampling=Resampling.average if down else Resampling.bilinear,
            src_nodata=src.nodata, nodata=src.nodata, add_alpha=add_alpha,
        )  # fmt: skip
        return vrt, (vrt.count if add_alpha else None)

    def grid(self, name: str | None = None) -> ReadGrid:
        """This reader's read grid, to read another scene onto (``ModelSceneReader(..., onto=reader.grid())``)."""
        return ReadGrid(self.crs, self.transform, self.width, self.height, name or self.uri)

    @property
    def width(self) -> int:
        return int(self.ds.width)

    @property
    def height(self) -> int:
        return int(self.ds.height)

    @property
    def transform(self) -> Affine:
        """Float64 geotransform of the read grid (the scene's own, or the resampled one)."""
        return self.ds.transform

    @property
    def crs(self) -> Any:
        return self.src.crs

    @property
    def scale(self) -> float:
        """Scene pixels per read-grid pixel (1.0 unless resampling)."""
        return float(abs(self.transform.a) / abs(self.src.transform.a))

    def read(self, col: int, row: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(C, h, w) float32 with invalid pixels filled by the model's means, and the (h, w) valid mask."""
        data, valid = self.windows.read(col, row, width, height)
        image = data.astype(np.float32, copy=False)
        if self.rescaler is not None:
            self.rescaler.apply(image)
        fill_invalid(image[None], valid[None], self.meta.mean)
        return image, valid

    def read_batch(self, origins: Sequence[tuple[int, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
        """Stack windows at (col, row) ``origins`` of ``size`` px: (B, C, T, T) float32, (B, T, T) bool."""
        images = np.empty((len(origins), len(self.bands), size, size), dtype=np.float32)
        valid = np.empty((len(origins), size, size), dtype=bool)
        for i, (col, row) in enumerate(origins):
            images[i], valid[i] = self.read(col, row, size, size)
        return images, valid

    def sample_pixels(self, size: int = 256, grid: int = 3) -> np.ndarray:
        """(C, N) valid pixels from a few windows spread over the scene: cheap, whatever its size."""
        w, h = min(size, self.width), min(size, self.height)
        cols = np.linspace(0, self.width - w, grid).astype(int)
        rows = np.linspace(0, self.height - h, grid).astype(int)
        chunks = []
        for r in sorted(set(rows.tolist())):
            for c in sorted(set(cols.tolist())):
                image, valid = self.read(c, r, w, h)
                chunks.append(image[:, valid])
        return np.concatenate(chunks, axis=1)

    def check_statistics(self) -> None:
        check_statistics(self.meta, self.sample_pixels(), self.uri, self.bands)

    def close(self) -> None:
        ds = getattr(self, "ds", self.src)
        if ds is not self.src:
            ds.close()
        self.src.close()

    def __enter__(self) -> ModelSceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def window_batches(reader: ModelSceneReader, grid: Any, batch_size: int,
                   desc: str | None) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Row-major batches of ``grid``'s windows, the next batch read in a thread while the caller runs the
    model: (first window index, images (B, C, T, T), valid (B, T, T), valid fraction (B,), integral image
    of the valid pixels (B, T+1, T+1), for each cell's own valid share). Window and dense maps share it."""
    tile, n_windows = grid.tile, grid.n_windows
    bar = tqdm(total=n_windows, unit="win", desc=desc, disable=desc is None, leave=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(reader.read_batch, grid.origins(0, batch_size), tile)
        for b0 in range(0, n_windows, batch_size):
            images, valid = pending.result()
            if b0 + batch_size < n_windows:
                pending = pool.submit(reader.read_batch, grid.origins(b0 + batch_size, batch_size), tile)
            frac = valid.reshape(len(valid), -1).mean(axis=1)
            integral = np.zeros((len(valid), tile + 1, tile + 1), np.int32)
            integral[:, 1:, 1:] = valid.cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)
            yield b0, images, valid, frac, integral
            bar.update(len(valid))
    bar.close()
