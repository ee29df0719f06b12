"""Which patch tokens of the global crops the student sees masked (iBOT, Zhou et al. 2022; DINOv2).

DINOv2's collate masks ``int(n * probability)`` of the ``n`` global crops; their mask ratios are
stratified over ``[low, high]`` (one draw per equal sub-interval, so a batch always spans the range)
and the masks are shuffled over the crops. Masks are rectangles of at least 4 patches with aspect
ratio in [0.3, 1/0.3] (BEiT's block-wise masking) or independent patches.

Everything is drawn from one ``torch.Generator`` with shapes that never depend on the draws, so a
resumed run (which reseeds per step) replays the same masks. Masks are built on the CPU, as
DINOv2's collate does: the number of masked patches is then known to the host without a GPU sync.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

BLOCK_MIN_PATCHES = 4  # DINOv2 MaskingGenerator(min_num_patches=4)
BLOCK_MIN_ASPECT = 0.3  # aspect ratio in [0.3, 1 / 0.3]
BLOCK_MAX_FRACTION = 0.5  # one block covers at most half the grid (DINOv2's max_num_patches)
BLOCK_ROUNDS = 32  # block placements tried per image (vectorised over the batch)


def mask_counts(
    n_images: int, n_patches: int, mask_ratio: Sequence[float], mask_probability: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(n_images,) number of patches to mask per global crop: 0 for the unmasked ones."""
    n_masked = int(n_images * mask_probability)
    bounds = torch.linspace(float(mask_ratio[0]), float(mask_ratio[1]), n_masked + 1, dtype=torch.float64)
    u = torch.rand(n_masked, generator=generator, dtype=torch.float64)
    ratios = bounds[:-1] + u * (bounds[1:] - bounds[:-1])
    counts = torch.zeros(n_images, dtype=torch.long)
    counts[:n_masked] = (n_patches * ratios).long()  # int(N * ratio), as DINOv2
    return counts[torch.randperm(n_images, generator=generator)]


def block_masks(counts: torch.Tensor, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(n, H, W) union of rectangles with at most ``counts[i]`` patches per image (BEiT / DINOv2).

    Each round proposes one rectangle per image, as DINOv2's ``MaskingGenerator._mask``: area uniform in
    [4, remaining], log-uniform aspect ratio, strictly smaller than the grid; it is kept only if it
    masks new patches without exceeding the image's count. Fixed rounds keep the generator's
    consumption independent of the outcome.
    """
    height, width = grid
    n = counts.shape[0]
    mask = torch.zeros(n, height, width, dtype=torch.bool)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    max_block = BLOCK_MAX_FRACTION * height * width
    log_lo, log_hi = math.log(BLOCK_MIN_ASPECT), math.log(1 / BLOCK_MIN_ASPECT)
    for _ in range(BLOCK_ROUNDS):
        remaining = (counts - mask.sum(dim=(1, 2))).clamp(min=0).double().clamp(max=max_block)
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        area = BLOCK_MIN_PATCHES + u[:, 0] * (remaining - BLOCK_MIN_PATCHES)
        aspect = torch.exp(log_lo + u[:, 1] * (log_hi - log_lo))
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (h < height) & (w < width)
        top = (u[:, 2] * (height - h + 1).clamp(min=1)).long().view(n, 1, 1)
        left = (u[:, 3] * (width - w + 1).clamp(min=1)).long().view(n, 1, 1)
        rect = (rows >= top) & (rows < top + h.view(n, 1, 1)) & (cols >= left) & (cols < left + w.view(n, 1, 1))
        new = (rect & ~mask).sum(dim=(1, 2))
        accept = fits & (new > 0) & (new <= remaining)
        mask |= rect & accept.view(n, 1, 1)
    return mask


def fill_random(mask: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Add random unmasked patches to each row of ``mask`` (n, N) until it holds exactly ``counts``."""
    n, n_patches = mask.shape
    deficit = (counts - mask.sum(dim=1)).clamp(min=0)
    scores = torch.rand(n, n_patches, generator=generator)
    scores = torch.where(mask, 2.0, scores)  # already masked patches rank last
    rank = torch.empty_like(scores, dtype=torch.long)
    rank.scatter_(1, scores.argsort(dim=1), torch.arange(n_patches).expand(n, n_patches).contiguous())
    return mask | (rank < deficit.view(n, 1))


def draw_masks(
    n_images: int, grid: tuple[int, int], mask_ratio: Sequence[float], mask_probability: float,
    mode: str, generator: torch.Generator,
) -> torch.Tensor:
    """(n_images, H * W) bool, row-major over the patch grid (timm's token order); True = masked.

    ``mode`` "block": rectangles first, then random patches make up what no rectangle could fill, so
    every masked crop holds exactly its drawn ratio (DINOv2 may fall a few patches short on small
    grids). ``mode`` "random": independent patches.
    """
    if generator.device.type != "cpu":
        raise ValueError("masks are drawn on the CPU; pass a CPU torch.Generator")
    n_patches = grid[0] * grid[1]
    counts = mask_counts(n_images, n_patches, mask_ratio, mask_probability, generator)
    if mode == "block":
        mask = block_masks(counts, grid, generator).flatten(1)
    elif mode == "random":
        mask = torch.zeros(n_images, n_patches, dtype=torch.bool)
    else:
        raise ValueError(f"loss.ibot_mask_mode: expected 'block' or 'random', got {mode!r}")
    return fill_random(mask, counts, generator)
