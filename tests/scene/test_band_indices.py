"""An encoder trained on a band subset (data.bands) records it; classify/embed default to those bands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dino_helpers import TINY

from geossl.config import load_config
from geossl.dino.train import pretrain
from geossl.models.encoder import EncoderMeta, read_meta
from geossl.scene.bands import resolve_bands


def meta_with(band_indices: list[int] | None) -> EncoderMeta:
    return EncoderMeta(timm_name="vit_tiny_patch16_224", timm_kwargs={"in_chans": 3}, bands=["r", "g", "b"],
                       mean=[0.0] * 3, std=[1.0] * 3, patch_size=8, img_size=32, embed_dim=48,
                       band_indices=band_indices)


def test_resolve_bands_defaults_to_the_training_band_subset():
    assert resolve_bands(meta_with([1, 2, 3]), 4, "naip.tif") == [1, 2, 3]
    assert resolve_bands(meta_with([4, 3, 2]), 13, "s2.tif") == [4, 3, 2]
    assert resolve_bands(meta_with([1, 2, 3]), 4, "naip.tif", bands=[2, 3, 4]) == [2, 3, 4]  # explicit wins
    with pytest.raises(ValueError, match="has 4 bands, the model expects 3"):
        resolve_bands(meta_with(None), 4, "naip.tif")
    with pytest.raises(ValueError, match="has 2 bands"):
        resolve_bands(meta_with([1, 2, 3]), 2, "two.tif")  # the subset does not fit this file


def test_naip_encoder_on_three_of_four_bands_embeds_the_scene_without_bands(tmp_path: Path, scenes_dir: Path):
    from geossl.cli import main

    scene = scenes_dir / "naip_5m_north_dakota_2019.tif"
    cfg = load_config(None, [*TINY, "data.kind=scenes", f"data.paths=[{scene}]", "data.bands=[1, 2, 3]",
                             "data.tiles_per_epoch=16", "optim.epochs=1", "data.split=null"])
    pretrain(cfg, tmp_path / "run")
    assert read_meta(tmp_path / "run" / "encoder").band_indices == [1, 2, 3]
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--encoder", str(tmp_path / "run" / "encoder"), "--input", str(scene), "--out", str(out),
                 "--stride", "128"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows > 10
    assert json.loads((tmp_path / "run" / "encoder" / "geossl.json").read_text())["band_indices"] == [1, 2, 3]
