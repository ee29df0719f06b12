"""Backbone helpers: the pixels per token of plain and conv-stem (hybrid) timm ViTs."""

from __future__ import annotations

import pytest
import torch

from geossl.models.backbone import backbone_kwargs, create_backbone, effective_patch_size


@pytest.mark.parametrize(("arch", "patch"), [("vit_tiny_patch16_224", None), ("vit_tiny_patch16_224", 8),
                                             ("vit_tiny_r_s16_p8_224", 2)])
def test_effective_patch_size_is_pixels_per_token(arch: str, patch: int | None) -> None:
    model = create_backbone(arch, backbone_kwargs(3, 64, patch, {"depth": 1}))
    tokens = model.forward_features(torch.zeros(1, 3, 64, 64)).shape[1] - model.num_prefix_tokens
    side = effective_patch_size(model)
    assert tokens == (64 // side) ** 2  # the grid the token count implies, measured, not assumed
