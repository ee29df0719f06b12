"""How overlapping windows combine into map cells: a plain mean, or a Hann (raised-cosine) weighted mean.

Each window adds ``w * p`` to the cells whose centres it covers and ``w`` to their weights; a cell's
probabilities are ``sum(w * p) / sum(w)`` (a weighted mean, whatever the weights, so a constant
probability field stays constant) and its class the argmax of ``sum(w * p)``. ``w`` is the window's
fraction of valid pixels times a position weight:

* ``mean``: 1 everywhere, the historical behaviour (a box filter: a window's vote drops from full to
  nothing at its border, so a cell's neighbour may see a different set of full-weight votes).
* ``hann``: the separable raised cosine ``h(u_row) * h(u_col)`` with ``u`` the cell centre's position in
  the window (0 = leading edge, 1 = trailing edge) and ``h(u) = floor + (1 - floor) * sin(pi u)^2``.
  It is 1 at the window centre, where a ViT's context is complete, and falls smoothly to ``floor`` at
  the border, where half the context is missing: neighbouring cells get almost the same votes, so a
  class changes where the evidence does rather than where a window ends.

Why a non-zero ``floor`` (:data:`HANN_FLOOR`, 1 %) rather than the textbook Hann that reaches 0: at the
scene edges some cells are covered only by the border rows or columns of windows (the last window is
shifted flush with the edge, and corner cells sit in one corner of one window). With a zero weight they
would get 0 / 0; with the floor they get the weighted mean of the windows that cover them, i.e. exactly
those windows' probabilities, finite and normalised. Inside the scene the floor is negligible next to
the central weights of the overlapping windows.

The accumulator keeps only the map rows still open, so memory stays bounded (see
:mod:`geossl.predict.scene`).
"""

from __future__ import annotations

import numpy as np

from geossl.choices import BLENDS

HANN_FLOOR = 0.01  # weight at the very border of a window, relative to 1 at its centre


def hann_weight(u: np.ndarray, floor: float = HANN_FLOOR) -> np.ndarray:
    """``floor + (1 - floor) * sin(pi u)^2`` for positions ``u`` in [0, 1] across a window."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    return floor + (1.0 - floor) * np.sin(np.pi * u) ** 2


def axis_weights(blend: str, cells: np.ndarray, start: int, stride: int, tile: int) -> np.ndarray:
    """Position weights (float32) of the cells ``cells`` (a (n, 3) ``(cell, lo, hi)`` plan row block, see
    :func:`geossl.data.raster.plan_axis`) in a window starting at pixel ``start``, along one axis.

    The position is the cell's *centre* ``(k + 0.5) * stride`` relative to the window, over the tile size.
    """
    if blend == "mean":
        return np.ones(len(cells), np.float32)
    if blend == "hann":
        centres = (cells[:, 0].astype(np.float64) + 0.5) * stride - start
        return hann_weight(centres / tile).astype(np.float32)
    raise ValueError(f"--blend must be one of {BLENDS}, got {blend!r}")


class RowAccumulator:
    """Weighted probability sums of the map rows still open; rows leave in order once final."""

    def __init__(self, width: int, k: int) -> None:
        self.width, self.k = width, k
        self.rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sums (width, k), weights (width,), best own valid fraction (width,)) of map row ``r``."""
        if r not in self.rows:
            self.rows[r] = (np.zeros((self.width, self.k), np.float32), np.zeros(self.width, np.float32),
                            np.zeros(self.width, np.float32))
        return self.rows[r]

    def add(self, row_cells: np.ndarray, col_cells: np.ndarray, integral: np.ndarray, probs: np.ndarray,
            weight: float, row_w: np.ndarray, col_w: np.ndarray) -> None:
        """Add one window's probabilities to the cells it feeds, weighted by ``weight * row_w[i] * col_w``;
        record each cell's own valid fraction (from the window's valid-pixel ``integral`` image)."""
        ks, clo, chi = col_cells[:, 0], col_cells[:, 1], col_cells[:, 2]
        area = np.maximum((row_cells[:, 2:3] - row_cells[:, 1:2]) * (chi - clo)[None], 1)
        for i, (r, rlo, rhi) in enumerate(row_cells):
            block = integral[rhi, chi] - integral[rlo, chi] - integral[rhi, clo] + integral[rlo, clo]
            w = (weight * row_w[i]) * col_w
            sums, wsum, cell_valid = self.row(int(r))
            sums[ks] += w[:, None] * probs
            wsum[ks] += w
            np.maximum.at(cell_valid, ks, block / area[i])

    def pop(self, r: int, min_valid: float) -> tuple[np.ndarray, np.ndarray]:
        """(classes uint8 (width,), probabilities float32 (k, width)) of a finished row; ``nodata`` cells
        (class 255, probabilities NaN) where no window reached or less than ``min_valid`` is valid."""
        probs = np.full((self.k, self.width), np.nan, np.float32)
        classes = np.full(self.width, 255, np.uint8)
        entry = self.rows.pop(r, None)
        if entry is None:  # no window reached this row
            return classes, probs
        sums, weight, cell_valid = entry
        ok = (weight > 0) & (cell_valid >= min_valid)
        probs[:, ok] = (sums[ok] / weight[ok, None]).T
        classes[ok] = np.argmax(sums[ok], axis=1).astype(np.uint8)
        return classes, probs


def quantize_probs(probs: np.ndarray) -> np.ndarray:
    """float probabilities (NaN = nodata) -> uint8 ``round(p * 254)``, 255 = nodata (see PROBS_UINT8_TAGS)."""
    out = np.full(probs.shape, 255, np.uint8)
    ok = np.isfinite(probs)
    out[ok] = np.rint(np.clip(probs[ok], 0.0, 1.0) * 254.0).astype(np.uint8)
    return out


PROBS_UINT8_SCALE = 254
# 255 is the nodata value of every geossl map, so probability 1.0 cannot be 255: values are p * 254 rounded.
PROBS_UINT8_TAGS = {"PROBABILITY_ENCODING": "uint8: p = value / 254 (rounded, error <= 1/508); 255 = nodata",
                    "PROBABILITY_SCALE": str(1.0 / PROBS_UINT8_SCALE)}
