"""Class maps: a strip-by-strip COG writer, the class colour map, and the side-by-side PNG preview.

Maps are written top to bottom in strips into a hidden tiled GeoTIFF (bounded memory: one block row
at a time), then turned into a Cloud-Optimised GeoTIFF by GDAL's COG driver (tiling, overviews, the
IFD layout) under a temporary name and renamed: a half-written map never carries the final name, and a
failed write (a full disk) is one :class:`~geossl.io.WriteError` naming the map, whichever step failed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.shutil import copy as rio_copy
from rasterio.transform import Affine

from geossl.data.raster import comparable_nodata, valid_mask
from geossl.io import atomic_path, naming_write_errors
from geossl.plotting import save_png

NODATA_CLASS = 255
# Colours a map reader expects for the EuroSAT classes; anything else gets tab20 colours in order.
KNOWN_COLORS: dict[str, tuple[int, int, int]] = {
    "annualcrop": (230, 200, 80),
    "forest": (30, 110, 40),
    "herbaceousvegetation": (150, 200, 90),
    "highway": (130, 130, 130),
    "industrial": (160, 60, 160),
    "pasture": (205, 235, 130),
    "permanentcrop": (230, 140, 60),
    "residential": (215, 50, 50),
    "river": (70, 150, 235),
    "sealake": (20, 50, 140),
}


def class_colors(classes: Sequence[str]) -> list[tuple[int, int, int]]:
    """One RGB colour per class: fixed ones for known land-cover names, tab20 otherwise."""
    from matplotlib import colormaps

    tab = colormaps["tab20"]
    out = []
    for k, name in enumerate(classes):
        key = "".join(ch for ch in name.lower() if ch.isalnum())
        if key in KNOWN_COLORS:
            out.append(KNOWN_COLORS[key])
        else:
            r, g, b, _ = tab(k % 20)
            out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def colormap_entries(classes: Sequence[str]) -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table: class colours opaque, nodata (255) transparent."""
    table = {k: (*c, 255) for k, c in enumerate(class_colors(classes))}
    table[NODATA_CLASS] = (0, 0, 0, 0)
    return table


def class_tags(classes: Sequence[str], extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Metadata tags naming the classes (JSON list plus one ``CLASS_<i>`` per value) and provenance."""
    tags = {"CLASSES": json.dumps(list(classes)), "NODATA_CLASS": str(NODATA_CLASS)}
    tags.update({f"CLASS_{k}": name for k, name in enumerate(classes)})
    tags.update({str(k).upper(): str(v) for k, v in (extra or {}).items()})
    return tags


class COGStripWriter:
    """Write a raster in row order without holding it; :meth:`commit` produces the COG at ``final``.

    Rows are buffered to whole block rows before writing, so GDAL never has to re-read and rewrite a
    partially filled compressed block.
    """

    def __init__(
        self,
        final: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        count: int,
        dtype: str,
        nodata: float,
        crs: Any,
        transform: Affine,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        tags: dict[str, str] | None = None,
        descriptions: Sequence[str] | None = None,
        overview_resampling: str = "nearest",
        block: int = 256,
    ) -> None:
        self.final = Path(final)
        self.width, self.height, self.count, self.block = width, height, count, block
        self.dtype, self.nodata = np.dtype(dtype), nodata
        self.overview_resampling = overview_resampling
        self._colormap, self._tags, self._descriptions = colormap, tags or {}, descriptions
        with naming_write_errors(self.final):
            fd, tmp = tempfile.mkstemp(prefix=f".{self.final.name}.", suffix=".stream.tif", dir=self.final.parent)
        os.close(fd)
        self._stream_path = Path(tmp)
        try:
            with naming_write_errors(self.final, self._stream_path):
                self._ds = rasterio.open(
                    self._stream_path, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                    nodata=nodata, crs=crs, transform=transform, tiled=True, blockxsize=block, blockysize=block,
                    compress="deflate", BIGTIFF="IF_SAFER",
                )
        except BaseException:
            self._stream_path.unlink(missing_ok=True)
            raise
        self._buffer = np.full((count, block, width), nodata, dtype=self.dtype)
        self._buffer_row0 = 0  # map row of buffer row 0
        self._filled = 0  # rows in the buffer
        self.rows_written = 0

    def write(self, rows: np.ndarray) -> None:
        """Append ``rows`` (count, h, width) below what was written so far."""
        if rows.ndim == 2:
            rows = rows[None]
        if rows.shape[0] != self.count or rows.shape[2] != self.width:
            raise ValueError(f"{self.final}: rows of shape {rows.shape} for a {self.count}x{self.width} raster")
        start = 0
        while start < rows.shape[1]:
            take = min(rows.shape[1] - start, self.block - self._filled)
            self._buffer[:, self._filled : self._filled + take] = rows[:, start : start + take]
            self._filled += take
            start += take
            if self._filled == self.block:
                self._flush()

    def _flush(self) -> None:
        if not self._filled:
            return
        if self._buffer_row0 + self._filled > self.height:
            raise ValueError(f"{self.final}: more rows written than the map's {self.height}")
        window = rasterio.windows.Window(0, self._buffer_row0, self.width, self._filled)
        with naming_write_errors(self.final, self._stream_path):  # GDAL's "Write failed" -> the map's name
            self._ds.write(self._buffer[:, : self._filled], window=window)
        self._buffer_row0 += self._filled
        self.rows_written = self._buffer_row0
        self._filled = 0
        self._buffer.fill(self.nodata)

    def commit(self) -> Path:
        """Finish the stream and convert it to a COG under the final name (atomically)."""
        self._flush()
        if self.rows_written != self.height:
            raise RuntimeError(f"{self.final}: {self.rows_written} of {self.height} rows written")
        with naming_write_errors(self.final, self._stream_path):  # closing flushes GDAL's cached blocks
            if self._colormap:
                self._ds.write_colormap(1, self._colormap)
            if self._tags:
                self._ds.update_tags(**self._tags)
            for k, text in enumerate(self._descriptions or [], start=1):
                self._ds.set_band_description(k, text)
            self._ds.close()
        try:
            with atomic_path(self.final, suffix=".tif") as tmp:
                rio_copy(
                    self._stream_path, tmp, driver="COG", BLOCKSIZE=str(self.block), COMPRESS="DEFLATE",
                    OVERVIEW_RESAMPLING=self.overview_resampling.upper(), BIGTIFF="IF_SAFER",
                )
        finally:
            self._stream_path.unlink(missing_ok=True)
        return self.final

    def abort(self) -> None:
        """Discard the map. A close that fails (a full disk fails it too) must not hide the error that
        made the caller abort: the stream is thrown away either way."""
        with contextlib.suppress(Exception):
            if not self._ds.closed:
                self._ds.close()
        self._stream_path.unlink(missing_ok=True)


def stretch_rgb(image: np.ndarray, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """(3 or 1, H, W) raw values -> (H, W, 3) float in [0, 1], each band stretched from ``low`` to ``high``."""
    image = np.asarray(image, dtype=np.float32)
    lo = np.asarray(low, dtype=np.float32).reshape(-1, 1, 1)
    hi = np.asarray(high, dtype=np.float32).reshape(-1, 1, 1)
    out = np.clip((image - lo) / np.maximum(hi - lo, 1e-6), 0.0, 1.0)
    out = np.nan_to_num(out, nan=0.0)
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return out.transpose(1, 2, 0)


def percentiles(image: np.ndarray, valid: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """Per-band 2nd/98th percentiles over valid, finite pixels (the fallback when a model has none)."""
    lows, highs = [], []
    for band in np.asarray(image, dtype=np.float64):
        values = band[np.isfinite(band) & (valid if valid is not None else True)]
        if values.size == 0:
            values = np.array([0.0, 1.0])
        lo, hi = np.percentile(values, [2, 98])
        lows.append(float(lo))
        highs.append(float(hi if hi > lo else lo + 1))
    return lows, highs


def read_overview(
    uri: str, bands: Sequence[int], max_size: int = 900, resampling: Resampling = Resampling.nearest
) -> tuple[np.ndarray, np.ndarray, Any]:
    """A decimated read of a whole raster (uses overviews where present): (image, valid mask, bounds)."""
    with rasterio.open(uri) as src:
        scale = max(src.width, src.height) / max_size
        h, w = (max(1, round(src.height / scale)), max(1, round(src.width / scale))) if scale > 1 else (src.height, src.width)
        image = src.read(list(bands), out_shape=(len(bands), h, w), resampling=resampling)
        # The one validity rule of geossl.data.raster (per-band nodata, NaN/inf), as the models saw it.
        per_band = src.nodatavals or (src.nodata,) * src.count
        valid = valid_mask(image, [comparable_nodata(per_band[b - 1], image.dtype) for b in bands])
        return image, valid, src.bounds


def write_preview(
    out_png: str | os.PathLike[str],
    scene_uri: str,
    rgb_bands: Sequence[int],
    low: Sequence[float] | None,
    high: Sequence[float] | None,
    map_uri: str,
    classes: Sequence[str],
    title: str = "",
) -> Path:
    """Scene RGB (percentile stretch) and class map side by side on the same extent, with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    image, valid, sb = read_overview(scene_uri, rgb_bands)
    if low is None or high is None:
        low, high = percentiles(image, valid)
    rgb = stretch_rgb(image, low, high)
    rgba = np.concatenate([rgb, valid[..., None].astype(np.float32)], axis=-1)
    cmap = np.zeros((256, 4), dtype=np.float32)
    for value, (r, g, b, a) in colormap_entries(classes).items():
        cmap[value] = (r / 255, g / 255, b / 255, a / 255)
    cls_map, _, mb = read_overview(map_uri, [1])
    present = [int(v) for v in np.unique(cls_map) if v != NODATA_CLASS and v < len(classes)]

    aspect = (sb.right - sb.left) / max(sb.top - sb.bottom, 1e-12)
    panel_h = 5.0 if aspect <= 1.6 else 8.0 / aspect
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel_h * aspect + 2.6, panel_h + 0.8), constrained_layout=True)
    axes[0].imshow(rgba, extent=(sb.left, sb.right, sb.bottom, sb.top), interpolation="nearest")
    axes[0].set_title(f"scene (bands {','.join(map(str, rgb_bands))})")
    axes[1].imshow(cmap[cls_map[0]], extent=(mb.left, mb.right, mb.bottom, mb.top), interpolation="nearest")
    axes[1].set_title("land cover")
    for ax in axes:
        ax.set_xlim(sb.left, sb.right)
        ax.set_ylim(sb.bottom, sb.top)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(useOffset=False, style="plain")
    colors = class_colors(classes)
    handles = [Patch(color=(colors[k][0] / 255, colors[k][1] / 255, colors[k][2] / 255), label=classes[k])
               for k in present]
    handles.append(Patch(facecolor="white", edgecolor="grey", label="nodata"))
    axes[1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    path = save_png(fig, out_png)
    # A closed figure is a web of reference cycles that only the cycle collector frees; on its own schedule a
    # run drawing a preview per scene grew by about 300 MB before levelling off (measured): collect it now,
    # so memory stays flat in the number of scenes.
    del fig, axes, handles
    gc.collect()  # cheap where the process froze its start-up objects (geossl.predict.workers.classify_one)
    return path
