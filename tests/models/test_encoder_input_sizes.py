"""Tiles whose sides are not multiples of the patch size are cropped to whole patches, never a timm assertion."""

from __future__ import annotations

import pytest
import torch

from bench.synthetic import make_tiny_encoder
from geossl.models.encoder import load_encoder


def test_odd_sized_tiles_are_cropped_to_whole_patches(tmp_path):
    encoder = load_encoder(make_tiny_encoder(tmp_path / "enc"))
    p = encoder.meta.patch_size
    x = torch.rand(2, 3, 4 * p - 1, 3 * p + 5) * 255
    expected_crop = x[..., : 3 * p, : 3 * p]
    with torch.no_grad():
        for recipe in ("cls", "cls_last4", "cls_avgpool"):
            torch.testing.assert_close(encoder.features(x, recipe), encoder.features(expected_crop, recipe))
    with pytest.raises(ValueError, match=rf"input of {p - 1}x{p} px is smaller than one {p} px patch"):
        encoder(torch.rand(1, 3, p - 1, p))
