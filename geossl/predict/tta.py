"""Test-time augmentation: average class probabilities over the 8 dihedral transforms of each window.

Overhead imagery has no preferred orientation (a field is a field upside down), so a model's answer
should not depend on whether a window is flipped or rotated by 90 degrees; averaging over the 8
symmetries of the square (4 rotations, each with and without a horizontal flip) removes what is left
of that dependence and usually steadies predictions near class boundaries, at 8x the inference cost.
For a model that is already invariant (its features do not depend on pixel positions) the result is
the plain prediction, up to float rounding. Dense (per-patch) predictions are transformed back before
averaging: on a square window split into whole patches, a rotation or flip of the image is exactly the
same rotation or flip of its patch grid, so each patch's 8 votes land on the same map cell.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` in 0..7 of a (B, C, H, W) batch: rotate by ``k % 4`` quarter turns, flip if ``k >= 4``."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def tta_predict(predict: Predict) -> Predict:
    """``predict`` (raw pixels (B, C, H, W) -> probabilities (B, K)) averaged over the 8 dihedral transforms.

    The 8 variants go through the model as one batch of 8B (one call, better device use); windows must be
    square, which scene windows always are.
    """

    def averaged(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"--tta needs square windows, got {tuple(x.shape[-2:])}")
        batch = torch.cat([dihedral(x, k) for k in range(8)], dim=0)
        probs = predict(batch).float()
        return probs.reshape(8, x.shape[0], *probs.shape[1:]).mean(dim=0)

    return averaged


def undo_dihedral(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral` on the last two dimensions: ``undo_dihedral(dihedral(x, k), k) == x``."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    if k >= 4:
        y = torch.flip(y, dims=(-1,))
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


def tta_predict_dense(predict: Predict) -> Predict:
    """``predict`` (raw pixels (B, C, T, T) -> per-patch probabilities (B, K, h, w)) averaged over the 8
    dihedral transforms, each prediction mapped back onto the untransformed patch grid first."""

    def averaged(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"--tta needs square windows, got {tuple(x.shape[-2:])}")
        batch = torch.cat([dihedral(x, k) for k in range(8)], dim=0)
        probs = predict(batch).float()
        parts = probs.reshape(8, x.shape[0], *probs.shape[1:])
        return torch.stack([undo_dihedral(parts[k], k) for k in range(8)]).mean(dim=0)

    return averaged
