"""Band adaptation by name: reference formulas for the first-conv weight, and the adapted models' outputs."""

from __future__ import annotations

import pytest
import timm
import torch

from geossl.models.bands import adapt_input_weight, canonical_band, map_bands
from geossl.models.encoder import Encoder, EncoderMeta
from geossl.models.importer import Normalization, adapt_encoder

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]


def encoder_of(name: str, bands: list[str], seed: int = 0, **kwargs) -> Encoder:
    torch.manual_seed(seed)
    kw = {"in_chans": len(bands), "img_size": 32, "num_classes": 0, "dynamic_img_size": True, **kwargs}
    backbone = timm.create_model(name, pretrained=False, **kw).eval()
    n = len(bands)
    meta = EncoderMeta(timm_name=name, timm_kwargs=kw, bands=bands, mean=[100.0] * n, std=[50.0] * n,
                       patch_size=8, img_size=32, embed_dim=int(backbone.num_features))
    return Encoder(backbone, meta).eval()


def test_band_names_match_across_spellings():
    assert canonical_band("B01") == canonical_band("b1") == "B1"
    assert canonical_band("B8A") == canonical_band("b8a") == "B8A" != canonical_band("B08")
    mapping = map_bands(["B4", "B3", "B2"], S2)
    assert mapping.index[1:4] == [2, 1, 0] and mapping.index.count(None) == 10
    assert mapping.new_bands == [b for b in S2 if b not in ("B02", "B03", "B04")] and mapping.dropped_bands == []
    assert "kept 3 (B02<-B2, B03<-B3, B04<-B4)" in mapping.describe()
    with pytest.raises(ValueError, match=r"no band of the model \(band_1, band_2, band_3\) matches.*B01"):
        map_bands(["band_1", "band_2", "band_3"], S2)
    with pytest.raises(ValueError, match=r"band 'b2' named twice"):
        map_bands(["B2", "b2"], S2)


def test_adapted_weight_against_reference():
    """Reference written out: kept bands copy their source filter, new ones are 0 (zero) or the kept
    filters' mean, all scaled by n_source / n_target (mean); dropped source bands vanish."""
    weight = torch.randn(5, 4, 2, 2)
    mapping = map_bands(["a", "b", "c", "d"], ["c", "x", "a", "y", "z"])  # b, d dropped
    zero = adapt_input_weight(weight, mapping, "zero")
    expected = torch.zeros(5, 5, 2, 2)
    expected[:, 0], expected[:, 2] = weight[:, 2], weight[:, 0]
    torch.testing.assert_close(zero, expected)
    mean = adapt_input_weight(weight, mapping, "mean")
    avg = (weight[:, 0] + weight[:, 2]) / 2
    expected = torch.stack([weight[:, 2], avg, weight[:, 0], avg, avg], dim=1) * (4 / 5)
    torch.testing.assert_close(mean, expected)


@pytest.mark.parametrize("name,kwargs,tol", [
    ("vit_tiny_patch16_224", {"patch_size": 8, "depth": 2}, 1e-5),
    # conv-stem hybrid: weight-standardised stem + GroupNorm, so exact up to the norms' eps
    ("vit_tiny_r_s16_p8_224", {"patch_size": 2, "depth": 2}, 1e-3),
])
def test_rgb_model_on_13_bands_keeps_its_output_whatever_the_new_bands(name, kwargs, tol):
    rgb = encoder_of(name, ["B04", "B03", "B02"], **kwargs)
    stats = Normalization([float(10 * i) for i in range(13)], [float(5 + i) for i in range(13)])
    ms, mapping = adapt_encoder(rgb, bands=S2, norm=stats)
    assert ms.meta.in_chans == 13 and ms.meta.bands == S2 and ms.meta.mean == stats.mean
    assert ms.meta.extra["band_adaptation"]["new"] == mapping.new_bands
    z_rgb = torch.randn(2, 3, 32, 32)
    z_ms = torch.randn(2, 13, 32, 32) * 3  # the ten new bands hold anything
    z_ms[:, 3], z_ms[:, 2], z_ms[:, 1] = z_rgb[:, 0], z_rgb[:, 1], z_rgb[:, 2]  # B04, B03, B02
    with torch.no_grad():
        torch.testing.assert_close(ms.backbone(z_ms), rgb.backbone(z_rgb), atol=tol, rtol=tol)
        # In raw units: each model standardises with its own statistics.
        raw_ms = z_ms * ms.std + ms.mean
        raw_rgb = z_rgb * rgb.std + rgb.mean
        torch.testing.assert_close(ms(raw_ms), rgb(raw_rgb), atol=tol * 10, rtol=tol * 10)


def test_mean_policy_keeps_the_output_of_a_band_constant_input():
    rgb = encoder_of("vit_tiny_patch16_224", ["R", "G", "B"], patch_size=8, depth=2)
    five, _ = adapt_encoder(rgb, bands=["R", "G", "B", "NIR", "SWIR"], norm=Normalization([0.0] * 5, [1.0] * 5),
                            new_bands="mean")
    z = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(five.backbone(z.expand(-1, 5, -1, -1)), rgb.backbone(z.expand(-1, 3, -1, -1)),
                                   atol=1e-5, rtol=1e-5)


def test_13_band_model_on_rgb_drops_the_other_bands():
    ms = encoder_of("vit_tiny_patch16_224", S2, patch_size=8, depth=2)
    rgb, mapping = adapt_encoder(ms, bands=["B4", "B3", "B2"], norm=Normalization([0.0] * 3, [1.0] * 3))
    assert len(mapping.dropped_bands) == 10
    z = torch.randn(2, 3, 32, 32)
    z_ms = torch.zeros(2, 13, 32, 32)
    z_ms[:, 3], z_ms[:, 2], z_ms[:, 1] = z[:, 0], z[:, 1], z[:, 2]
    with torch.no_grad():
        torch.testing.assert_close(rgb.backbone(z), ms.backbone(z_ms), atol=1e-5, rtol=1e-5)


def test_changing_bands_needs_statistics_and_same_bands_change_nothing():
    rgb = encoder_of("vit_tiny_patch16_224", ["R", "G", "B"], patch_size=8, depth=1)
    with pytest.raises(ValueError, match="needs the new bands' statistics"):
        adapt_encoder(rgb, bands=["R", "G", "B", "NIR"])
    same, mapping = adapt_encoder(rgb, bands=["r", "g", "b"])
    assert mapping is None and same.meta.bands == ["R", "G", "B"]
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(same(x), rgb(x))
