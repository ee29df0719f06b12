"""Frozen features of a patch dataset, in dataset order: the online k-NN monitor and the probe use it."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import cast

import torch
from tqdm.auto import tqdm

from geossl.models.encoder import Encoder


def map_dataset(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: torch.utils.data.Dataset,
    dim: int,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "features",
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn`` over every image batch of ``dataset``: (N, dim) float32 on the CPU, in dataset order, with a bar.

    With ``fill`` (one value per band), pixels a batch's ``mask`` marks invalid are replaced by it first,
    as training and inference do (the band mean: zero after normalisation)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    sized = cast(Sized, dataset)  # a map-style dataset: torch's Dataset type does not declare __len__
    out = torch.empty(len(sized), dim, dtype=torch.float32)
    with torch.inference_mode(), tqdm(total=len(sized), desc=desc, unit="img", leave=False) as bar:
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            if fill is not None and "mask" in batch:
                mask = batch["mask"].to(device, non_blocking=True).unsqueeze(1)
                x = torch.where(mask, x.float(), fill.to(device).view(1, -1, 1, 1))
            out[batch["index"]] = fn(x).float().cpu()
            bar.update(x.shape[0])
    return out


def extract_features(
    encoder: Encoder,
    dataset: torch.utils.data.Dataset,
    recipe: str,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "features",
) -> torch.Tensor:
    """Encoder features (N, D) float32 on the CPU, in dataset order; batched, under inference_mode."""
    encoder = encoder.to(device).eval()
    return map_dataset(lambda x: encoder.features(x, recipe), dataset, encoder.feature_dim(recipe),
                       batch_size, num_workers, device, desc, fill=encoder.mean.view(-1))
