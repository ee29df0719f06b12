"""Dense land-cover maps (``geossl classify --dense``): one map pixel per ViT patch, from the patch tokens.

A window map spends a whole forward pass on one class per window (a 640 m cell for 64 px at 10 m); the
ViT has already computed a token per ``patch_size`` px square, and the dense head of ``geossl probe
--dense`` (:mod:`geossl.probe.dense`) turns each into class probabilities for almost nothing more.

Geometry: windows of the tile size start every ``stride`` px of the read grid (a multiple of the patch
size, at most the tile, default the tile) on the patch grid anchored at the scene origin, plus one last
window flush with the last whole patch when the scene does not end on a stride. So every window's token
(i, j) is exactly one map cell, and the map's geotransform is the read grid's scaled by the patch size:
a map pixel is ``patch_size`` x the read-grid pixel (80 m for patch 8 at 10 m), origin = the scene origin.
A partial last patch row/column (scene size not a multiple of the patch) is not a map cell, as a partial
stride is not one in window maps.

Overlapping windows (stride < tile) average their tokens' probabilities per cell in the same
:class:`geossl.predict.blend.RowAccumulator` as window maps, weighted by the window's valid fraction and,
with ``--blend hann``, by the raised cosine of the patch's position in its window. A cell is nodata (255)
when less than ``min_valid`` of its own pixels are valid. Rows stream out as in window maps, so memory
holds a few map rows and two batches whatever the scene size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossl.data.raster import AxisPlan
from geossl.models.landcover import LandCoverModel
from geossl.predict.common import model_device, run_batches
from geossl.scene.reader import window_batches


def check_dense(model: LandCoverModel, tile: int, stride: int, model_path: str | Path | None = None) -> None:
    """Refuse, in one line, what a dense map cannot do (before any output is written)."""
    if model.dense_head is None:
        where = model_path or getattr(model, "source", None) or "the land-cover model"
        raise ValueError(f"{where}: this model has no dense (per-patch) head; rerun `geossl probe --dense` "
                         "to fit one, then classify with its model folder")
    p = model.meta.patch_size
    if stride % p or stride > tile:
        raise ValueError(f"--stride {stride}: with --dense it must be a multiple of the patch size {p} "
                         f"and at most the tile size {tile}")


def dense_axis_plan(length: int, tile: int, stride: int, cell: int) -> AxisPlan:
    """Windows of ``tile`` px every ``stride`` px along an axis of ``length`` px; each feeds its tile // cell
    patch cells, rows ``(cell, lo, hi)`` with ``lo, hi`` the cell's pixel range inside the window.

    The last window ends flush with the last whole ``cell`` (so it stays on the patch grid)."""
    if length < tile:
        raise ValueError(f"{length} px is smaller than one {tile} px window (use a smaller --tile-size)")
    if tile % cell or stride % cell or stride < 1:
        raise ValueError(f"tile {tile} and stride {stride} must be multiples of the patch size {cell}")
    starts = list(range(0, length - tile + 1, stride))
    last = (length - tile) // cell * cell
    if starts[-1] < last:
        starts.append(last)
    per = tile // cell
    cells = []
    for s in starts:
        ks = np.arange(s // cell, s // cell + per)
        lo = ks * cell - s
        cells.append(np.stack([ks, lo, lo + cell], axis=1))
    return AxisPlan(starts, cells, length // cell)


def classify_windows_dense(model: torch.nn.Module, predict: Any, reader: Any, grid: Any, sink: Any, batch_size: int,
                           min_valid: float, desc: str | None) -> int:
    """Dense twin of ``geossl.predict.scene._classify_windows``: ``predict`` maps raw pixels to per-patch
    probabilities (B, K, h, w); each token row of a window is added to its map row. ``grid.stride`` is the
    cell (patch) size; ``model`` only tells the device; K is ``len(sink.classes)``, any per-patch values
    (``geossl change`` accumulates its score and both dates' probabilities the same way).
    Returns how many windows had at least ``min_valid`` valid pixels."""
    device, cell = model_device(model), grid.stride
    k, n = len(sink.classes), grid.tile // grid.stride
    classified = 0
    for b0, images, valid, frac, integral in window_batches(reader, grid, batch_size, desc):
        probs = np.zeros((len(valid), n, n, k), np.float32)
        use = frac > 0
        if use.any():
            probs[use] = run_batches(predict, images[use], device).transpose(0, 2, 3, 1)
        classified += int((frac >= min_valid).sum())
        for i in np.flatnonzero(use):
            ri, ci = grid.position(b0 + int(i))
            rc, cc = grid.rows.cells[ri], grid.cols.cells[ci]
            rw, cw = grid.weights(rc, grid.rows.starts[ri]), grid.weights(cc, grid.cols.starts[ci])
            tok_cols = cc[:, 1] // cell
            for a, tok_row in enumerate(rc[:, 1] // cell):
                sink.acc.add(rc[a : a + 1], cc, integral[i], probs[i, tok_row][tok_cols], float(frac[i]),
                             rw[a : a + 1], cw)
        sink.finish_rows(grid.first_open_row(b0 + len(valid)))
    return classified
