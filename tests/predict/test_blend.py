"""Hann blending of overlapping windows: weights against a reference formula, normalisation at edges and
corners (a constant probability field stays constant), the weighted mean per cell, uint8 probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from bench.synthetic import make_tiny_model, write_synthetic_scene
from geossl.data.raster import axis_plan
from geossl.models.landcover import LandCoverModel, load_landcover_model
from geossl.predict.blend import axis_weights, hann_weight
from geossl.predict.scene import classify_scene
from geossl.scene.reader import ModelSceneReader


def reference_hann(u: np.ndarray) -> np.ndarray:
    """Written here independently: 1 % floor plus a raised cosine that is 1 at the centre."""
    return 0.01 + 0.99 * (0.5 - 0.5 * np.cos(2 * np.pi * u))


class ConstantModel(torch.nn.Module):
    """Same probabilities for every window: blending must give exactly these everywhere."""

    def __init__(self, like: LandCoverModel, probs: np.ndarray) -> None:
        super().__init__()
        self.encoder, self.classes = like.encoder, like.classes
        self.register_buffer("p", torch.tensor(probs, dtype=torch.float32))
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def meta(self):  # noqa: ANN201
        return self.encoder.meta

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.p.expand(x.shape[0], -1)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory: pytest.TempPathFactory) -> LandCoverModel:
    return load_landcover_model(make_tiny_model(tmp_path_factory.mktemp("m") / "rgb", img_size=32))


def test_hann_weights_match_the_reference_and_are_positive_at_borders() -> None:
    u = np.linspace(0, 1, 101)
    np.testing.assert_allclose(hann_weight(u), reference_hann(u), atol=1e-12)
    assert hann_weight(np.array([0.5]))[0] == pytest.approx(1.0) and hann_weight(np.array([0.0]))[0] == pytest.approx(0.01)
    plan = axis_plan(100, 64, 16)  # cell 0 sits in one corner of one window only
    for start, cells in zip(plan.starts, plan.cells, strict=True):
        w = axis_weights("hann", cells, start, 16, 64)
        np.testing.assert_allclose(w, reference_hann(((cells[:, 0] + 0.5) * 16 - start) / 64), rtol=1e-6)
        assert (w > 0).all() and (axis_weights("mean", cells, start, 16, 64) == 1).all()
    with pytest.raises(ValueError, match="--blend must be one of"):
        axis_weights("gauss", plan.cells[0], 0, 16, 64)


@pytest.mark.parametrize("size,tile,stride", [((160, 128), 32, 16), ((150, 101), 64, 16), ((97, 70), 32, 24)])
def test_constant_field_stays_constant_at_every_cell(tmp_path: Path, rgb_model: LandCoverModel,
                                                     size: tuple[int, int], tile: int, stride: int) -> None:
    scene = write_synthetic_scene(tmp_path / "s.tif", *size, nodata=None)
    const = np.linspace(1, 10, 10) / np.linspace(1, 10, 10).sum()
    res = classify_scene(ConstantModel(rgb_model, const), str(scene), tmp_path / "o", tile_size=tile, stride=stride,
                         probs=True, preview=False, geojson=False, progress=False, blend="hann", stac=False)
    with rasterio.open(res.probs) as src:
        probs = src.read()
    assert probs.shape[1:] == (size[1] // stride, size[0] // stride)
    np.testing.assert_allclose(probs, np.broadcast_to(const[:, None, None], probs.shape), rtol=1e-6, atol=1e-7)


def test_hann_cells_are_the_weighted_mean_of_their_windows(tmp_path: Path, rgb_model: LandCoverModel) -> None:
    # stride = tile / 4: cell centres at 1/8, 3/8, 5/8, 7/8 of a window get different weights. (With
    # stride = tile / 2 every centre is at 1/4 or 3/4, where the Hann weights are equal: hann == mean.)
    scene = write_synthetic_scene(tmp_path / "s.tif", 96, 64, nodata=None)
    with rasterio.open(scene, "r+") as dst:  # texture at every scale, so that windows disagree
        dst.write(np.random.default_rng(0).integers(20, 250, (3, 64, 96)).astype(np.uint8))
    out = {}
    for blend in ("mean", "hann"):
        res = classify_scene(rgb_model, str(scene), tmp_path / blend, tile_size=32, stride=8, probs=True,
                             preview=False, geojson=False, progress=False, blend=blend, stac=False)
        with rasterio.open(res.probs) as src, rasterio.open(res.class_map) as cls:
            out[blend] = (src.read(), cls.read(1))
    probs, classes = out["hann"]
    assert probs.shape[1:] == (8, 12)
    with ModelSceneReader(str(scene), rgb_model.meta) as reader:
        p = {}
        for y in range(0, 64 - 32 + 1, 8):
            for x in range(0, 96 - 32 + 1, 8):
                image, _ = reader.read(x, y, 32, 32)
                with torch.inference_mode():
                    p[(x, y)] = rgb_model.predict_proba(torch.from_numpy(image[None]))[0].numpy()
    for r in range(8):
        for c in range(12):
            cx, cy = (c + 0.5) * 8, (r + 0.5) * 8
            ws = [(reference_hann((cx - x) / 32) * reference_hann((cy - y) / 32), v)
                  for (x, y), v in p.items() if x <= cx < x + 32 and y <= cy < y + 32]
            expected = sum(w * v for w, v in ws) / sum(w for w, _ in ws)
            np.testing.assert_allclose(probs[:, r, c], expected, rtol=1e-4, atol=2e-6)
            assert classes[r, c] == int(np.argmax(expected))
    assert not np.allclose(out["mean"][0], probs, rtol=1e-3, atol=1e-6)  # hann really weights differently


def test_uint8_probabilities_read_back_within_1_over_255(tmp_path: Path, rgb_model: LandCoverModel) -> None:
    scene = write_synthetic_scene(tmp_path / "s.tif", 128, 96, nodata=0, border=40)
    kw = dict(tile_size=32, stride=16, probs=True, preview=False, geojson=False, progress=False, stac=False)
    f = classify_scene(rgb_model, str(scene), tmp_path / "f", **kw)
    q = classify_scene(rgb_model, str(scene), tmp_path / "q", probs_dtype="uint8", **kw)
    with rasterio.open(f.probs) as a, rasterio.open(q.probs) as b:
        exact, packed, tags = a.read(), b.read(), b.tags()
        assert b.dtypes[0] == "uint8" and b.nodata == 255
    assert "255 = nodata" in tags["PROBABILITY_ENCODING"]
    scale = float(tags["PROBABILITY_SCALE"])
    nodata = np.isnan(exact)
    assert nodata.any() and (packed[nodata] == 255).all() and (packed[~nodata] < 255).all()
    np.testing.assert_array_less(np.abs(packed[~nodata] * scale - exact[~nodata]), 1 / 255)
    with pytest.raises(ValueError, match="--probs-dtype"):
        classify_scene(rgb_model, str(scene), tmp_path / "x", probs_dtype="float16", **kw)
