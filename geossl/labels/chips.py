"""Cut labelled chips from scenes and write them, with the table that says where each came from.

Chips are written once as small lossless GeoTIFFs (the scene's dtype and pixels, its CRS, the
window's geotransform, the validity mask as an internal GDAL mask) under ``OUT/chips/``, and listed
in ``OUT/chips.csv`` (``path,label,split`` first, so it *is* a probe split table) and
``OUT/chips.gpkg`` (footprints, to look at in a GIS). Writing them, rather than reading windows on
the fly, is what keeps everything downstream unchanged: the probe, its feature cache, both baselines
and ``geossl classify`` see an ordinary table of georeferenced patches, and a run can be audited and
repeated from its folder alone. Pixels go through the one raster layer (the inference reader, so
band selection, resampling to the encoder's GSD and the validity rule are those of ``classify``).

The folder is built as ``chips.partial`` and renamed into place when complete: an interrupted run
never leaves a chip folder that looks finished.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from tqdm import tqdm

from geossl.io import atomic_path, atomic_write_text
from geossl.labels.catalog import SceneCatalog, SceneGrid, build_catalog
from geossl.labels.layers import read_label_layer
from geossl.labels.options import LabelOptions
from geossl.labels.placement import (
    Placement,
    outside_hint,
    place_points,
    place_polygons,
    place_raster_labels,
    window_boxes,
)
from geossl.labels.split import assign_splits, check_classes_in_every_split, resolve_mode
from geossl.models.encoder import EncoderMeta

CHIPS_DIR, CHIPS_TABLE, CHIPS_LAYER = "chips", "chips.csv", "chips.gpkg"
STATS_CHIPS = 16  # chips whose pixels are checked against the encoder's statistics (other units: a clear error)
TABLE_COLUMNS = ("path", "label", "split", "scene", "col_off", "row_off", "size", "crs", "minx", "miny", "maxx",
                 "maxy", "lon", "lat", "valid_fraction", "purity", "source_row", "group", "block")


@dataclass
class Chip:
    target: int  # index of its Target
    number: int  # k-th chip of that target
    scene: int
    col: int
    row: int
    valid_fraction: float
    path: str = ""  # relative to the output folder


@dataclass
class ChipSet:
    table: Path  # OUT/chips.csv: a path,label,split table the probe reads
    report: dict[str, Any]


def _placement(opts: LabelOptions, catalog: SceneCatalog, tile: int, seed: int) -> tuple[Placement, dict[str, Any]]:
    if opts.label_raster is not None:
        placed = place_raster_labels(opts.label_raster, catalog, tile, opts.min_valid, opts.min_purity,
                                     opts.class_names)
        return placed, {"kind": "raster", "source": str(opts.label_raster), "has_split_column": False}
    layer = read_label_layer(opts.labels, opts.label_field, opts.layer)  # type: ignore[arg-type]
    if layer.kind == "points":
        placed = place_points(layer, catalog, tile)
    else:
        placed = place_polygons(layer, catalog, tile, opts.chips_per_polygon, opts.min_overlap, seed)
    placed.skipped.update(layer.skipped)
    info = {"kind": layer.kind, "source": layer.source, "label_field": layer.label_field,
            "has_split_column": layer.has_split_column, "features": len(layer.frame),
            "outside_hint": outside_hint(layer, catalog, placed.skipped["outside"])}
    if layer.repaired:  # reported, so a user knows to fix the file: the repair may not be the shape meant
        info["repaired_polygons"] = layer.repaired
    return placed, info


def _write_chip(path: Path, data: np.ndarray, valid: np.ndarray, scene: SceneGrid, col: int, row: int,
                nodata: tuple[Any, ...], band_names: list[str]) -> None:
    """A lossless GeoTIFF of the window: the scene's dtype, CRS and geotransform; invalid pixels masked."""
    import rasterio

    count, height, width = data.shape
    shared = nodata[0] if nodata and all(v == nodata[0] for v in nodata) else None
    profile: dict[str, Any] = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                                   crs=scene.crs, transform=scene.transform @ Affine.translation(col, row),
                                   compress="deflate", nodata=shared)
    if data.dtype.kind in "iu":
        profile["predictor"] = 2
    with atomic_path(path, suffix=".tif") as tmp, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for band, name in enumerate(band_names, start=1):
                dst.set_band_description(band, name)
            if not valid.all():
                dst.write_mask(valid.astype(np.uint8) * 255)


def _round_requests(placement: Placement, taken: list[int], accepted: list[int]) -> dict[int, list[tuple]]:
    """The next candidates of every target still short of chips, grouped by scene (each scene opened once)."""
    requests: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for ti, target in enumerate(placement.targets):
        want = target.need - accepted[ti]
        if want <= 0:
            continue
        for si, col, row in target.candidates[taken[ti] : taken[ti] + want]:
            requests[si].append((ti, col, row))
        taken[ti] = min(len(target.candidates), taken[ti] + want)
    return requests


def cut_chips(placement: Placement, catalog: SceneCatalog, meta: EncoderMeta, opts: LabelOptions,
              chips_dir: Path) -> list[Chip]:
    """Read each target's candidates (best first) until it has its chips; windows failing ``min_valid``
    (or, for points, with an invalid pixel at the centre) fall back to the next candidate."""
    from geossl.data.raster import raster_env
    from geossl.scene.bands import check_statistics
    from geossl.scene.reader import ModelSceneReader

    tile = meta.img_size
    samples: list[np.ndarray] = []  # valid pixels of the first chips: the scenes' units against the encoder's
    n = len(placement.targets)
    taken, accepted = [0] * n, [0] * n
    chips: list[Chip] = []
    total = sum(min(t.need, len(t.candidates)) for t in placement.targets)
    with raster_env([s.uri for s in catalog.scenes]), tqdm(total=total, desc="chips", unit="chip",
                                                         disable=total < 200, file=sys.stderr) as bar:
        while requests := _round_requests(placement, taken, accepted):
            for si in sorted(requests):
                scene = catalog.scenes[si]
                with ModelSceneReader(scene.uri, meta, opts.bands, opts.resample) as reader:
                    for ti, col, row in requests[si]:
                        data, valid = reader.windows.read(col, row, tile, tile)
                        bar.update(1)
                        frac = float(valid.mean())
                        centre_ok = valid[tile // 2, tile // 2] or not placement.targets[ti].centre_check
                        if frac < opts.min_valid or not centre_ok:
                            continue
                        chip = Chip(ti, accepted[ti], si, col, row, frac)
                        chip.path = f"{CHIPS_DIR}/{ti:07d}_{chip.number:03d}.tif"
                        _write_chip(chips_dir / Path(chip.path).name, data, valid, scene, col, row,
                                    reader.windows.plan.nodata, list(meta.bands))
                        accepted[ti] += 1
                        chips.append(chip)
                        if opts.check_stats and len(samples) < STATS_CHIPS:
                            samples.append(data[:, valid].astype(np.float64))
                            if len(samples) == STATS_CHIPS:
                                check_statistics(meta, np.concatenate(samples, axis=1), scene.uri, reader.bands)
    if opts.check_stats and 0 < len(samples) < STATS_CHIPS:
        check_statistics(meta, np.concatenate(samples, axis=1), catalog.scenes[chips[0].scene].uri, reader.bands)
    for ti, target in enumerate(placement.targets):
        if target.candidates and accepted[ti] == 0:
            placement.skipped["nodata"] += 1
    chips.sort(key=lambda c: (c.target, c.number))
    return chips


def _table_rows(chips: list[Chip], placement: Placement, catalog: SceneCatalog, splits: np.ndarray,
                blocks: np.ndarray | None, tile: int) -> tuple[list[list[Any]], Any]:
    """Table rows (TABLE_COLUMNS) and the chip footprints in EPSG:4326 (a GeoSeries, same order)."""
    import geopandas as gpd

    boxes: list[Any] = [None] * len(chips)
    wgs84: list[Any] = [None] * len(chips)
    by_crs: dict[str, list[int]] = defaultdict(list)
    for i, chip in enumerate(chips):
        by_crs[catalog.scenes[chip.scene].crs.to_wkt()].append(i)
    for idx in by_crs.values():  # one reprojection per CRS, not per chip
        for i in idx:
            chip = chips[i]
            boxes[i] = window_boxes(catalog.scenes[chip.scene], np.array([chip.col]), np.array([chip.row]), tile)[0]
        crs = catalog.scenes[chips[idx[0]].scene].crs
        for i, geom in zip(idx, gpd.GeoSeries([boxes[i] for i in idx], crs=crs).to_crs("EPSG:4326"), strict=True):
            wgs84[i] = geom
    rows = []
    for i, chip in enumerate(chips):
        minx, miny, maxx, maxy = boxes[i].bounds
        centre = wgs84[i].centroid
        target = placement.targets[chip.target]
        scene = catalog.scenes[chip.scene]
        rows.append([chip.path, target.label, splits[i], scene.uri, chip.col, chip.row, tile, scene.crs.to_string(),
                     minx, miny, maxx, maxy, round(centre.x, 8), round(centre.y, 8), round(chip.valid_fraction, 4),
                     round(target.purity, 4), target.source_row, target.group, "" if blocks is None else int(blocks[i])])
    return rows, gpd.GeoSeries(wgs84, crs="EPSG:4326")


def _write_table(out_dir: Path, rows: list[list[Any]], footprints: Any) -> Path:
    import geopandas as gpd

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    writer.writerows(rows)
    table = out_dir / CHIPS_TABLE
    atomic_write_text(table, buf.getvalue())
    frame = gpd.GeoDataFrame(rows, columns=list(TABLE_COLUMNS), geometry=footprints)
    with tempfile.TemporaryDirectory(prefix=f".{CHIPS_LAYER}.", dir=out_dir) as tmp:  # GPKG wants its extension
        frame.to_file(Path(tmp) / CHIPS_LAYER, driver="GPKG", layer="chips", engine="pyogrio")
        os.replace(Path(tmp) / CHIPS_LAYER, out_dir / CHIPS_LAYER)
    return table


def build_label_chips(opts: LabelOptions, meta: EncoderMeta, out_dir: str | Path, seed: int = 0) -> ChipSet:
    """Labels + scenes -> ``OUT/chips/``, ``OUT/chips.csv`` and ``OUT/chips.gpkg``; returns the table and a report."""
    opts.check()
    out_dir = Path(out_dir)
    tile = meta.img_size
    catalog = build_catalog(opts.scenes, meta, opts.bands, opts.resample)
    placement, info = _placement(opts, catalog, tile, seed)
    source = info["source"]
    hint = info.pop("outside_hint", "")  # labels (nearly) all outside every scene: their CRS is suspect
    mode = resolve_mode(opts.split, info["has_split_column"], source)
    if mode == "column":  # an empty split value leaves the label out, as in a split CSV
        for target in placement.targets:
            if not target.split:
                target.candidates, target.no_candidate = [], "no_split"
                placement.skipped["no_split"] += 1
    if not any(target.candidates for target in placement.targets):  # refused before a folder is made
        raise _no_chip_error(source, len(catalog.scenes), placement.skipped, hint)
    partial = out_dir / f"{CHIPS_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    chips = cut_chips(placement, catalog, meta, opts, partial)
    if not chips:
        raise _no_chip_error(source, len(catalog.scenes), placement.skipped, hint)
    if hint:
        print(f"warning: {source}: {hint}", file=sys.stderr)
    labels = [placement.targets[c.target].label for c in chips]
    groups = np.array([placement.targets[c.target].group for c in chips])
    lonlat = np.array([placement.targets[c.target].lonlat for c in chips], dtype=np.float64)
    column = [placement.targets[c.target].split for c in chips]
    block_size = opts.block_size or 10.0 * tile * (meta.gsd or abs(catalog.scenes[0].transform.a))
    result = assign_splits(labels, groups, lonlat, column, mode, block_size, opts.fractions, seed)
    check_classes_in_every_split(labels, result.splits, mode, source)
    final = out_dir / CHIPS_DIR
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    rows, footprints = _table_rows(chips, placement, catalog, result.splits, result.blocks, tile)
    table = _write_table(out_dir, rows, footprints)
    report = {**{k: v for k, v in info.items() if k != "has_split_column"},
              "labels": len(placement.targets), "chips": len(chips),
              "skipped": {k: int(v) for k, v in sorted(placement.skipped.items()) if v},
              "scenes": {"used": len(catalog.scenes), "skipped": int(catalog.skipped["unusable_scene"]),
                         "problems": catalog.problems[:5],
                         "reading": sorted(Counter(s.note for s in catalog.scenes).items())},
              "tile_size": tile, "gsd": meta.gsd, "split": result.report, "table": str(table)}
    print(chips_summary_text(report), file=sys.stderr)
    return ChipSet(table, report)


def _no_chip_error(source: str, scenes: int, skipped: Counter[str], hint: str) -> ValueError:
    """Why no chip at all: the skip counts, and the labels' CRS when (nearly) all lie outside every scene."""
    return ValueError(f"{source}: no chip could be cut from the {scenes} scene(s) "
                      f"(skipped: {_skipped_text(skipped)}){'; ' + hint if hint else ''}")


def _skipped_text(skipped: Counter[str] | dict[str, int]) -> str:
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in sorted(skipped.items()) if v]
    return ", ".join(parts) if parts else "none"


def chips_summary_text(report: dict[str, Any]) -> str:
    """``labels: 820 points -> 820 chips from 820 scenes; skipped none; split spatial (...)``."""
    split = report["split"]
    detail = (f" (blocks of {split['block_size_m']:g} m in {split['crs']})" if split["mode"] == "spatial" else "")
    chips = " / ".join(f"{k} {v}" for k, v in split["chips"].items())
    repaired = (f"; {report['repaired_polygons']} invalid (self-intersecting) polygon(s) repaired"
                if report.get("repaired_polygons") else "")
    return (f"labels: {report['labels']} {report['kind']} -> {report['chips']} chips from {report['scenes']['used']} "
            f"scene(s); skipped {_skipped_text(report['skipped'])}{repaired}; split {split['mode']}{detail}: {chips}")
