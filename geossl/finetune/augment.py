"""Seeded batch augmentation for fine-tuning: dihedral group, random resized crop inside the tile, mixup/cutmix.

Written on tensors because every op must serve any band count (PIL and torchvision's colour ops stop at 3
bands) and draw from an explicit generator seeded by the training step: a resumed run then sees exactly
the augmentations an uninterrupted one would (timm's Mixup and kornia draw from global RNG state).
The crop resamples with :func:`torchvision.ops.roi_align` (bilinear, averaging several samples per output
pixel when a crop is larger than the output), one call for the whole batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import roi_align


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator for one training step (independent of how the run was split into resumes)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def dihedral(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Sample i transformed by element ``which[i]`` (0-7) of the dihedral group: rot90 by ``which % 4``
    quarter turns, then a horizontal flip when ``which >= 4``. Square tiles only."""
    out = x.clone()
    for k in range(8):
        sel = (which == k).nonzero().flatten().to(x.device)
        if sel.numel() == 0 or k == 0:
            continue
        part = torch.rot90(x[sel], k % 4, dims=(-2, -1))
        out[sel] = part.flip(-1) if k >= 4 else part
    return out


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator) -> torch.Tensor:
    """(n, 4) boxes x0, y0, x1, y1 in pixels: area share in ``scale``, aspect ratio log-uniform in ``ratio``
    (torchvision's RandomResizedCrop rule, drawn once per sample, clamped inside the tile)."""
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator) * height * width
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(1, width)
    h = torch.sqrt(area / aspect).clamp(1, height)
    x0 = torch.rand(n, generator=generator) * (width - w)
    y0 = torch.rand(n, generator=generator) * (height - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each sample's box resampled to the full tile size (bilinear, area-averaged when shrinking)."""
    n, _, height, width = x.shape
    rois = torch.cat([torch.arange(n, dtype=boxes.dtype).unsqueeze(1), boxes], dim=1).to(x.device, x.dtype)
    return roi_align(x, rois, output_size=(height, width), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def augment_batch(x: torch.Tensor, generator: torch.Generator, dihedral_group: bool, scale: tuple[float, float],
                  ratio: tuple[float, float], crop_p: float) -> torch.Tensor:
    """Crop (share ``crop_p`` of samples), then a dihedral element per sample."""
    n, _, height, width = x.shape
    if crop_p > 0:
        boxes = crop_boxes(n, height, width, scale, ratio, generator)
        cropped = torch.rand(n, generator=generator) < crop_p
        if bool(cropped.any()):
            idx = cropped.nonzero().flatten().to(x.device)
            x = x.clone()
            x[idx] = resized_crop(x[idx], boxes[cropped])
    if dihedral_group and height == width:
        x = dihedral(x, torch.randint(0, 8, (n,), generator=generator))
    return x


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing spread over all classes (as ``F.cross_entropy(label_smoothing)``)."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def mix_batch(x: torch.Tensor, targets: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) with the batch reversed as partner (timm's
    pairing); with both enabled each batch picks one with p = 0.5. CutMix's ``lam`` is corrected to the
    box's true area after clipping, so the targets weigh what the pixels show."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, targets
    rng = np.random.default_rng(seed)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    partner = x.flip(0)
    if use_cutmix:
        height, width = x.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        x = x.clone()
        x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    else:
        x = lam * x + (1 - lam) * partner
    return x, lam * targets + (1 - lam) * targets.flip(0)
