"""Where chips can be cut: candidate windows for points, polygons and label rasters, before any pixel is read.

A *target* is one label (a point, a polygon, or one cell of a label raster's chip grid) with the chip
windows it may be cut from, best first, and how many chips it wants. Windows are whole chips of the
encoder's tile size on a scene's read grid (the encoder's GSD), always fully inside the scene: a
chip padded at the edge would teach the head what a collar looks like. Reading and the validity
check come later (:mod:`geossl.labels.chips`), which walks each target's candidates until it has its
chips, so a label whose best scene is cloudy/nodata there falls back to the next scene that holds it.

Geometry work is vectorised with shapely 2 and pyproj through geopandas; labels are reprojected once
per scene CRS, never per scene.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import ProjError

from geossl.labels.catalog import SceneCatalog, SceneGrid
from geossl.labels.layers import LabelLayer

SNAP = 1e-3  # pixels: a polygon edge within this of a pixel edge is on it (reprojection round-off)
WGS84 = "EPSG:4326"
# From this share of labels outside every scene, the labels' CRS is suspected (a wrong one puts them all
# elsewhere) and the message names both CRSs.
NEARLY_ALL_OUTSIDE = 0.9


@dataclass
class Target:
    """One label and the windows (scene index, col, row) it may be cut from, in preference order."""

    label: str
    split: str  # from the labels' split column, "" when none
    group: int  # chips of one group (a polygon) always share a split
    lonlat: tuple[float, float]  # the group's representative point, for spatial blocks
    need: int
    candidates: list[tuple[int, int, int]] = field(default_factory=list)
    source_row: int = -1  # row of the label layer (-1 for raster cells)
    purity: float = 1.0  # label rasters: share of the majority class
    centre_check: bool = False  # points: the pixel under the point must itself be valid
    no_candidate: str = ""  # why there is none: "outside", "near_edge", ...


@dataclass
class Placement:
    targets: list[Target]
    skipped: Counter[str] = field(default_factory=Counter)


def _representative_lonlat(layer: LabelLayer) -> np.ndarray:
    geoms = layer.frame.geometry.to_crs(WGS84)
    points = geoms if layer.kind == "points" else geoms.representative_point()
    return np.column_stack([points.x.to_numpy(), points.y.to_numpy()])


def _targets_from_layer(layer: LabelLayer, need: int, centre_check: bool) -> list[Target]:
    lonlat = _representative_lonlat(layer)
    frame = layer.frame
    return [Target(label=str(lab), split=str(s), group=i, lonlat=(float(lonlat[i, 0]), float(lonlat[i, 1])),
                   need=need, source_row=int(row), centre_check=centre_check)
            for i, (lab, s, row) in enumerate(zip(frame["label"], frame["split"], frame["row"], strict=True))]


def place_points(layer: LabelLayer, catalog: SceneCatalog, tile: int) -> Placement:
    """One chip centred on each point: among the scenes whose grid holds it whole, the one where the
    chip lies farthest from the scene's edges comes first."""
    targets = _targets_from_layer(layer, need=1, centre_check=True)
    inside_any = np.zeros(len(targets), dtype=bool)
    ranked: list[list[tuple[int, int, int, int]]] = [[] for _ in targets]
    for indices in catalog.by_crs().values():
        geoms = layer.frame.geometry.to_crs(catalog.scenes[indices[0]].crs)
        xs, ys = geoms.x.to_numpy(), geoms.y.to_numpy()
        for si in indices:
            scene = catalog.scenes[si]
            with np.errstate(invalid="ignore"):  # a label the CRS transformation could not place is inf: outside
                cols, rows = ~scene.transform @ (xs, ys)
                inside = (cols >= 0) & (cols < scene.width) & (rows >= 0) & (rows < scene.height)
            inside_any |= inside
            c0 = np.round(np.where(inside, cols, 0) - tile / 2).astype(np.int64)
            r0 = np.round(np.where(inside, rows, 0) - tile / 2).astype(np.int64)
            margin = np.minimum.reduce([c0, r0, scene.width - tile - c0, scene.height - tile - r0])
            for j in np.flatnonzero(inside & (margin >= 0)):
                ranked[j].append((-int(margin[j]), si, int(c0[j]), int(r0[j])))
    skipped: Counter[str] = Counter()
    for i, target in enumerate(targets):
        target.candidates = [(si, c, r) for _, si, c, r in sorted(ranked[i])]
        if not target.candidates:
            target.no_candidate = "near_edge" if inside_any[i] else "outside"
            skipped[target.no_candidate] += 1
    return Placement(targets, skipped)


def window_boxes(scene: SceneGrid, cols: np.ndarray, rows: np.ndarray, tile: int) -> Any:
    """Chip footprints (shapely polygons, scene CRS) of windows at pixel origins ``cols``/``rows``."""
    corners = np.array([(0, 0), (tile, 0), (tile, tile), (0, tile), (0, 0)], dtype=np.float64)
    px = cols[:, None] + corners[None, :, 0]
    py = rows[:, None] + corners[None, :, 1]
    t = scene.transform
    xs, ys = t.a * px + t.b * py + t.c, t.d * px + t.e * py + t.f
    return shapely.polygons(np.stack([xs, ys], axis=-1))


def _polygon_windows(poly: Any, scene: SceneGrid, tile: int, min_overlap: float) -> list[tuple[int, int]]:
    """Non-overlapping chip windows on a grid anchored at the first whole pixel of the polygon's bounding
    box (less the overhang ``min_overlap`` allows), kept when the polygon covers at least ``min_overlap``
    of them."""
    minx, miny, maxx, maxy = poly.bounds
    cols, rows = ~scene.transform @ (np.array([minx, maxx, minx, maxx]), np.array([miny, miny, maxy, maxy]))
    # whole pixels of the bounding box (a chip overhanging the polygon by a part-pixel would fail
    # min_overlap 1), widened by the overhang a lower min_overlap allows
    margin = math.floor(tile * (1.0 - min_overlap) + 1e-9)
    c_lo = max(0, math.ceil(cols.min() - SNAP) - margin)
    c_hi = min(scene.width, math.floor(cols.max() + SNAP) + margin)
    r_lo = max(0, math.ceil(rows.min() - SNAP) - margin)
    r_hi = min(scene.height, math.floor(rows.max() + SNAP) + margin)
    grid_c, grid_r = np.arange(c_lo, c_hi - tile + 1, tile), np.arange(r_lo, r_hi - tile + 1, tile)
    if grid_c.size == 0 or grid_r.size == 0:
        return []
    cc, rr = (a.ravel() for a in np.meshgrid(grid_c, grid_r))
    boxes = window_boxes(scene, cc, rr, tile)
    covered = shapely.area(shapely.intersection(boxes, poly)) / shapely.area(boxes)
    keep = covered >= min_overlap - 1e-6
    return [(int(c), int(r)) for c, r in zip(cc[keep], rr[keep], strict=True)]


def place_polygons(layer: LabelLayer, catalog: SceneCatalog, tile: int, per_polygon: int,
                   min_overlap: float, seed: int) -> Placement:
    """Chips inside each polygon (footprint covered by at least ``min_overlap``), in a seeded random
    order; up to ``per_polygon`` of them are kept once read and found valid."""
    targets = _targets_from_layer(layer, need=per_polygon, centre_check=False)
    touched = np.zeros(len(targets), dtype=bool)
    small = np.zeros(len(targets), dtype=bool)
    for indices in catalog.by_crs().values():
        geoms = layer.frame.geometry.to_crs(catalog.scenes[indices[0]].crs).to_numpy()
        tree = shapely.STRtree(geoms)
        for si in indices:
            scene = catalog.scenes[si]
            chip_area = abs(scene.transform.a * scene.transform.e - scene.transform.b * scene.transform.d) * tile**2
            for gi in tree.query(scene.footprint(), predicate="intersects"):
                touched[gi] = True
                small[gi] |= geoms[gi].area * (1 + 1e-6) < chip_area * min_overlap
                targets[gi].candidates.extend((si, c, r) for c, r in
                                              _polygon_windows(geoms[gi], scene, tile, min_overlap))
    skipped: Counter[str] = Counter()
    for gi, target in enumerate(targets):
        if target.candidates:
            order = np.random.default_rng([seed, gi]).permutation(len(target.candidates))
            target.candidates = [target.candidates[k] for k in order]
            continue
        target.no_candidate = ("outside" if not touched[gi] else
                               "polygon_smaller_than_chip" if small[gi] else "no_chip_inside")
        skipped[target.no_candidate] += 1
    return Placement(targets, skipped)


def place_raster_labels(label_raster: Path, catalog: SceneCatalog, tile: int, min_valid: float,
                        min_purity: float, class_names: dict[int, str]) -> Placement:
    """The chip grid of every scene, each chip labelled by the majority class of the label raster under
    it (reprojected, nearest neighbour; nodata ignored); chips below ``min_valid`` labelled pixels or
    ``min_purity`` are skipped and counted. Read one strip of chips at a time: memory stays bounded."""
    from geossl.labels.label_raster import LabelRaster

    targets: list[Target] = []
    skipped: Counter[str] = Counter()
    with LabelRaster(label_raster) as labels:
        for si, scene in enumerate(catalog.scenes):
            for r0, c0, majority, purity, labelled in labels.chip_majorities(scene, tile):
                if labelled < min_valid:
                    skipped["label_nodata"] += 1
                    continue
                if purity < min_purity:
                    skipped["impure"] += 1
                    continue
                cx, cy = scene.transform @ (c0 + tile / 2, r0 + tile / 2)
                targets.append(Target(label=class_names.get(majority, str(majority)), split="",
                                      group=len(targets), lonlat=(float(cx), float(cy)), need=1,
                                      candidates=[(si, c0, r0)], purity=purity))
        _centres_to_lonlat(targets, catalog)
    if not targets:
        raise ValueError(f"{label_raster}: no chip of any scene is labelled (no overlap with the scenes, or every "
                         f"chip below --min-valid {min_valid} / --min-purity {min_purity}: {dict(skipped)})")
    return Placement(targets, skipped)


def _centres_to_lonlat(targets: list[Target], catalog: SceneCatalog) -> None:
    """Chip centres were taken in each scene's CRS; the split works in lon/lat."""
    by_crs: dict[str, list[Target]] = {}
    for t in targets:
        by_crs.setdefault(catalog.scenes[t.candidates[0][0]].crs.to_wkt(), []).append(t)
    for wkt, group in by_crs.items():
        lon, lat = Transformer.from_crs(wkt, WGS84, always_xy=True).transform(
            np.array([t.lonlat[0] for t in group]), np.array([t.lonlat[1] for t in group]))
        for t, x, y in zip(group, lon, lat, strict=True):
            t.lonlat = (float(x), float(y))


def crs_name(crs: Any) -> str:
    """``EPSG:32618`` when the CRS has an EPSG code, else its name: a WKT is too long for a message."""
    parsed = CRS.from_user_input(crs)
    code = parsed.to_epsg()
    return f"EPSG:{code}" if code else parsed.name


def outside_hint(layer: LabelLayer, catalog: SceneCatalog, outside: int) -> str:
    """Why (nearly) every label lies outside every scene, or "" when most do not: the labels' CRS and the
    scenes' named, and the fix. A layer whose coordinates are right but whose CRS is not (a file written
    without one and given the wrong one) lands wholly elsewhere; when its coordinates read in another CRS
    (a scene's, or lon/lat) do fall on the scenes, that CRS is named as the one to set."""
    total = len(layer.frame)
    if total == 0 or outside < NEARLY_ALL_OUTSIDE * total:
        return ""
    scenes = ", ".join(sorted({crs_name(s.crs) for s in catalog.scenes}))
    share = "all" if outside == total else f"{outside} of"
    hint = f"{share} {total} labels lie outside every scene (labels in {crs_name(layer.crs)}, scenes in {scenes})"
    fits = crs_that_fits(layer, catalog)
    if fits:
        return (f"{hint}: read as {fits}, their coordinates fall on the scenes, so the labels' CRS is probably "
                f"wrong: set it with GeoDataFrame.set_crs('{fits}', allow_override=True) or ogr2ogr -a_srs {fits}")
    return (f"{hint}: if the labels are in another CRS than their file says, set the right one "
            "(GeoDataFrame.set_crs(..., allow_override=True), ogr2ogr -a_srs), or reproject them (to_crs)")


def crs_that_fits(layer: LabelLayer, catalog: SceneCatalog) -> str:
    """The CRS (a scene's, or lon/lat) in which at least half of the labels' coordinates, as written, fall
    on a scene; "" when none does (the labels really are elsewhere)."""
    geoms = layer.frame.geometry
    points = geoms if layer.kind == "points" else geoms.representative_point()
    xs, ys = points.x.to_numpy(), points.y.to_numpy()
    own = CRS.from_user_input(layer.crs)
    candidates = {crs_name(s.crs): s.crs for s in catalog.scenes}
    if (np.abs(xs) <= 180).all() and (np.abs(ys) <= 90).all():
        candidates.setdefault(WGS84, WGS84)
    for name, candidate in candidates.items():
        if CRS.from_user_input(candidate) == own:
            continue
        on_scene = np.zeros(len(xs), dtype=bool)
        for indices in catalog.by_crs().values():  # one transformation per scene CRS
            try:
                sx, sy = Transformer.from_crs(candidate, catalog.scenes[indices[0]].crs,
                                              always_xy=True).transform(xs, ys)
            except ProjError:
                continue
            for si in indices:
                on_scene |= shapely.contains_xy(catalog.scenes[si].footprint(), np.asarray(sx), np.asarray(sy))
        if on_scene.mean() >= 0.5:
            return name
    return ""
