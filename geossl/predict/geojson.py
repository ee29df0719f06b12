"""Footprints in WGS84 (RFC 7946) and a streaming GeoJSON writer.

RFC 7946 fixes the CRS to WGS84 with lon/lat order, closed rings and counter-clockwise exteriors. We
transform with ``always_xy=True`` because EPSG:4326's official axis order is lat/lon and pyproj would
otherwise swap the coordinates. Features are written as they are produced so a scene with a million
windows never holds a million features in memory; the file appears under its final name only when
complete (:func:`geossl.io.atomic_path`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from geossl.io import atomic_path

COORD_DECIMALS = 8  # ~1 mm at the equator: more precision than any pixel footprint needs


@lru_cache(maxsize=32)
def _to_wgs84(crs_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(crs_wkt), CRS.from_epsg(4326), always_xy=True)


def crs_key(crs: Any) -> str:
    """A hashable, exact description of a CRS (rasterio or pyproj) for the transformer cache."""
    return crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)


def signed_area(ring: Sequence[Sequence[float]]) -> float:
    """Shoelace area of a closed ring: positive when counter-clockwise (x east, y north)."""
    xs = np.asarray([p[0] for p in ring], dtype=np.float64)
    ys = np.asarray([p[1] for p in ring], dtype=np.float64)
    return float(0.5 * np.sum(xs[:-1] * ys[1:] - xs[1:] * ys[:-1]))


def footprint_lonlat(
    transform: Affine, col_off: float, row_off: float, width: float, height: float, crs: Any
) -> list[list[float]]:
    """Closed, counter-clockwise lon/lat ring of a pixel window (float64 geotransform, any CRS).

    The four corners are transformed exactly; edges of a tile are short enough that their curvature
    in lon/lat is far below a pixel.
    """
    corners = [(col_off, row_off + height), (col_off + width, row_off + height),
               (col_off + width, row_off), (col_off, row_off)]
    xy = [transform @ c for c in corners]
    lon, lat = _to_wgs84(crs_key(crs)).transform([p[0] for p in xy], [p[1] for p in xy])
    ring = [[round(float(x), COORD_DECIMALS), round(float(y), COORD_DECIMALS)] for x, y in zip(lon, lat, strict=True)]
    if not all(math.isfinite(v) for p in ring for v in p):
        raise ValueError(f"footprint of window {(col_off, row_off, width, height)} cannot be expressed in lon/lat")
    ring.append(list(ring[0]))
    if signed_area(ring) < 0:  # a south-up or mirrored geotransform gives a clockwise ring
        ring.reverse()
    return ring


def feature(ring: list[list[float]] | None, properties: dict[str, Any]) -> dict[str, Any]:
    geometry = None if ring is None else {"type": "Polygon", "coordinates": [ring]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


class GeoJSONWriter:
    """Write a FeatureCollection one feature at a time into an open temporary file."""

    def __init__(self, fh: TextIO) -> None:
        self._fh = fh
        self.count = 0
        fh.write('{"type": "FeatureCollection", "features": [\n')

    def add(self, ring: list[list[float]] | None, properties: dict[str, Any]) -> None:
        if self.count:
            self._fh.write(",\n")
        self._fh.write(json.dumps(feature(ring, properties), separators=(",", ":"), allow_nan=False))
        self.count += 1

    def close(self) -> None:
        self._fh.write("\n]}\n")


@contextlib.contextmanager
def geojson_writer(final: str | os.PathLike[str]) -> Iterator[GeoJSONWriter]:
    """``with geojson_writer(path) as w: w.add(ring, props)``: atomic; nothing at ``path`` on error."""
    with atomic_path(Path(final), suffix=".geojson") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        writer = GeoJSONWriter(fh)
        yield writer
        writer.close()
