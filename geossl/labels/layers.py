"""Read a label layer (points or polygons, any CRS, any format GDAL/OGR or GeoParquet holds) and check it.

geopandas (through pyogrio) reads every vector format users bring: GeoJSON, GeoPackage, Shapefile,
FlatGeobuf, GeoParquet. What this module adds is the checks a probe needs before any scene is opened,
each a one-line error naming the file: a layer it can read, features in it, a CRS, a label field,
geometry types a chip can be cut from (points, or polygons; not both in one layer). Features with no
geometry or no label are skipped and counted, never fatal. Invalid polygons (self-intersecting rings, a
common digitising slip) are repaired with shapely's ``make_valid`` and counted, since GEOS refuses to
intersect them with chip footprints; one with no area left after repair is skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geossl.data.splits import SPLIT_NAMES
from geossl.labels.options import SPLIT_COLUMN

DEFAULT_LABEL_FIELDS = ("label", "class")
POINT_TYPES = {"Point", "MultiPoint"}
POLYGON_TYPES = {"Polygon", "MultiPolygon"}
PARQUET_SUFFIXES = (".parquet", ".geoparquet")


@dataclass
class LabelLayer:
    """Usable labels: ``frame`` has columns geometry, label (str), split (str, "" = none), row (source row)."""

    frame: Any  # geopandas.GeoDataFrame
    kind: str  # "points" | "polygons"
    source: str
    label_field: str
    has_split_column: bool
    skipped: Counter[str] = field(default_factory=Counter)
    repaired: int = 0  # invalid polygons (e.g. self-intersecting) repaired with shapely.make_valid

    @property
    def crs(self) -> Any:
        return self.frame.crs


def _read_frame(path: Path, layer: str | None) -> Any:
    import geopandas as gpd
    import pyogrio

    if not path.exists():
        raise FileNotFoundError(f"{path}: labels file not found")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return gpd.read_parquet(path)
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
        if layer is not None and layer not in layers:
            raise ValueError(f"{path}: no layer {layer!r} (layers: {', '.join(layers)})")
        if layer is None and len(layers) > 1:
            raise ValueError(f"{path}: holds {len(layers)} layers ({', '.join(layers)}); choose one with --layer")
        return gpd.read_file(path, layer=layer, engine="pyogrio")
    except ValueError:
        raise
    except Exception as exc:  # pyogrio/arrow errors vary by format: one line naming the file
        raise ValueError(f"{path}: cannot read as a vector layer ({str(exc).splitlines()[0]})") from None


def _label_field(frame: Any, requested: str | None, source: Path) -> str:
    fields = [c for c in frame.columns if c != frame.geometry.name]
    if requested is not None:
        if requested not in fields:
            raise ValueError(f"{source}: no field {requested!r} (fields: {', '.join(fields) or 'none'})")
        return requested
    for name in DEFAULT_LABEL_FIELDS:
        if name in fields:
            return name
    raise ValueError(f"{source}: no label field: none of {list(DEFAULT_LABEL_FIELDS)} among the fields "
                     f"({', '.join(fields) or 'none'}); name it with --label-field")


def _kind(types: set[str], source: Path) -> str:
    unusable = sorted(types - POINT_TYPES - POLYGON_TYPES)
    if unusable:
        raise ValueError(f"{source}: geometry type {unusable[0]} cannot be used (chips are cut at points or "
                         "inside polygons)")
    if types & POINT_TYPES and types & POLYGON_TYPES:
        raise ValueError(f"{source}: mixes points and polygons; put them in two layers and probe each")
    return "points" if types <= POINT_TYPES else "polygons"


def _split_values(frame: Any, source: Path) -> np.ndarray:
    raw = frame[SPLIT_COLUMN]
    values = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().lower()
                       for v in raw], dtype=object)
    bad = sorted({v for v in values if v not in (*SPLIT_NAMES, "")})
    if bad:
        raise ValueError(f"{source}: column {SPLIT_COLUMN!r} holds {bad[0]!r}; expected {list(SPLIT_NAMES)} "
                         "(or empty to leave a label out)")
    return values


def read_label_layer(path: str | Path, label_field: str | None = None, layer: str | None = None) -> LabelLayer:
    """Read and check a label layer; multi-points become points (each its own label)."""
    path = Path(path)
    frame = _read_frame(path, layer)
    if len(frame) == 0:
        raise ValueError(f"{path}: the layer has no features")
    if frame.crs is None:
        raise ValueError(f"{path}: the layer has no CRS; set one (e.g. ogr2ogr -a_srs EPSG:4326)")
    name = _label_field(frame, label_field, path)
    skipped: Counter[str] = Counter()
    frame = frame.assign(row=np.arange(len(frame)))
    no_geometry = frame.geometry.isna() | frame.geometry.is_empty
    skipped["no_geometry"] = int(no_geometry.sum())
    labels = frame[name]
    no_label = ~no_geometry & (labels.isna() | (labels.astype(str).str.strip() == ""))
    skipped["no_label"] = int(no_label.sum())
    frame = frame[~no_geometry & ~no_label]
    if len(frame) == 0:
        raise ValueError(f"{path}: no feature has both a geometry and a {name!r} value")
    kind = _kind(set(frame.geometry.geom_type), path)
    has_split = SPLIT_COLUMN in frame.columns and SPLIT_COLUMN != name
    split = _split_values(frame, path) if has_split else np.full(len(frame), "", dtype=object)
    out = frame[[frame.geometry.name, "row"]].assign(label=[_label_text(v) for v in frame[name]], split=split)
    repaired = 0
    if kind == "points":
        out = out.explode(index_parts=False, ignore_index=True)
    else:
        out, repaired, unusable = _repair_polygons(out)
        skipped["invalid_geometry"] = unusable
        if len(out) == 0:
            raise ValueError(f"{path}: every polygon is invalid and has no area once repaired")
    return LabelLayer(out.reset_index(drop=True), kind, str(path), name, has_split, skipped, repaired)


def _repair_polygons(frame: Any) -> tuple[Any, int, int]:
    """(frame with invalid polygons made valid, how many were repaired, how many had no area left and were
    dropped). Only the polygonal parts of a repair are kept: a bow-tie becomes two triangles, but the
    stray lines ``make_valid`` may also return cannot hold a chip."""
    import geopandas as gpd

    geoms = frame.geometry.to_numpy()
    invalid = ~shapely.is_valid(geoms)
    if not invalid.any():
        return frame, 0, 0
    fixed = geoms.copy()
    for i in np.flatnonzero(invalid):
        valid = shapely.make_valid(geoms[i])
        if valid.geom_type not in POLYGON_TYPES:
            parts = [g for g in shapely.get_parts(valid) if g.geom_type in POLYGON_TYPES]
            valid = shapely.union_all(parts) if parts else shapely.Polygon()
        fixed[i] = valid
    usable = ~shapely.is_empty(fixed) & (shapely.area(fixed) > 0)
    frame = frame.copy()
    frame[frame.geometry.name] = gpd.GeoSeries(fixed, index=frame.index, crs=frame.crs)
    return frame[usable], int((invalid & usable).sum()), int((~usable).sum())


def _label_text(value: Any) -> str:
    """Class names as text; integer codes stored as floats (a Shapefile habit) lose their ".0"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
