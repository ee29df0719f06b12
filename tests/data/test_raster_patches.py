"""GeoTIFF patches follow the raster layer's validity rule: the same pixels are valid in training, probes
and inference (nodata per band, NaN/inf), and invalid ones become the band mean everywhere."""

from __future__ import annotations

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from bench.synthetic import make_tiny_encoder
from geossl.data.patches import PatchDataset
from geossl.data.raster import WindowReader
from geossl.evaluation.features import extract_features
from geossl.models.encoder import load_encoder


def write_patch(path, data, nodata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10),
                       nodata=nodata) as dst:
        dst.write(data)


def test_geotiff_patches_carry_the_raster_layers_mask(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(100, 200, (3, 16, 16)).astype(np.float32)
    data[0, 2, 3] = np.nan
    data[1, 5, 5] = np.inf
    data[2, 7, 1] = -9999.0  # nodata in one band only: the pixel is invalid
    write_patch(tmp_path / "a" / "x.tif", data, nodata=-9999.0)
    write_patch(tmp_path / "b" / "y.tif", rng.uniform(100, 200, (3, 16, 16)).astype(np.float32), nodata=-9999.0)
    ds = PatchDataset(tmp_path)
    item = ds[ds.paths.index(tmp_path / "a" / "x.tif")]
    expected = np.ones((16, 16), dtype=bool)
    expected[2, 3] = expected[5, 5] = expected[7, 1] = False  # reference: the rule written out
    assert item["mask"].dtype == torch.bool and np.array_equal(item["mask"].numpy(), expected)
    with rasterio.open(tmp_path / "a" / "x.tif") as src:  # the inference reader marks the same pixels
        _, valid = WindowReader(src, [1, 2, 3], "x.tif").read(0, 0, 16, 16)
    assert np.array_equal(valid, expected)
    assert torch.isfinite(item["image"]).all()  # NaN/inf never reach a tensor

    enc_dir = make_tiny_encoder(tmp_path / "enc", mean=[150.0] * 3, std=[30.0] * 3, img_size=16)
    encoder = load_encoder(enc_dir)
    features = extract_features(encoder, ds, "cls")
    x = item["image"].float()[None]
    filled = torch.where(item["mask"][None, None], x, encoder.mean)
    with torch.no_grad():
        torch.testing.assert_close(features[item["index"]], encoder.features(filled, "cls")[0])


def test_image_patches_have_no_mask_key(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / cls / "p.png")
    assert "mask" not in PatchDataset(tmp_path)[0]


def test_band_statistics_ignore_masked_pixels(tmp_path):
    from geossl.evaluation.features import map_dataset
    from geossl.probe.baselines import band_statistics

    data = np.full((1, 4, 4), 10.0, np.float32)
    data[0, 0, :2] = -9999.0  # nodata: must not pull the mean down
    write_patch(tmp_path / "a" / "x.tif", data, nodata=-9999.0)
    write_patch(tmp_path / "b" / "y.tif", np.full((1, 4, 4), 20.0, np.float32), nodata=-9999.0)
    ds = PatchDataset(tmp_path)
    feats = map_dataset(band_statistics, ds, 7, fill=torch.full((1,), torch.nan))
    assert sorted(feats[:, 0].tolist()) == [10.0, 20.0]  # the means, nodata ignored
