"""Test-time augmentation: the 8 dihedral transforms are distinct, averaging leaves an invariant model's
output unchanged and changes a position-dependent one's; it runs through a scene map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from bench.synthetic import make_tiny_model, write_synthetic_scene
from geossl.models.landcover import load_landcover_model
from geossl.predict.scene import classify_scene
from geossl.predict.tta import dihedral, tta_predict, tta_predict_dense, undo_dihedral

W = torch.tensor([[0.02, -0.01, 0.03], [-0.02, 0.04, 0.0], [0.01, 0.0, -0.03], [0.0, 0.02, 0.01]])


def band_means(x: torch.Tensor) -> torch.Tensor:
    """Rotation/flip invariant: per-band means only."""
    return torch.softmax(x.mean(dim=(-2, -1)) @ W.T, dim=-1)


def top_left(x: torch.Tensor) -> torch.Tensor:
    """Not invariant: per-band means of the top-left quadrant."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return torch.softmax(x[..., :h, :w].mean(dim=(-2, -1)) @ W.T, dim=-1)


def test_the_eight_transforms_are_the_dihedral_group() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    images = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(images) == 8
    assert torch.equal(dihedral(x, 0), x) and torch.equal(dihedral(x, 4), torch.flip(x, dims=(-1,)))
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_tta_equals_plain_for_invariant_model_and_differs_otherwise() -> None:
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    torch.testing.assert_close(tta_predict(band_means)(x), band_means(x), rtol=1e-5, atol=1e-6)
    averaged = tta_predict(top_left)(x)
    assert not torch.allclose(averaged, top_left(x), atol=1e-3)
    # reference written here: the mean over the 8 transforms, one call each
    reference = torch.stack([top_left(dihedral(x, k)) for k in range(8)]).mean(0)
    torch.testing.assert_close(averaged, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(averaged.sum(dim=1), torch.ones(5))
    with pytest.raises(ValueError, match="square"):
        tta_predict(band_means)(torch.zeros(1, 3, 8, 16))


def test_tta_in_a_scene_map(tmp_path: Path) -> None:
    model = load_landcover_model(make_tiny_model(tmp_path / "m", img_size=32))
    scene = write_synthetic_scene(tmp_path / "s.tif", 96, 64, nodata=None)
    with rasterio.open(scene, "r+") as dst:
        dst.write(np.random.default_rng(1).integers(20, 250, (3, 64, 96)).astype(np.uint8))
    kw = dict(tile_size=32, stride=32, probs=True, preview=False, geojson=False, progress=False, stac=False)
    plain = classify_scene(model, str(scene), tmp_path / "plain", **kw)
    tta = classify_scene(model, str(scene), tmp_path / "tta", tta=True, **kw)
    with rasterio.open(plain.probs) as a, rasterio.open(tta.probs) as b:
        p, q = a.read(), b.read()
        assert b.tags()["TTA"] == "True"
    # expected, computed here: the model on the 8 transforms of window (0, 0), averaged
    image = torch.from_numpy(np.asarray(rasterio.open(scene).read(window=((0, 32), (0, 32))), np.float32))[None]
    with torch.inference_mode():
        expected = torch.stack([model.predict_proba(dihedral(image, k)) for k in range(8)]).mean(0)[0].numpy()
    np.testing.assert_allclose(q[:, 0, 0], expected, atol=1e-5)
    assert not np.allclose(p, q, atol=1e-4)


def patch_means(x: torch.Tensor, p: int = 4) -> torch.Tensor:
    """Per-patch (p x p) band means -> per-patch probabilities (B, K, h, w): invariant inside each patch."""
    b, c, h, w = x.shape
    means = x.reshape(b, c, h // p, p, w // p, p).mean(dim=(3, 5))  # (B, C, h, w)
    return torch.softmax(torch.einsum("bchw,kc->bkhw", means, W), dim=1)


def patch_corner(x: torch.Tensor, p: int = 4) -> torch.Tensor:
    """Not invariant: each patch's top-left pixel."""
    return torch.softmax(torch.einsum("bchw,kc->bkhw", x[..., ::p, ::p], W), dim=1)


def test_undo_dihedral_inverts_every_transform() -> None:
    x = torch.rand(2, 3, 5, 5)
    for k in range(8):
        assert torch.equal(undo_dihedral(dihedral(x, k), k), x)


def test_dense_tta_maps_each_vote_back_to_its_patch() -> None:
    x = torch.rand(3, 3, 16, 16) * 100
    plain = patch_means(x)
    assert torch.allclose(tta_predict_dense(patch_means)(x), plain, atol=1e-6)  # every patch's 8 votes agree
    # reference, written out: the 8 transformed images' patch grids, each turned back, averaged
    ref = torch.stack([undo_dihedral(patch_corner(dihedral(x, k)), k) for k in range(8)]).mean(0)
    got = tta_predict_dense(patch_corner)(x)
    assert torch.allclose(got, ref, atol=1e-6) and not torch.allclose(got, patch_corner(x), atol=1e-3)
