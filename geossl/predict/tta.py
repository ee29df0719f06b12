"""Test-time augmentation: average class probabilities over the 8 dihedral transforms of each window.

Overhead imagery has no preferred orientation (a field is a field upside down), so a model's answer
should not depend on whether a window is flipped or rotated by 90 degrees; averaging over the 8
symmetries of the square (4 rotations, each with and without a horizontal flip) removes what is left
of that dependence and usually steadies predictions near class boundaries, at 8x the inference cost.
For a model that is already invariant (its features do not depend on pixel positions) the result is
the plain prediction, up to float rounding.
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
