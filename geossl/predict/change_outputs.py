"""What ``geossl change`` writes besides the score map: areas in hectares, the transition table, the
preview, and the dates of a series (from the file names).

Kept apart from :mod:`geossl.predict.change` (the streaming of windows into maps) because each of these
is a small rule of its own that tests check against an independent computation: a cell's area (exact
for projected grids, geodesic for longitude/latitude grids, where a cell shrinks towards the poles),
the order of a series, and the CSV's columns.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.transform import Affine, from_bounds
from rasterio.vrt import WarpedVRT

from geossl.data.stacks import date_in_name
from geossl.data.uris import RASTER_EXTS, expand_inputs
from geossl.io import atomic_path
from geossl.plotting import save_png
from geossl.predict.common import output_stem
from geossl.predict.maps import percentiles, read_overview, stretch_rgb

TRANSITIONS_HEADER = ["from_class", "to_class", "cells", "area_ha"]


def series_scenes(spec: str | os.PathLike[str]) -> list[tuple[str, dt.datetime]]:
    """The rasters of a folder or glob, oldest first by the date in their names; every one must have a date
    and there must be at least two (else a one-line error naming the file or the input)."""
    uris = expand_inputs([str(spec)], exts=RASTER_EXTS)
    dated = []
    for uri in uris:
        date = date_in_name(uri)
        if date is None:
            raise ValueError(f"--series: {uri} has no date in its name (expected e.g. _20090818 or 1985)")
        dated.append((uri, date))
    if len(dated) < 2:
        raise ValueError(f"--series {spec}: {len(dated)} dated scene(s); a change needs at least two")
    dated.sort(key=lambda item: (item[1], item[0]))
    return dated


def series_pairs(scenes: Sequence[str], consecutive: bool = False, all_pairs: bool = False) -> list[tuple[str, str]]:
    """(before, after) pairs of dated ``scenes`` (oldest first): every date against the first, each against the
    one before it (``consecutive``), or every earlier date against every later one (``all_pairs``)."""
    if consecutive and all_pairs:
        raise ValueError("--consecutive and --all-pairs are two different pairings: give one")
    if all_pairs:
        return list(itertools.combinations(scenes, 2))
    if consecutive:
        return list(zip(scenes[:-1], scenes[1:], strict=True))
    return [(scenes[0], later) for later in scenes[1:]]


def cell_area_ha(crs: Any, transform: Affine, row: int) -> float:
    """Area in hectares of one map cell in map row ``row``.

    Projected CRS: the geotransform's pixel area times the unit in metres squared (the same for every
    cell). Geographic CRS: the geodesic area of the row's first cell on the CRS's ellipsoid, since a degree
    of longitude shrinks with latitude (every cell of a north-up row has the same area)."""
    if crs is None:
        raise ValueError("a map without a CRS has no area in hectares")
    if crs.is_projected:
        unit = float(crs.linear_units_factor[1])
        return abs(transform.a * transform.e - transform.b * transform.d) * unit * unit / 1e4
    geod = _geod(crs.to_wkt())
    if geod is None:
        raise ValueError(f"{crs.to_string()}: no ellipsoid to measure areas on")
    corners = [transform @ (0, row), transform @ (1, row), transform @ (1, row + 1), transform @ (0, row + 1)]
    area, _ = geod.polygon_area_perimeter([c[0] for c in corners], [c[1] for c in corners])
    return abs(area) / 1e4


@functools.lru_cache(maxsize=8)
def _geod(wkt: str) -> Any:
    """The CRS's ellipsoid as a ``pyproj.Geod`` (parsed once per CRS, not once per map row)."""
    return CRS.from_user_input(wkt).get_geod()


def write_transitions(path: Path, classes: Sequence[str], cells: np.ndarray, area_ha: np.ndarray) -> Path:
    """The from-to table: one row per (before class, after class) pair that occurs, in class order, with
    its patch count and area; the areas sum to the area valid on both dates."""
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(TRANSITIONS_HEADER)
        for i, j in zip(*np.nonzero(cells), strict=True):
            writer.writerow([classes[i], classes[j], int(cells[i, j]), f"{area_ha[i, j]:.4f}"])
    return path


def overview_onto(uri: str, bands: Sequence[int], crs: Any, bounds: Any, shape: tuple[int, int]) -> tuple[
        np.ndarray, np.ndarray]:
    """A decimated read of ``uri`` onto ``bounds`` (in ``crs``) at ``shape`` (h, w): (image, valid), so the
    second date of a preview shows exactly the ground of the first."""
    h, w = shape
    with rasterio.open(uri) as src:
        add_alpha = not any(MaskFlags.alpha in flags for flags in src.mask_flag_enums)  # else its own alpha
        with WarpedVRT(src, crs=crs, transform=from_bounds(*bounds, w, h), width=w, height=h,
                       resampling=Resampling.bilinear, src_nodata=src.nodata, nodata=src.nodata,
                       add_alpha=add_alpha) as vrt:
            return vrt.read(list(bands)), vrt.read_masks(1) != 0


def write_change_preview(out_png: Path, before: str, after: str, rgb_bands: tuple[Sequence[int], Sequence[int]],
                         low: Sequence[float] | None, high: Sequence[float] | None, score_uri: str,
                         title: str = "") -> Path:
    """Before, after (read onto the before scene's extent) and the score side by side.

    Both dates share one stretch (the model's p2/p98, else the before scene's percentiles), so a change
    in brightness shows as one, rather than being stretched away."""
    import matplotlib.pyplot as plt

    image_a, valid_a, extent = read_overview(before, rgb_bands[0])
    with rasterio.open(before) as src:
        crs = src.crs
    image_b, valid_b = overview_onto(after, rgb_bands[1], crs, extent, image_a.shape[1:])
    if low is None or high is None:
        low, high = percentiles(image_a, valid_a)
    score, score_ok, sb = read_overview(score_uri, [1])
    values = np.ma.masked_invalid(score[0].astype(np.float32))
    top = float(np.nanpercentile(values.filled(np.nan), 99)) if score_ok.any() else 1.0
    aspect = (extent.right - extent.left) / max(extent.top - extent.bottom, 1e-12)
    panel_h = 4.5 if aspect <= 1.6 else 7.0 / aspect
    fig, axes = plt.subplots(1, 3, figsize=(3 * panel_h * aspect + 1.8, panel_h + 0.8), constrained_layout=True)
    box = (extent.left, extent.right, extent.bottom, extent.top)
    for ax, image, valid, name in ((axes[0], image_a, valid_a, before), (axes[1], image_b, valid_b, after)):
        rgba = np.concatenate([stretch_rgb(image, low, high), valid[..., None].astype(np.float32)], axis=-1)
        ax.imshow(rgba, extent=box, interpolation="nearest")
        ax.set_title(output_stem(name), fontsize=9)
    shown = axes[2].imshow(values, extent=(sb.left, sb.right, sb.bottom, sb.top), cmap="magma", vmin=0.0,
                           vmax=max(top, 1e-3), interpolation="nearest")
    axes[2].set_title("change score (1 - cosine)", fontsize=9)
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_xlim(extent.left, extent.right)
        ax.set_ylim(extent.bottom, extent.top)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(useOffset=False, style="plain")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, out_png)
