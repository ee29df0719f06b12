"""Sliding-window classification of one scene into a class map, streamed in bounded memory.

The map's pixels ("cells") are ``stride`` x ``stride`` read-grid pixels, anchored at the scene origin,
so the map's geotransform is the scene's float64 geotransform scaled by the stride: it overlays the
scene exactly. Each window adds its class probabilities (weighted by its fraction of valid pixels) to
the cells whose centres it covers; a cell's class is the argmax of the averaged probabilities. A cell
is nodata (255) when less than ``min_valid`` of its own pixels are valid (nodata, NaN, masked).

Windows are processed in row-major batches; a map row is written (and forgotten) as soon as no later
window can reach it, so memory holds a few map rows and two batches, whatever the scene size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import Affine
from tqdm import tqdm

from geossl.data.raster import AxisPlan as AxisPlan  # re-exported: the planner lives in the raster layer
from geossl.data.raster import axis_plan
from geossl.models.landcover import LandCoverModel
from geossl.predict.common import (
    check_outputs,
    ensure_out_dir,
    gdal_env,
    model_device,
    output_stem,
    run_batches,
    top_k,
)
from geossl.predict.geojson import footprint_lonlat, geojson_writer
from geossl.predict.maps import NODATA_CLASS, COGStripWriter, class_tags, colormap_entries, write_preview
from geossl.predict.reader import SceneReader

# GDAL's block cache defaults to 5 % of RAM, enough to hold a whole scene and dominate "bounded memory".
# rasterio passes GDAL_CACHEMAX to GDALSetCacheMax64, in BYTES: "128" would mean 128 bytes (no cache at all).
GDAL_CACHE_BYTES = 64 * 1024 * 1024  # a few block rows of any ordinary scene


@dataclass
class SceneResult:
    scene: str
    class_map: Path
    probs: Path | None
    geojson: Path | None
    preview: Path | None
    map_size: tuple[int, int]  # (width, height) in cells
    windows: int
    classified_windows: int
    class_counts: dict[str, int]
    nodata_cells: int
    seconds: float
    resample_note: str
    transform: Affine = field(repr=False, default_factory=Affine.identity)

    def summary(self) -> str:
        total = sum(self.class_counts.values())
        top = sorted(self.class_counts.items(), key=lambda kv: -kv[1])[:3]
        share = ", ".join(f"{k} {100 * v / max(total, 1):.0f}%" for k, v in top if v)
        rate = self.windows / max(self.seconds, 1e-9)
        return (
            f"{self.scene}: {self.windows} windows in {self.seconds:.1f} s ({rate:.0f}/s) -> {self.class_map} "
            f"({self.map_size[0]}x{self.map_size[1]} cells, {self.nodata_cells} nodata; {share or 'no valid cells'}; "
            f"{self.resample_note})"
        )


def scene_outputs(out_dir: Path, scene: str, probs: bool, geojson: bool, preview: bool) -> dict[str, Path | None]:
    stem = output_stem(scene)
    return {
        "classes": out_dir / f"{stem}_classes.tif",
        "probs": out_dir / f"{stem}_probs.tif" if probs else None,
        "geojson": out_dir / f"{stem}_tiles.geojson" if geojson else None,
        "preview": out_dir / f"{stem}_preview.png" if preview else None,
    }


class _RowAccumulator:
    """Probability sums of the map rows still open; rows leave in order once final."""

    def __init__(self, width: int, k: int) -> None:
        self.width, self.k = width, k
        self.rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if r not in self.rows:
            self.rows[r] = (np.zeros((self.width, self.k), np.float32), np.zeros(self.width, np.float32),
                            np.zeros(self.width, np.float32))
        return self.rows[r]

    def pop(self, r: int, min_valid: float) -> tuple[np.ndarray, np.ndarray]:
        """(classes uint8 (width,), probabilities float32 (k, width)) of a finished row."""
        probs = np.full((self.k, self.width), np.nan, np.float32)
        classes = np.full(self.width, NODATA_CLASS, np.uint8)
        entry = self.rows.pop(r, None)
        if entry is None:  # no window reached this row
            return classes, probs
        sums, weight, cell_valid = entry
        ok = (weight > 0) & (cell_valid >= min_valid)
        probs[:, ok] = (sums[ok] / weight[ok, None]).T
        classes[ok] = np.argmax(sums[ok], axis=1).astype(np.uint8)
        return classes, probs


def classify_scene(
    model: LandCoverModel,
    scene: str,
    out_dir: str | Path,
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    bands: Sequence[int] | None = None,
    resample: bool | None = None,
    batch_size: int = 64,
    min_valid: float = 0.5,
    probs: bool = False,
    geojson: bool = True,
    preview: bool = True,
    overwrite: bool = False,
    check_stats: bool = True,
    progress: bool = True,
) -> SceneResult:
    """Classify ``scene`` with ``model`` into ``<out_dir>/<scene>_classes.tif`` (COG) and companions.

    ``tile_size`` defaults to the model's img_size and ``stride`` to the tile size; both count pixels
    of the read grid (the scene's, or the model's GSD when resampling). See the module docstring.
    """
    meta, classes = model.meta, list(model.classes)
    if len(classes) > NODATA_CLASS:
        raise ValueError(f"{len(classes)} classes do not fit a uint8 map with nodata {NODATA_CLASS}")
    tile = int(tile_size or meta.img_size)
    stride = int(stride or tile)
    if tile < meta.patch_size or tile % meta.patch_size:
        raise ValueError(f"tile size {tile} must be a multiple of the model's patch size {meta.patch_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not 0.0 < min_valid <= 1.0:
        raise ValueError(f"min_valid must be in (0, 1], got {min_valid}")
    out_dir = ensure_out_dir(out_dir)
    outputs = scene_outputs(out_dir, scene, probs, geojson, preview)
    check_outputs([p for p in outputs.values() if p is not None], overwrite)
    start_time = time.perf_counter()
    device = model_device(model)

    with gdal_env(scene, GDAL_CACHEMAX=GDAL_CACHE_BYTES), SceneReader(scene, meta, bands, resample) as reader:
        if reader.width < tile or reader.height < tile:
            raise ValueError(
                f"{scene}: {reader.width}x{reader.height} px{' after resampling' if reader.target_res else ''} "
                f"is smaller than one {tile} px tile (use a smaller --tile-size)"
            )
        if reader.width < stride or reader.height < stride:
            raise ValueError(f"{scene}: {reader.width}x{reader.height} px is smaller than one {stride} px stride")
        if check_stats:
            reader.check_statistics()
        rows, cols = axis_plan(reader.height, tile, stride), axis_plan(reader.width, tile, stride)
        width, height = cols.n_cells, rows.n_cells
        grid_t = reader.transform
        map_t = grid_t @ Affine.scale(stride)
        tags = class_tags(classes, {"source": scene, "tile_size": tile, "stride": stride,
                                    "min_valid": min_valid, "resampling": reader.resample_note})
        common: dict[str, Any] = {"width": width, "height": height, "crs": reader.crs, "transform": map_t}
        writers: list[COGStripWriter] = []
        counts = np.zeros(NODATA_CLASS + 1, np.int64)
        n_windows = len(rows.starts) * len(cols.starts)
        classified = 0
        try:
            writers.append(COGStripWriter(
                outputs["classes"], count=1, dtype="uint8", nodata=NODATA_CLASS, colormap=colormap_entries(classes),
                tags=tags, descriptions=["land cover class"], **common))
            if outputs["probs"] is not None:
                writers.append(COGStripWriter(
                    outputs["probs"], count=len(classes), dtype="float32", nodata=float("nan"), tags=tags,
                    descriptions=classes, overview_resampling="average", **common))
            with geojson_writer(outputs["geojson"]) if outputs["geojson"] else _null() as gj:
                acc = _RowAccumulator(width, len(classes))
                next_row = 0

                def finish_rows(until: int) -> None:
                    nonlocal next_row
                    for r in range(next_row, until):
                        cls_row, prob_row = acc.pop(r, min_valid)
                        counts[:] += np.bincount(cls_row, minlength=NODATA_CLASS + 1)
                        writers[0].write(cls_row[None, None])
                        if len(writers) > 1:
                            writers[1].write(prob_row[:, None])
                    next_row = max(next_row, until)

                def origins(b0: int) -> list[tuple[int, int]]:
                    idx = range(b0, min(b0 + batch_size, n_windows))
                    return [(cols.starts[i % len(cols.starts)], rows.starts[i // len(cols.starts)]) for i in idx]

                bar = tqdm(total=n_windows, unit="win", desc=output_stem(scene), disable=not progress, leave=False)
                with ThreadPoolExecutor(max_workers=1) as pool:  # read batch n+1 while the model runs batch n
                    pending = pool.submit(reader.read_batch, origins(0), tile)
                    for b0 in range(0, n_windows, batch_size):
                        images, valid = pending.result()
                        if b0 + batch_size < n_windows:
                            pending = pool.submit(reader.read_batch, origins(b0 + batch_size), tile)
                        frac = valid.reshape(len(valid), -1).mean(axis=1)
                        p = np.zeros((len(valid), len(classes)), np.float32)
                        use = frac > 0
                        if use.any():
                            p[use] = run_batches(model.predict_proba, images[use], device)
                        classified += int((frac >= min_valid).sum())
                        integral = np.zeros((len(valid), tile + 1, tile + 1), np.int32)
                        integral[:, 1:, 1:] = valid.cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)
                        for i in range(len(valid)):
                            w = b0 + i
                            ri, ci = divmod(w, len(cols.starts))
                            if frac[i] > 0:
                                _accumulate(acc, rows.cells[ri], cols.cells[ci], integral[i], p[i], float(frac[i]))
                            if gj is not None and frac[i] >= min_valid:
                                _add_feature(gj, reader, classes, p[i], float(frac[i]),
                                             cols.starts[ci], rows.starts[ri], tile)
                        nxt = b0 + len(valid)
                        finish_rows(int(rows.cells[nxt // len(cols.starts)][0, 0]) if nxt < n_windows else height)
                        bar.update(len(valid))
                bar.close()
                finish_rows(height)
                for writer in writers:
                    writer.commit()
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        note = reader.resample_note
        rgb = _rgb_choice(meta.bands, reader.bands)
    if outputs["preview"] is not None:
        p2 = [meta.p2[i] for i in rgb] if meta.p2 and meta.p98 else None
        p98 = [meta.p98[i] for i in rgb] if meta.p2 and meta.p98 else None
        with gdal_env(scene, GDAL_CACHEMAX=GDAL_CACHE_BYTES):  # a decimated read touches every block
            write_preview(outputs["preview"], scene, [reader.bands[i] for i in rgb], p2, p98,
                          str(outputs["classes"]), classes,
                          title=f"{output_stem(scene)}: tile {tile}, stride {stride} ({note})")
    return SceneResult(
        scene=scene, class_map=outputs["classes"], probs=outputs["probs"], geojson=outputs["geojson"],
        preview=outputs["preview"], map_size=(width, height), windows=n_windows, classified_windows=classified,
        class_counts={c: int(counts[k]) for k, c in enumerate(classes)}, nodata_cells=int(counts[NODATA_CLASS]),
        seconds=time.perf_counter() - start_time, resample_note=note, transform=map_t,
    )


def _accumulate(acc: _RowAccumulator, row_cells: np.ndarray, col_cells: np.ndarray, integral: np.ndarray,
                probs: np.ndarray, weight: float) -> None:
    """Add one window's probabilities to the cells it feeds; record each cell's own valid fraction."""
    ks, clo, chi = col_cells[:, 0], col_cells[:, 1], col_cells[:, 2]
    for r, rlo, rhi in row_cells:
        block = integral[rhi, chi] - integral[rlo, chi] - integral[rhi, clo] + integral[rlo, clo]
        area = np.maximum((rhi - rlo) * (chi - clo), 1)
        sums, wsum, cell_valid = acc.row(int(r))
        sums[ks] += weight * probs
        wsum[ks] += weight
        np.maximum.at(cell_valid, ks, block / area)


def _add_feature(gj: Any, reader: SceneReader, classes: list[str], probs: np.ndarray, frac: float,
                 col: int, row: int, tile: int) -> None:
    ring = footprint_lonlat(reader.transform, col, row, tile, tile, reader.crs)
    best = top_k(probs[None], classes)[0]
    s = reader.scale
    gj.add(ring, {
        "class": best[0][0], "probability": round(best[0][1], 4),
        "top3": [{"class": c, "probability": round(p, 4)} for c, p in best],
        "valid_fraction": round(frac, 4),
        "window": [round(col * s, 3), round(row * s, 3), round(tile * s, 3), round(tile * s, 3)],
    })


def _rgb_choice(model_bands: Sequence[str], read_bands: Sequence[int]) -> list[int]:
    """Indices (into the model's bands) to render as RGB: named red/green/blue if present, else the first three."""
    names = [b.lower() for b in model_bands]
    for triple in (("red", "green", "blue"), ("r", "g", "b"), ("b4", "b3", "b2"), ("b04", "b03", "b02")):
        if all(t in names for t in triple):
            return [names.index(t) for t in triple]
    return list(range(min(3, len(read_bands)))) if len(read_bands) >= 3 else [0]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
