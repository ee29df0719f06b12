"""Prediction: classify tiles and whole scenes into tables and maps, embed tiles, draw attention maps.

The Python API mirrors the commands (``geossl classify``, ``embed``, ``attention``); each function
takes a loaded model/encoder or the path of its folder::

    from geossl.predict import classify_scene, classify_tiles, embed, attention_maps
    result = classify_scene("runs/probe/model", "scene.tif", "maps/", stride=32, bands=[1, 2, 3])
    print(result.summary())

Note: ``geossl.predict.embed`` is the function below; its module is ``geossl.predict.embed``'s
``embed_inputs`` (import it as ``from geossl.predict.embed import embed_inputs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossl.devices import pick_device
from geossl.models.encoder import Encoder, load_encoder
from geossl.models.landcover import LandCoverModel, load_landcover_model
from geossl.predict.attention import attention_maps as _attention_maps
from geossl.predict.embed import EmbedResult, embed_inputs
from geossl.predict.scene import SceneResult
from geossl.predict.scene import classify_scene as _classify_scene
from geossl.predict.tiles import TilesResult, image_inputs
from geossl.predict.tiles import classify_tiles as _classify_tiles

__all__ = ["classify_scene", "classify_tiles", "embed", "attention_maps", "SceneResult", "TilesResult",
           "EmbedResult"]

PathLike = str | Path


def _model(model: LandCoverModel | PathLike, device: str | None) -> LandCoverModel:
    if isinstance(model, LandCoverModel):
        return model
    return load_landcover_model(Path(model), device=pick_device(device))


def _encoder(encoder: Encoder | LandCoverModel | PathLike, device: str | None) -> Encoder:
    if isinstance(encoder, LandCoverModel):
        return encoder.encoder
    if isinstance(encoder, Encoder):
        return encoder
    return load_encoder(Path(encoder), device=pick_device(device))


def classify_scene(model: LandCoverModel | PathLike, scene: str, out_dir: PathLike, *, device: str | None = None,
                   **options: Any) -> SceneResult:
    """Sliding-window class map of one scene: ``<scene>_classes.tif`` (COG), tiles GeoJSON, preview PNG.

    Options: tile_size, stride, bands (1-based), resample (None = auto), batch_size, min_valid, probs,
    geojson, preview, overwrite, check_stats, progress, blend (mean|hann), tta, probs_dtype (float32|uint8),
    rescale (None|percentile), stac, model_path, dense (one cell per ViT patch from the model's dense head,
    see :mod:`geossl.predict.dense`) (see :func:`geossl.predict.scene.classify_scene`).
    """
    if not isinstance(model, LandCoverModel):
        options.setdefault("model_path", model)  # linked from the STAC Item
    return _classify_scene(_model(model, device), str(scene), out_dir, **options)


def classify_tiles(model: LandCoverModel | PathLike, inputs: PathLike | Sequence[PathLike], out_dir: PathLike, *,
                   device: str | None = None, **options: Any) -> TilesResult:
    """Classify tile files (folders, globs, s3:// allowed): ``predictions.csv`` and ``predictions.geojson``."""
    uris = image_inputs([str(i) for i in inputs] if isinstance(inputs, list | tuple) else str(inputs))
    return _classify_tiles(_model(model, device), uris, out_dir, **options)


def embed(encoder: Encoder | LandCoverModel | PathLike, inputs: PathLike | Sequence[PathLike], out: PathLike, *,
          device: str | None = None, **options: Any) -> EmbedResult:
    """One embedding per tile / scene window into a (Geo)Parquet file (see ``embed_inputs`` for options)."""
    uris = image_inputs([str(i) for i in inputs] if isinstance(inputs, list | tuple) else str(inputs))
    return embed_inputs(_encoder(encoder, device), uris, out, **options)


def attention_maps(encoder: Encoder | LandCoverModel | PathLike, image: torch.Tensor | np.ndarray, *,
                   device: str | None = None) -> torch.Tensor:
    """Last-block CLS attention per head over the patch grid: (B, heads, H/p, W/p), each map sums to 1."""
    return _attention_maps(_encoder(encoder, device), image)
