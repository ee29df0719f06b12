"""timm ViT backbones for any band count and mixed crop sizes."""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn


def backbone_kwargs(
    in_chans: int,
    img_size: int,
    patch_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The exact ``timm.create_model`` keyword arguments; recorded in exports so plain timm can rebuild it.

    ``dynamic_img_size`` lets one ViT take global and local crops of different sizes (DINO multi-crop);
    ``num_classes=0`` makes the forward return the pooled CLS embedding.
    """
    kwargs: dict[str, Any] = {
        "in_chans": int(in_chans),
        "img_size": int(img_size),
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    if patch_size is not None:
        kwargs["patch_size"] = int(patch_size)
    kwargs.update(extra or {})
    return kwargs


def create_backbone(arch: str, kwargs: dict[str, Any], drop_path_rate: float = 0.0) -> nn.Module:
    """Create a randomly initialised timm ViT; never downloads weights."""
    if not arch.startswith(("vit_", "deit", "eva")):
        raise ValueError(f"model.arch: {arch!r} is not a timm ViT (expected e.g. vit_small_patch16_224)")
    try:
        return timm.create_model(arch, pretrained=False, drop_path_rate=drop_path_rate, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"model.arch: timm cannot create {arch!r} ({exc})") from None
