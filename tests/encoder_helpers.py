"""Tiny encoder folders and colour-coded patch folders shared by the model, probe and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from geossl.models.backbone import backbone_kwargs, create_backbone
from geossl.models.encoder import EncoderMeta, export_encoder

RGB_MEAN = [0.3444 * 255, 0.3803 * 255, 0.4078 * 255]  # EuroSAT RGB stats (data README), raw 0-255 units
RGB_STD = [0.2027 * 255, 0.1369 * 255, 0.1156 * 255]


def make_encoder(
    out_dir: Path,
    in_chans: int = 3,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    seed: int = 0,
    img_size: int = 64,
    depth: int = 4,
    embed_dim: int = 192,
) -> Path:
    """A tiny randomly initialised ViT exported as an encoder folder (shared by the probe tests)."""
    torch.manual_seed(seed)
    kwargs = backbone_kwargs(in_chans, img_size, patch_size=8, extra={"depth": depth, "embed_dim": embed_dim, "num_heads": 3})
    backbone = create_backbone("vit_tiny_patch16_224", kwargs)
    meta = EncoderMeta(
        timm_name="vit_tiny_patch16_224",
        timm_kwargs=kwargs,
        bands=["B4", "B3", "B2"] if in_chans == 3 else [f"band_{i}" for i in range(in_chans)],
        mean=mean or (RGB_MEAN if in_chans == 3 else [1000.0] * in_chans),
        std=std or (RGB_STD if in_chans == 3 else [500.0] * in_chans),
        patch_size=8,
        img_size=img_size,
        embed_dim=backbone.embed_dim,
        gsd=10.0,
    )
    return export_encoder(backbone, meta, out_dir)


COLOURS = {"Forest": (30, 110, 40), "SeaLake": (20, 40, 120), "Industrial": (150, 150, 150)}


def make_patches(root: Path, n_per_class: int = 10, size: int = 16, seed: int = 0) -> Path:
    """Class folders of small PNGs whose colour (plus noise) identifies the class."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i}.png")
    return root
