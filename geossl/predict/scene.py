"""Sliding-window classification of one scene into a class map, streamed in bounded memory.

The map's pixels ("cells") are ``stride`` x ``stride`` read-grid pixels, anchored at the scene origin,
so the map's geotransform is the scene's float64 geotransform scaled by the stride: it overlays the
scene exactly. Each window adds its class probabilities (weighted by its fraction of valid pixels and,
with ``blend="hann"``, by a raised cosine of the cell's position in the window: :mod:`geossl.predict.blend`)
to the cells whose centres it covers; a cell's class is the argmax of the weighted mean. A cell
is nodata (255) when less than ``min_valid`` of its own pixels are valid (nodata, NaN, masked).
Options: ``tta`` averages the 8 flips/rotations of each window (:mod:`geossl.predict.tta`), ``rescale``
maps a scene in other units onto the model's (:mod:`geossl.scene.rescale`), and a STAC Item describes
the outputs (:mod:`geossl.predict.stac`).

Windows are processed in row-major batches; a map row is written (and forgotten) as soon as no later
window can reach it, so memory holds a few map rows and two batches, whatever the scene size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import Affine

from geossl.choices import BLENDS, PROBS_DTYPES
from geossl.data.raster import AxisPlan as AxisPlan  # re-exported: the planner lives in the raster layer
from geossl.data.raster import axis_plan, raster_env
from geossl.io import check_outputs
from geossl.models.landcover import LandCoverModel
from geossl.predict.blend import PROBS_UINT8_TAGS, RowAccumulator, axis_weights, quantize_probs
from geossl.predict.common import (
    ensure_out_dir,
    model_device,
    output_stem,
    run_batches,
    top_k,
)
from geossl.predict.dense import check_dense, classify_windows_dense, dense_axis_plan
from geossl.predict.geojson import footprint_lonlat, geojson_writer
from geossl.predict.maps import NODATA_CLASS, COGStripWriter, class_tags, colormap_entries, write_preview
from geossl.predict.stac import write_scene_item
from geossl.predict.tta import tta_predict, tta_predict_dense
from geossl.scene.reader import ModelSceneReader, window_batches
from geossl.scene.rescale import scene_low_high

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
    stac: Path | None = None

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


def scene_outputs(out_dir: Path, scene: str, probs: bool, geojson: bool, preview: bool,
                  stac: bool = True, stem: str | None = None) -> dict[str, Path | None]:
    """The output paths of ``scene``, named ``<stem>_...`` (default: the scene's file stem)."""
    stem = stem or output_stem(scene)
    return {
        "classes": out_dir / f"{stem}_classes.tif",
        "probs": out_dir / f"{stem}_probs.tif" if probs else None,
        "geojson": out_dir / f"{stem}_tiles.geojson" if geojson else None,
        "preview": out_dir / f"{stem}_preview.png" if preview else None,
        "stac": out_dir / f"{stem}_classes.stac.json" if stac else None,
    }




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
    blend: str = "mean",
    tta: bool = False,
    probs_dtype: str = "float32",
    rescale: str | None = None,
    stac: bool = True,
    model_path: str | Path | None = None,
    dense: bool = False,
    stem: str | None = None,
) -> SceneResult:
    """Classify ``scene`` with ``model`` into ``<out_dir>/<scene>_classes.tif`` (COG) and companions.

    ``tile_size`` defaults to the model's img_size and ``stride`` to the tile size; both count pixels
    of the read grid (the scene's, or the model's GSD when resampling). See the module docstring.
    The steps: check the options, open the scene, plan the windows, stream the map, draw the preview,
    describe the outputs in a STAC Item. ``blend`` (mean|hann), ``tta``, ``probs_dtype`` (float32|uint8),
    ``rescale`` (None|percentile): see the module docstring; ``model_path`` is linked from the STAC Item.
    ``dense``: one map cell per patch from the model's dense head (:mod:`geossl.predict.dense`; no tiles GeoJSON).
    ``stem``: the outputs' name prefix (default: the scene's file stem; classify picks unique ones).
    """
    meta, classes = model.meta, list(model.classes)
    tile, stride = check_scene_options(model, tile_size, stride, min_valid, blend, probs_dtype, dense, model_path)
    geojson = geojson and not dense  # the tiles GeoJSON describes windows; a dense map has none
    stem = stem or output_stem(scene)
    outputs = scene_outputs(ensure_out_dir(out_dir), scene, probs, geojson, preview, stac, stem)
    check_outputs([p for p in outputs.values() if p is not None], overwrite)
    start_time = time.perf_counter()
    with (raster_env(scene, GDAL_CACHEMAX=GDAL_CACHE_BYTES),
          ModelSceneReader(scene, meta, bands, resample, rescale=rescale) as reader):
        _check_scene_size(reader, scene, tile, stride)
        if check_stats:
            reader.check_statistics()
        plan, cell = (partial(dense_axis_plan, cell=meta.patch_size), meta.patch_size) if dense else (axis_plan, stride)
        grid = WindowGrid(plan(reader.height, tile, stride), plan(reader.width, tile, stride), tile,
                           cell, blend)
        map_t = reader.transform @ Affine.scale(cell)
        note = reader.resample_note + (f"; {reader.rescaler.note()}" if reader.rescaler else "")
        tags = class_tags(classes, {"source": scene, "tile_size": tile, "stride": stride, "min_valid": min_valid,
                                    "resampling": note, "blend": blend, "tta": tta,
                                    **({"dense": f"one cell per {cell} px patch"} if dense else {})})
        base = model.predict_patch_proba if dense else model.predict_proba
        predict = (tta_predict_dense if dense else tta_predict)(base) if tta else base
        run = classify_windows_dense if dense else _classify_windows
        with _MapWriter(outputs, classes, tags, grid, reader.crs, map_t, min_valid, probs_dtype) as sink:
            classified = run(model, predict, reader, grid, sink, batch_size, min_valid,
                             desc=stem if progress else None)
        rgb = rgb_choice(meta.bands, reader.bands)
        read_bands, stretch = list(reader.bands), scene_low_high(reader.rescaler, rgb)
    if outputs["preview"] is not None:
        p2 = [meta.p2[i] for i in rgb] if meta.p2 and meta.p98 else None
        p98 = [meta.p98[i] for i in rgb] if meta.p2 and meta.p98 else None
        if stretch is not None:  # the scene is in other units than the model's: stretch by its own percentiles
            p2, p98 = stretch
        with raster_env(scene, GDAL_CACHEMAX=GDAL_CACHE_BYTES):  # a decimated read touches every block
            write_preview(outputs["preview"], scene, [read_bands[i] for i in rgb], p2, p98,
                          str(outputs["classes"]), classes,
                          title=f"{stem}: tile {tile}, stride {stride} ({note})")
    if outputs["stac"] is not None:
        write_scene_item(outputs, scene, tags, model_path)
    assert outputs["classes"] is not None  # scene_outputs always names the class map
    return SceneResult(
        scene=scene, class_map=outputs["classes"], probs=outputs["probs"], geojson=outputs["geojson"],
        preview=outputs["preview"], map_size=(grid.width, grid.height), windows=grid.n_windows,
        classified_windows=classified, class_counts={c: int(sink.counts[k]) for k, c in enumerate(classes)},
        nodata_cells=int(sink.counts[NODATA_CLASS]), seconds=time.perf_counter() - start_time, resample_note=note,
        transform=map_t, stac=outputs["stac"],
    )


def check_scene_options(model: LandCoverModel, tile_size: int | None, stride: int | None, min_valid: float,
                        blend: str = "mean", probs_dtype: str = "float32", dense: bool = False,
                        model_path: str | Path | None = None) -> tuple[int, int]:
    """(tile, stride) in read-grid pixels after every check that needs no scene: a batch of scenes calls it
    once, so a wrong option is one error before any work, not the same failure recorded for every scene."""
    tile, stride = _window_sizes(model, tile_size, stride, min_valid)
    check_blend_and_dtype(blend, probs_dtype)
    if dense:
        check_dense(model, tile, stride, model_path)
    return tile, stride


def check_blend_and_dtype(blend: str, probs_dtype: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"--blend must be one of {BLENDS}, got {blend!r}")
    if probs_dtype not in PROBS_DTYPES:
        raise ValueError(f"--probs-dtype must be float32 or uint8, got {probs_dtype!r}")


def _window_sizes(model: LandCoverModel, tile_size: int | None, stride: int | None,
                  min_valid: float) -> tuple[int, int]:
    """(tile, stride) in read-grid pixels, after the checks that need no scene."""
    meta = model.meta
    if len(model.classes) > NODATA_CLASS:
        raise ValueError(f"{len(model.classes)} classes do not fit a uint8 map with nodata {NODATA_CLASS}")
    # None, not 0, means "the default": a 0 from a caller is a mistake to name, not a request for img_size
    tile = int(meta.img_size if tile_size is None else tile_size)
    stride = int(tile if stride is None else stride)
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}")
    if tile < meta.patch_size or tile % meta.patch_size:
        raise ValueError(f"tile size {tile} must be a multiple of the model's patch size {meta.patch_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not 0.0 < min_valid <= 1.0:
        raise ValueError(f"min_valid must be in (0, 1], got {min_valid}")
    return tile, stride


def _check_scene_size(reader: ModelSceneReader, scene: str, tile: int, stride: int) -> None:
    if reader.width < tile or reader.height < tile:
        raise ValueError(
            f"{scene}: {reader.width}x{reader.height} px{' after resampling' if reader.target_res else ''} "
            f"is smaller than one {tile} px tile (use a smaller --tile-size)"
        )
    if reader.width < stride or reader.height < stride:
        raise ValueError(f"{scene}: {reader.width}x{reader.height} px is smaller than one {stride} px stride")


@dataclass
class WindowGrid:
    """The row-major windows of a scene: window ``w`` is row ``w // n_cols``, column ``w % n_cols``."""

    rows: AxisPlan
    cols: AxisPlan
    tile: int
    stride: int = 0  # the map cell in px: the stride (0: the tile size), or the patch size of dense maps
    blend: str = "mean"

    def weights(self, cells: np.ndarray, start: int) -> np.ndarray:
        """Blend weights of a window's ``cells`` (one axis) for a window starting at pixel ``start``."""
        return axis_weights(self.blend, cells, start, self.stride or self.tile, self.tile)

    @property
    def width(self) -> int:
        return self.cols.n_cells

    @property
    def height(self) -> int:
        return self.rows.n_cells

    @property
    def n_windows(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)

    def position(self, w: int) -> tuple[int, int]:
        """(row index, column index) of window ``w``."""
        return divmod(w, len(self.cols.starts))

    def origins(self, first: int, count: int) -> list[tuple[int, int]]:
        """(column, row) pixel origins of windows ``first .. first + count - 1`` (clipped to the grid)."""
        n_cols = len(self.cols.starts)
        return [(self.cols.starts[i % n_cols], self.rows.starts[i // n_cols])
                for i in range(first, min(first + count, self.n_windows))]

    def first_open_row(self, w: int) -> int:
        """The first map row window ``w`` (and every later window) can still reach."""
        return int(self.rows.cells[w // len(self.cols.starts)][0, 0]) if w < self.n_windows else self.height


class _MapWriter:
    """The class map (and probability) COG writers plus the open map rows: windows add probabilities,
    finished rows are written and forgotten, class counts kept. Committed on a clean exit, discarded
    (nothing left behind, not even a map committed before a later one failed) on any exception."""

    def __init__(self, outputs: dict[str, Path | None], classes: list[str], tags: dict[str, str],
                 grid: WindowGrid, crs: Any, transform: Affine, min_valid: float,
                 probs_dtype: str = "float32") -> None:
        self.outputs, self.classes, self.tags, self.grid = outputs, classes, tags, grid
        self.common: dict[str, Any] = {"width": grid.width, "height": grid.height, "crs": crs, "transform": transform}
        self.min_valid, self.probs_dtype = min_valid, probs_dtype
        self.acc = RowAccumulator(grid.width, len(classes))
        self.counts = np.zeros(NODATA_CLASS + 1, np.int64)
        self.next_row = 0
        self.writers: list[COGStripWriter] = []
        self._geojson: Any = None
        self._geojson_open = False
        self.gj: Any = None

    def __enter__(self) -> _MapWriter:
        try:
            assert self.outputs["classes"] is not None  # scene_outputs always names the class map
            self.writers.append(COGStripWriter(
                self.outputs["classes"], count=1, dtype="uint8", nodata=NODATA_CLASS,
                colormap=colormap_entries(self.classes), tags=self.tags, descriptions=["land cover class"],
                **self.common))
            if self.outputs["probs"] is not None:
                uint8 = self.probs_dtype == "uint8"
                self.writers.append(COGStripWriter(
                    self.outputs["probs"], count=len(self.classes), dtype=self.probs_dtype,
                    nodata=255 if uint8 else float("nan"), tags={**self.tags, **(PROBS_UINT8_TAGS if uint8 else {})},
                    descriptions=self.classes, overview_resampling="average", **self.common))
            self._geojson = geojson_writer(self.outputs["geojson"]) if self.outputs["geojson"] else _null()
            self.gj = self._geojson.__enter__()
            self._geojson_open = True
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._discard(exc)
            return
        committed: list[Path] = []
        try:
            self.finish_rows(self.grid.height)
            for writer in self.writers:
                committed.append(writer.commit())
            self._geojson_open = False
            self._geojson.__exit__(None, None, None)
        except BaseException as error:
            self._discard(error, committed)
            raise

    def _discard(self, error: BaseException, committed: Sequence[Path] = ()) -> None:
        """Leave nothing of a failed scene: the GeoJSON's and the maps' temporary files, and maps already
        committed (a scene's outputs are all written or none, so no class map stands without its
        probabilities and a rerun finds no half set). Runs even when discarding the GeoJSON raises."""
        try:
            if self._geojson_open:
                self._geojson_open = False
                self._geojson.__exit__(type(error), error, error.__traceback__)
        finally:
            self._abort()
            for path in committed:
                path.unlink(missing_ok=True)

    def _abort(self) -> None:
        for writer in self.writers:
            writer.abort()

    def finish_rows(self, until: int) -> None:
        """Write every map row before ``until``: no later window reaches them."""
        for r in range(self.next_row, until):
            cls_row, prob_row = self.acc.pop(r, self.min_valid)
            self.counts[:] += np.bincount(cls_row, minlength=NODATA_CLASS + 1)
            self.writers[0].write(cls_row[None, None])
            if len(self.writers) > 1:
                self.writers[1].write((quantize_probs(prob_row) if self.probs_dtype == "uint8" else prob_row)[:, None])
        self.next_row = max(self.next_row, until)


def _classify_windows(model: LandCoverModel, predict: Any, reader: ModelSceneReader, grid: WindowGrid,
                      sink: _MapWriter, batch_size: int, min_valid: float, desc: str | None) -> int:
    """Read, classify (``predict``: raw pixels -> probabilities) and accumulate every window in row-major
    batches (the next batch is read while the model runs); returns how many windows had at least
    ``min_valid`` valid pixels."""
    device, tile = model_device(model), grid.tile
    k = len(sink.classes)
    classified = 0
    for b0, images, valid, frac, integral in window_batches(reader, grid, batch_size, desc):
        p = np.zeros((len(valid), k), np.float32)
        use = frac > 0
        if use.any():
            p[use] = run_batches(predict, images[use], device)
        classified += int((frac >= min_valid).sum())
        for i in range(len(valid)):
            ri, ci = grid.position(b0 + i)
            if frac[i] > 0:
                rc, cc = grid.rows.cells[ri], grid.cols.cells[ci]
                sink.acc.add(rc, cc, integral[i], p[i], float(frac[i]), grid.weights(rc, grid.rows.starts[ri]),
                             grid.weights(cc, grid.cols.starts[ci]))
            if sink.gj is not None and frac[i] >= min_valid:
                _add_feature(sink.gj, reader, sink.classes, p[i], float(frac[i]),
                             grid.cols.starts[ci], grid.rows.starts[ri], tile)
        sink.finish_rows(grid.first_open_row(b0 + len(valid)))
    return classified


def _add_feature(gj: Any, reader: ModelSceneReader, classes: list[str], probs: np.ndarray, frac: float,
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


def rgb_choice(model_bands: Sequence[str], read_bands: Sequence[int]) -> list[int]:
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
