"""Tiny random models and large synthetic scenes, for benchmarks and tests of the prediction code.

Both are built in seconds without network or training: the benchmark of bounded memory needs a scene
far larger than RAM-friendly arrays, written strip by strip so that making it is itself bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine

from geossl.models.backbone import backbone_kwargs, create_backbone
from geossl.models.encoder import EncoderMeta, export_encoder
from geossl.models.landcover import LinearHead, save_landcover_model

RGB_MEAN = [0.3444 * 255, 0.3803 * 255, 0.4078 * 255]  # EuroSAT RGB statistics in 0-255 units
RGB_STD = [0.2027 * 255, 0.1369 * 255, 0.1156 * 255]
EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]


def make_tiny_encoder(
    out_dir: str | Path, in_chans: int = 3, *, bands: Sequence[str] | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, gsd: float | None = None,
    img_size: int = 32, patch_size: int = 8, depth: int = 1, seed: int = 0,
    p2: Sequence[float] | None = None, p98: Sequence[float] | None = None,
) -> Path:
    """A randomly initialised 1-block ViT-Tiny exported as an encoder folder."""
    torch.manual_seed(seed)
    kwargs = backbone_kwargs(in_chans, img_size, patch_size=patch_size, extra={"depth": depth})
    backbone = create_backbone("vit_tiny_patch16_224", kwargs)
    default_bands = ["B4", "B3", "B2"] if in_chans == 3 else [f"band_{i + 1}" for i in range(in_chans)]
    meta = EncoderMeta(
        timm_name="vit_tiny_patch16_224", timm_kwargs=kwargs, bands=list(bands or default_bands),
        mean=list(mean or (RGB_MEAN if in_chans == 3 else [1000.0] * in_chans)),
        std=list(std or (RGB_STD if in_chans == 3 else [500.0] * in_chans)),
        patch_size=patch_size, img_size=img_size, embed_dim=backbone.embed_dim, gsd=gsd,
        p2=list(p2) if p2 else None, p98=list(p98) if p98 else None, feature_recipe="cls",
    )
    return export_encoder(backbone, meta, out_dir)


def make_tiny_model(
    out_dir: str | Path, in_chans: int = 3, classes: Sequence[str] = EUROSAT_CLASSES, seed: int = 0, **kwargs: object
) -> Path:
    """An encoder (see :func:`make_tiny_encoder`) plus a random linear head, saved as a model folder."""
    out_dir = Path(out_dir)
    enc_dir = make_tiny_encoder(out_dir.parent / f".{out_dir.name}-encoder", in_chans, seed=seed, **kwargs)  # type: ignore[arg-type]
    dim = 192
    head = LinearHead(dim, len(classes))
    torch.manual_seed(seed + 1)
    head.set_standardization(torch.randn(64, dim))
    torch.nn.init.normal_(head.linear.weight, std=0.3)
    return save_landcover_model(enc_dir, head, list(classes), "cls", out_dir, {"synthetic": True})


def write_synthetic_scene(
    path: str | Path, width: int, height: int, count: int = 3, *, res: float = 10.0,
    origin: tuple[float, float] = (500000.0, 5000000.0), crs: str = "EPSG:32632", nodata: float | None = 0,
    border: int = 0, block: int = 512, dtype: str = "uint8",
) -> Path:
    """A tiled, deflate-compressed GeoTIFF with smooth fields (compressible), written one block row at a time.

    ``border`` pixels along the left and top edges are set to ``nodata`` (like a Landsat scene's
    collar), so tests can check that the map is nodata there.
    """
    path = Path(path)
    transform = Affine(res, 0.0, origin[0], 0.0, -res, origin[1])
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, tiled=True, blockxsize=block, blockysize=block,
                   compress="deflate", BIGTIFF="IF_SAFER")
    x = np.arange(width, dtype=np.int64)
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, height, block):
            h = min(block, height - row0)
            y = np.arange(row0, row0 + h, dtype=np.int64)[:, None]
            field = ((x[None] // 97) * 37 + (y // 83) * 53) % 200
            strip = np.empty((count, h, width), dtype=dtype)
            for b in range(count):
                strip[b] = np.minimum(field + 30 + 15 * b, 255).astype(dtype)  # never wraps to nodata 0
            if border and nodata is not None:
                strip[:, :, :border] = nodata
                if row0 < border:
                    strip[:, : border - row0] = nodata
            dst.write(strip, window=rasterio.windows.Window(0, row0, width, h))
    return path
