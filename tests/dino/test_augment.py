"""MultiCropAugment: shapes, exact geometry, per-op semantics, determinism, normalisation."""

from __future__ import annotations

import pytest
import torch

from geossl.config import AugmentConfig
from geossl.dino.augment import MultiCropAugment

OFF = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": [0.0, 0.0, 0.0], "solarize_p": 0.0}


def make(c: int, value_range: tuple[float, float] | None = (0, 255), mean: float | list[float] = 100.0,
         std: float | list[float] = 40.0, **kw: object) -> MultiCropAugment:
    defaults: dict[str, object] = {"global_size": 16, "local_size": 8, "n_local": 3}
    cfg = AugmentConfig(**{**defaults, **kw})
    mean = mean if isinstance(mean, list) else [mean] * c
    std = std if isinstance(std, list) else [std] * c
    return MultiCropAugment(cfg, mean, std, value_range=value_range)


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of (C, H, W)."""
    rots = [torch.rot90(x, k, dims=(1, 2)) for k in range(4)]
    return rots + [torch.flip(r, dims=(2,)) for r in rots]


@pytest.mark.parametrize(
    ("c", "dtype", "value_range"),
    [(3, torch.uint8, (0, 255)), (4, torch.int32, (0, 10000)), (13, torch.float32, None)],
)
def test_shapes_and_dtype(c: int, dtype: torch.dtype, value_range: tuple[float, float] | None) -> None:
    aug = make(c, value_range)
    hi = 255 if dtype == torch.uint8 else 10000
    x = torch.randint(0, hi, (5, c, 20, 24)).to(dtype)  # non-square input
    out = aug(x, torch.Generator().manual_seed(0))
    assert len(out) == 2 + 3
    assert [tuple(o.shape) for o in out] == [(5, c, 16, 16)] * 2 + [(5, c, 8, 8)] * 3
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out)


def test_float32_output_under_bf16_autocast() -> None:
    aug = make(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8))
    assert all(o.dtype == torch.float32 for o in out)


@pytest.mark.parametrize("value_range", [(0, 255), None])
def test_constant_image_stays_constant(value_range: tuple[float, float] | None) -> None:
    mean, std = [10.0, 100.0, 200.0, 50.0], [5.0, 20.0, 30.0, 7.0]
    # Blur on everything: a constant must survive reflect padding too.
    aug = make(4, value_range, mean, std, **{**OFF, "blur_p": [1.0, 1.0, 1.0]})
    v = torch.tensor([20.0, 90.0, 230.0, 60.0])
    x = v.view(1, 4, 1, 1).expand(6, 4, 24, 24).clone()
    expected = ((v - torch.tensor(mean)) / torch.tensor(std)).view(1, 4, 1, 1)
    for o in aug(x, torch.Generator().manual_seed(1)):
        torch.testing.assert_close(o, expected.expand_as(o), atol=1e-4, rtol=0)


def test_full_scale_crop_is_a_flip_or_rotation_of_the_input() -> None:
    aug = make(3, None, [1.0, 2.0, 3.0], [2.0, 3.0, 4.0], global_scale=[1.0, 1.0], **OFF)
    x = torch.rand(32, 3, 16, 16) * 10
    g1, g2 = aug(x, torch.Generator().manual_seed(2))[:2]
    norm = (x - torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)) / torch.tensor([2.0, 3.0, 4.0]).view(1, 3, 1, 1)
    used = set()
    for out in (g1, g2):
        for i in range(len(x)):
            matches = [k for k, d in enumerate(dihedral(norm[i])) if torch.allclose(out[i], d, atol=1e-4)]
            assert matches, f"sample {i} is not a flip/rot90 of the input"
            used.add(matches[0])
    assert len(used) >= 6  # all 8 are drawn; 64 draws miss two with negligible probability


def test_no_rotation_or_vflip_when_disabled() -> None:
    aug = make(3, None, 0.0, 1.0, global_scale=[1.0, 1.0], rotate90=False, vflip=False, **OFF)
    x = torch.rand(16, 3, 16, 16)
    g1 = aug(x, torch.Generator().manual_seed(3))[0]
    flips = [torch.allclose(g1[i], x[i].flip(-1), atol=1e-4) for i in range(16)]
    ident = [torch.allclose(g1[i], x[i], atol=1e-4) for i in range(16)]
    assert all(a or b for a, b in zip(flips, ident, strict=True))
    assert any(flips) and any(ident)


def test_crop_scale_bounds_the_covered_extent() -> None:
    """A horizontal ramp: the span of values seen by a crop is its width fraction (or height, if rotated)."""
    aug = make(1, None, 0.0, 1.0, global_scale=[1.0, 1.0], local_scale=[0.05, 0.05], local_size=16, **OFF)
    ramp = (torch.arange(64, dtype=torch.float32) + 0.5) / 64
    x = ramp.view(1, 1, 1, 64).expand(32, 1, 64, 64).clone()
    out = aug(x, torch.Generator().manual_seed(4))
    g_span = out[0].amax(dim=(1, 2, 3)) - out[0].amin(dim=(1, 2, 3))
    assert torch.all(g_span > 0.93)  # whole ramp, less one output pixel (15/16)
    span = torch.cat([(o.amax(dim=(1, 2, 3)) - o.amin(dim=(1, 2, 3))) for o in out[2:]])
    # width fraction = sqrt(0.05 * ratio), ratio in [3/4, 4/3]: 0.19 .. 0.26 (minus one output pixel)
    assert span.max() < 0.26 and span.min() > 0.19 * 15 / 16 - 0.01


def test_same_seed_same_output_different_seed_different() -> None:
    aug = make(4, (0, 255))
    x = torch.randint(0, 255, (6, 4, 24, 24), dtype=torch.uint8)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(not torch.allclose(p, q) for p, q in zip(a, c, strict=True))
    torch.manual_seed(5)  # no generator: the global RNG, reproducible by seeding it
    d = aug(x)
    torch.manual_seed(5)
    assert all(torch.equal(p, q) for p, q in zip(d, aug(x), strict=True))


@pytest.mark.parametrize("value_range", [(0, 10000), None])
def test_grayscale_makes_all_bands_equal(value_range: tuple[float, float] | None) -> None:
    mean, std = [1000.0, 1500.0, 2500.0, 12.0, 800.0], [300.0, 400.0, 900.0, 3.0, 250.0]
    aug = make(5, value_range, mean, std, **{**OFF, "grayscale_p": 1.0, "jitter_p": 1.0, "blur_p": [1.0, 0.5, 0.5]})
    x = torch.rand(4, 5, 24, 24) * 3000
    for o in aug(x, torch.Generator().manual_seed(9)):
        torch.testing.assert_close(o, o[:, :1].expand_as(o), atol=1e-4, rtol=0)
        assert o.std() > 0.01  # equal bands, not a blank image


def test_grayscale_is_the_mean_of_the_standardised_bands() -> None:
    """Averaging raw bands would flood a dim band (12 +- 3) with the others' brightness; standardised ones don't."""
    mean, std = [1000.0, 2500.0, 12.0], [300.0, 900.0, 3.0]
    x = (torch.tensor(mean).view(1, 3, 1, 1) + torch.tensor(std).view(1, 3, 1, 1) * torch.randn(4, 3, 24, 24))
    plain = make(3, (0, 10000), mean, std, **OFF)(x, torch.Generator().manual_seed(9))
    gray = make(3, (0, 10000), mean, std, **{**OFF, "grayscale_p": 1.0})(x, torch.Generator().manual_seed(9))
    for p, g in zip(plain, gray, strict=True):
        torch.testing.assert_close(g, p.mean(dim=1, keepdim=True).expand_as(p), atol=1e-4, rtol=0)


def test_grayscale_p0_keeps_bands_distinct() -> None:
    aug = make(3, (0, 255), **OFF)
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    out = aug(x, torch.Generator().manual_seed(9))
    assert not torch.allclose(out[0][:, 0], out[0][:, 1])


def test_solarize_only_global2_and_only_with_value_range() -> None:
    half = torch.randint(0, 256, (8, 3, 16, 8), dtype=torch.uint8)
    x = torch.cat([half, half.flip(-1)], dim=-1)  # left-right symmetric: the random h-flip is invisible
    kw = {**OFF, "solarize_p": 1.0, "global_scale": [1.0, 1.0], "local_scale": [1.0, 1.0], "local_size": 16,
          "rotate90": False, "vflip": False}
    mean, std = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    unit = x.float() / 255
    solarised = torch.where(unit >= 0.5, 1 - unit, unit) * 255
    plain = (x.float() - m) / s
    out = make(3, (0, 255), mean, std, **kw)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[0], plain, atol=1e-3, rtol=0)
    torch.testing.assert_close(out[1], (solarised - m) / s, atol=1e-3, rtol=0)
    for local in out[2:]:
        torch.testing.assert_close(local, plain, atol=1e-3, rtol=0)
    out = make(3, None, mean, std, **kw)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[1], plain, atol=1e-3, rtol=0)


def test_blur_on_global1_lowers_high_frequency_energy() -> None:
    i = torch.arange(16)
    board = ((i[:, None] // 2 + i[None, :] // 2) % 2).float() * 200 + 20
    x = board.expand(8, 3, 16, 16).clone()

    def hf(o: torch.Tensor) -> torch.Tensor:
        return (o.diff(dim=-1) ** 2).mean() + (o.diff(dim=-2) ** 2).mean()

    kw = {**OFF, "global_scale": [1.0, 1.0]}
    sharp = make(3, (0, 255), **kw)(x, torch.Generator().manual_seed(0))
    blurred = make(3, (0, 255), **{**kw, "blur_p": [1.0, 0.0, 0.0]})(x, torch.Generator().manual_seed(0))
    assert hf(blurred[0]) < 0.6 * hf(sharp[0])
    torch.testing.assert_close(blurred[1], sharp[1])  # p=0 on global-2: untouched


@pytest.mark.parametrize("value_range", [(0, 10000), None])
def test_normalised_output_has_zero_mean_unit_std(value_range: tuple[float, float] | None) -> None:
    """Images whose band values follow the stats (one value per image and band: resampling cannot smooth it)."""
    mean = torch.tensor([1350.0, 1100.0, 2600.0, 4000.0])
    std = torch.tensor([250.0, 400.0, 700.0, 900.0])
    aug = make(4, value_range, mean.tolist(), std.tolist(), **OFF)
    g = torch.Generator().manual_seed(0)
    v = mean + std * torch.randn(2000, 4, generator=g)
    x = v.view(-1, 4, 1, 1).expand(-1, 4, 16, 16)
    for o in aug(x, g)[::2]:
        per_image = o.mean(dim=(2, 3))
        assert per_image.mean(0).abs().max() < 0.1
        assert (per_image.std(0) - 1).abs().max() < 0.1


def test_brightness_jitter_is_multiplicative_and_clipped_in_range_additive_without() -> None:
    kw = {**OFF, "jitter_p": 1.0, "contrast": 0.0, "brightness": 0.4}
    x = torch.tensor([100.0, 250.0]).view(1, 2, 1, 1).expand(64, 2, 16, 16).clone()
    out = make(2, (0, 255), 0.0, 1.0, **kw)(x, torch.Generator().manual_seed(0))[0]  # mean 0, std 1: raw units
    factor = out[:, 0, 0, 0] / 100
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5 and factor.std() > 0.1
    torch.testing.assert_close(out[:, 1, 0, 0], (250 * factor).clamp(max=255))  # same factor, clipped at 255
    out = make(2, None, 0.0, 100.0, **kw)(x, torch.Generator().manual_seed(0))[0]
    shift = out[:, 0, 0, 0] - 1.0  # standardised 100 / 100 = 1; shift = factor - 1 in std units
    torch.testing.assert_close(shift, factor - 1, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 1, 0, 0], 2.5 + shift, atol=1e-5, rtol=0)  # no clipping
