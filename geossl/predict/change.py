"""Change between two dates of the same ground (``geossl change``): one score per ViT patch.

The score of a patch is ``1 - cos(t_before, t_after)``, the cosine distance between the encoder's
last-block patch tokens (after the final norm) of the two dates at the same place: 0 for the same
content, up to 2. Tokens rather than pixel differences because a self-supervised encoder's tokens are
meant to describe what is there (field, water, roof) more than exact values (a slightly different sun, a
pixel of misregistration); nothing is trained for it, and how well it works depends on the encoder.

Geometry: the *before* scene is read exactly as ``geossl classify --dense`` reads a scene (its grid,
or the encoder's GSD when resampling) and the *after* scene is read onto that grid through a
``WarpedVRT`` (:class:`geossl.scene.reader.ModelSceneReader` with ``onto``), whatever its own CRS, origin or
size; dates of one NAIP quad differ by a pixel or so. Windows are planned, streamed and blended by the
dense-map machinery (:mod:`geossl.predict.dense`): the score map is one pixel per patch on the before
scene's grid scaled by the patch size, rows written as soon as no later window reaches them, so memory
does not grow with the scene. A pixel counts as valid only where both dates are valid; where either is
not, both windows are filled with the encoder's means (both dates see the same pixels), and a map cell
with less than ``min_valid`` of its pixels valid on both dates is nodata (NaN).

With a land-cover model (``--model``, a folder with the dense head of ``geossl probe --dense``) the same
tokens also give each patch a class on each date: a two-band from-to map (before, after; 255 nodata) and
a transition table in hectares (:mod:`geossl.predict.change_outputs`) whose areas add up to the area
valid on both dates.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.transform import Affine

from geossl.choices import BLENDS
from geossl.data.raster import raster_env
from geossl.io import check_outputs
from geossl.models.encoder import Encoder
from geossl.models.landcover import LandCoverModel
from geossl.predict.blend import RowAccumulator
from geossl.predict.change_outputs import cell_area_ha, date_in_name, write_change_preview, write_transitions
from geossl.predict.common import ensure_out_dir, output_stem
from geossl.predict.dense import check_dense, classify_windows_dense, dense_axis_plan
from geossl.predict.maps import NODATA_CLASS, COGStripWriter, class_tags, colormap_entries
from geossl.predict.scene import GDAL_CACHE_BYTES, WindowGrid, rgb_choice
from geossl.predict.stac import scene_datetime, write_change_item
from geossl.scene.bands import fill_invalid
from geossl.scene.reader import ModelSceneReader

SCORE = "1 - cosine similarity of the last block's patch tokens (after the final norm), before vs after"


@dataclass
class ChangeResult:
    before: str
    after: str
    outputs: dict[str, Path | None]
    map_size: tuple[int, int]  # (width, height) in patches
    windows: int
    compared_windows: int
    valid_cells: int
    valid_area_ha: float
    mean_score: float
    seconds: float
    note: str
    transform: Affine = field(repr=False, default_factory=Affine.identity)

    def summary(self) -> str:
        rate = self.windows / max(self.seconds, 1e-9)
        mean = f"mean score {self.mean_score:.4f}" if self.valid_cells else "no patch valid on both dates"
        return (f"{output_stem(self.before)} -> {output_stem(self.after)}: {self.windows} window pairs in "
                f"{self.seconds:.1f} s ({rate:.0f}/s) -> {self.outputs['score']} ({self.map_size[0]}x"
                f"{self.map_size[1]} patches, {self.valid_cells} valid = {self.valid_area_ha:.1f} ha; {mean}; "
                f"{self.note})")


def change_outputs(out_dir: Path, before: str, after: str, with_classes: bool, preview: bool,
                   stac: bool) -> dict[str, Path | None]:
    """The files of one pair, named ``<before>_to_<after>_*`` after both scenes' file names."""
    stem = f"{output_stem(before)}_to_{output_stem(after)}"
    return {
        "score": out_dir / f"{stem}_change.tif",
        "fromto": out_dir / f"{stem}_fromto.tif" if with_classes else None,
        "transitions": out_dir / f"{stem}_transitions.csv" if with_classes else None,
        "preview": out_dir / f"{stem}_change_preview.png" if preview else None,
        "stac": out_dir / f"{stem}_change.stac.json" if stac else None,
    }


def window_sizes(patch: int, img_size: int, tile_size: int | None, stride: int | None, min_valid: float,
                 blend: str) -> tuple[int, int]:
    """(tile, stride) in read-grid pixels: whole patches, stride at most the tile (as for dense maps)."""
    tile = int(img_size if tile_size is None else tile_size)
    stride = int(tile if stride is None else stride)
    if tile < patch or tile % patch:
        raise ValueError(f"--tile-size {tile}: must be a multiple of the encoder's patch size {patch}")
    if stride < 1 or stride % patch or stride > tile:
        raise ValueError(f"--stride {stride}: must be a multiple of the patch size {patch} and at most the tile "
                         f"size {tile}")
    if not 0.0 < min_valid <= 1.0:
        raise ValueError(f"--min-valid must be in (0, 1], got {min_valid}")
    if blend not in BLENDS:
        raise ValueError(f"--blend must be one of {BLENDS}, got {blend!r}")
    return tile, stride


class PairReader:
    """Both dates' windows at the same pixels, for :func:`geossl.scene.reader.window_batches`: images
    (B, 2C, T, T), before's bands then after's, and the pixels valid on both dates."""

    def __init__(self, before: ModelSceneReader, after: ModelSceneReader) -> None:
        self.before, self.after = before, after
        self.fill = list(before.meta.mean) * 2

    def read_batch(self, origins: Sequence[tuple[int, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
        a, valid_a = self.before.read_batch(origins, size)
        b, valid_b = self.after.read_batch(origins, size)
        valid = valid_a & valid_b
        images = np.concatenate([a, b], axis=1)
        fill_invalid(images, valid, self.fill)  # a pixel missing on one date is hidden on both
        return images, valid


def pair_predictor(encoder: Encoder, model: LandCoverModel | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Raw (B, 2C, H, W) pairs -> per-patch (B, 1 [+ 2K], h, w): the score, then (with a model) the before
    and after class probabilities from its dense head. One encoder pass serves both dates."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        tokens = encoder.patch_grid(torch.cat([x[:, :c], x[:, c:]]))  # (2B, h, w, D)
        t_before, t_after = tokens.float().chunk(2)
        score = (1.0 - torch.nn.functional.cosine_similarity(t_before, t_after, dim=-1)).clamp(0.0, 2.0)
        if model is None:
            return score[:, None]
        assert model.dense_head is not None
        probs = torch.softmax(model.dense_head(tokens.flatten(0, 2)).float(), dim=-1)
        probs = probs.reshape(*tokens.shape[:3], -1).permute(0, 3, 1, 2)
        p_before, p_after = probs.chunk(2)
        return torch.cat([score[:, None], p_before, p_after], dim=1)
    return predict


class _ChangeSink:
    """The open map rows of the score (and both dates' class probabilities) -> COGs and tallies.

    ``classes`` names the accumulated channels (what :func:`classify_windows_dense` counts); a finished
    row gives the score band, the from-to bands and, per (before, after) class pair, cells and hectares.
    Committed on a clean exit; on any exception nothing is left behind."""

    def __init__(self, outputs: dict[str, Path | None], classes: list[str] | None, tags: dict[str, str],
                 grid: WindowGrid, crs: Any, transform: Affine, min_valid: float) -> None:
        self.outputs, self.model_classes, self.tags = outputs, classes or [], tags
        k = len(self.model_classes)
        self.classes = ["score"] + [f"before {c}" for c in self.model_classes] + [f"after {c}" for c in
                                                                                  self.model_classes]
        self.crs, self.transform, self.min_valid = crs, transform, min_valid
        self.common: dict[str, Any] = {"width": grid.width, "height": grid.height, "crs": crs, "transform": transform}
        self.acc = RowAccumulator(grid.width, len(self.classes))
        self.height, self.next_row = grid.height, 0
        self.cells, self.area = np.zeros((k, k), np.int64), np.zeros((k, k), np.float64)
        self.valid_cells, self.valid_area, self.score_sum = 0, 0.0, 0.0
        self.writers: list[COGStripWriter] = []

    def __enter__(self) -> _ChangeSink:
        try:
            assert self.outputs["score"] is not None  # change_outputs always names the score map
            self.writers.append(COGStripWriter(
                self.outputs["score"], count=1, dtype="float32", nodata=float("nan"), tags=self.tags,
                descriptions=["change score (1 - cosine similarity)"], overview_resampling="average", **self.common))
            if self.outputs["fromto"] is not None:
                self.writers.append(COGStripWriter(
                    self.outputs["fromto"], count=2, dtype="uint8", nodata=NODATA_CLASS,
                    colormap=colormap_entries(self.model_classes), tags=class_tags(self.model_classes, self.tags),
                    descriptions=["land cover class before", "land cover class after"], **self.common))
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self.finish_rows(self.height)
            for writer in self.writers:
                writer.commit()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        for writer in self.writers:
            writer.abort()

    def finish_rows(self, until: int) -> None:
        """Write every map row before ``until`` (no later window reaches them) and tally it."""
        k = len(self.model_classes)
        for r in range(self.next_row, until):
            _, values = self.acc.pop(r, self.min_valid)  # (channels, width), NaN where not valid on both dates
            score = values[0]
            ok = np.isfinite(score)
            self.writers[0].write(score[None, None])
            n_ok = int(ok.sum())
            area = cell_area_ha(self.crs, self.transform, r) if n_ok else 0.0
            self.valid_cells += n_ok
            self.valid_area += n_ok * area
            self.score_sum += float(score[ok].sum(dtype=np.float64))
            if k:
                before = np.where(ok, np.argmax(np.nan_to_num(values[1 : 1 + k], nan=-1.0), axis=0), NODATA_CLASS)
                after = np.where(ok, np.argmax(np.nan_to_num(values[1 + k :], nan=-1.0), axis=0), NODATA_CLASS)
                self.writers[1].write(np.stack([before, after]).astype(np.uint8)[:, None])
                np.add.at(self.cells, (before[ok], after[ok]), 1)
                np.add.at(self.area, (before[ok], after[ok]), area)
        self.next_row = max(self.next_row, until)


def scene_date(uri: str) -> dt.datetime | None:
    """When a scene was taken: its TIFFTAG_DATETIME, else the date in its file name."""
    return scene_datetime(uri) or date_in_name(uri)


def change_scene(
    encoder: Encoder | LandCoverModel,
    before: str,
    after: str,
    out_dir: str | Path,
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    bands: Sequence[int] | None = None,
    resample: bool | None = None,
    batch_size: int = 64,
    min_valid: float = 0.5,
    blend: str = "mean",
    preview: bool = True,
    stac: bool = True,
    overwrite: bool = False,
    check_stats: bool = True,
    progress: bool = True,
    model_path: str | Path | None = None,
) -> ChangeResult:
    """Score the change from ``before`` to ``after`` per patch into ``<out_dir>/<before>_to_<after>_change.tif``.

    ``encoder``: an :class:`Encoder`, or a :class:`LandCoverModel` with a dense head (then also the from-to
    map and the transition table). ``tile_size`` defaults to the encoder's img_size, ``stride`` to the
    tile (a multiple of the patch size, at most the tile); ``blend`` weighs overlapping windows as in
    classify. ``model_path`` is linked from the STAC Item. See the module docstring.
    """
    model = encoder if isinstance(encoder, LandCoverModel) else None
    enc = model.encoder if model is not None else encoder
    assert isinstance(enc, Encoder)
    meta = enc.meta
    tile, stride = window_sizes(meta.patch_size, meta.img_size, tile_size, stride, min_valid, blend)
    if model is not None:
        check_dense(model, tile, stride, model_path)
    outputs = change_outputs(ensure_out_dir(out_dir), before, after, model is not None, preview, stac)
    check_outputs([p for p in outputs.values() if p is not None], overwrite)
    start = time.perf_counter()
    with (raster_env([before, after], GDAL_CACHEMAX=GDAL_CACHE_BYTES),
          ModelSceneReader(before, meta, bands, resample) as reader_a,
          ModelSceneReader(after, meta, bands, onto=reader_a.grid(before)) as reader_b):
        if reader_a.width < tile or reader_a.height < tile:
            raise ValueError(f"{before}: {reader_a.width}x{reader_a.height} px is smaller than one {tile} px "
                             "window (use a smaller --tile-size)")
        if check_stats:
            reader_a.check_statistics()
            reader_b.check_statistics()
        p = meta.patch_size
        grid = WindowGrid(dense_axis_plan(reader_a.height, tile, stride, p),
                           dense_axis_plan(reader_a.width, tile, stride, p), tile, p, blend)
        map_t = reader_a.transform @ Affine.scale(p)
        note = reader_a.resample_note
        tags = {"SCORE": SCORE, "BEFORE": before, "AFTER": after, "TILE_SIZE": str(tile), "STRIDE": str(stride),
                "MIN_VALID": str(min_valid), "BLEND": blend, "RESAMPLING": note, "PATCH": f"one cell per {p} px patch"}
        classes = list(model.classes) if model is not None else None
        with _ChangeSink(outputs, classes, tags, grid, reader_a.crs, map_t, min_valid) as sink:
            compared = classify_windows_dense(enc, pair_predictor(enc, model), PairReader(reader_a, reader_b), grid,
                                              sink, batch_size, min_valid, desc=output_stem(after) if progress else None)
        rgb = rgb_choice(meta.bands, reader_a.bands)
        rgb_bands = ([reader_a.bands[i] for i in rgb], [reader_b.bands[i] for i in rgb])
    if classes is not None and outputs["transitions"] is not None:
        write_transitions(outputs["transitions"], classes, sink.cells, sink.area)
    if outputs["preview"] is not None:
        low = [meta.p2[i] for i in rgb] if meta.p2 and meta.p98 else None
        high = [meta.p98[i] for i in rgb] if meta.p2 and meta.p98 else None
        with raster_env([before, after], GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            write_change_preview(outputs["preview"], before, after, rgb_bands, low, high, str(outputs["score"]),
                                 title=f"{output_stem(before)} -> {output_stem(after)}: tile {tile}, stride {stride}")
    if outputs["stac"] is not None:
        stac_tags = {**tags, **({"CLASSES": json.dumps(classes)} if classes else {})}
        write_change_item(outputs, before, after, stac_tags, (scene_date(before), scene_date(after)), model_path)
    return ChangeResult(
        before=before, after=after, outputs=outputs, map_size=(grid.width, grid.height), windows=grid.n_windows,
        compared_windows=compared, valid_cells=sink.valid_cells, valid_area_ha=sink.valid_area,
        mean_score=sink.score_sum / max(sink.valid_cells, 1), seconds=time.perf_counter() - start, note=note,
        transform=map_t,
    )
