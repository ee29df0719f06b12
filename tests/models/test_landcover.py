"""Land-cover model folders: save/load round-trip, and the errors classify users will see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from encoder_helpers import make_encoder

from geossl.models.encoder import load_encoder
from geossl.models.landcover import LandCoverModel, LinearHead, load_landcover_model, save_landcover_model


def _head(in_features: int, k: int) -> LinearHead:
    head = LinearHead(in_features, k)
    torch.manual_seed(1)
    head.set_standardization(torch.randn(50, in_features) * 3 + 1)
    torch.nn.init.normal_(head.linear.weight)
    return head


def test_roundtrip_identical_logits(tmp_path: Path) -> None:
    enc_dir = make_encoder(tmp_path / "enc")
    encoder = load_encoder(enc_dir)
    head = _head(encoder.feature_dim("cls_last4"), 4)
    classes = ["Forest", "River", "SeaLake", "Highway"]
    out = save_landcover_model(enc_dir, head, classes, "cls_last4", tmp_path / "model", {"lr": 0.1})
    assert sorted(p.name for p in out.iterdir()) == ["geossl.json", "head.json", "head.safetensors", "model.safetensors"]
    info = json.loads((out / "head.json").read_text())
    assert info["format"] == "geossl-landcover-head" and info["in_features"] == 4 * 192 and info["probe"] == {"lr": 0.1}

    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    reference = LandCoverModel(encoder, head, classes, "cls_last4").eval()
    model = load_landcover_model(out)
    assert isinstance(model, LandCoverModel) and model.classes == classes and model.feature_recipe == "cls_last4"
    assert model.meta.bands == ["B4", "B3", "B2"] and model.meta.img_size == 64
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        p = model.predict_proba(x)
    assert p.shape == (3, 4) and torch.allclose(p.sum(1), torch.ones(3))
    # The model folder is itself a loadable encoder.
    assert load_encoder(out).meta.embed_dim == 192


def test_load_errors(tmp_path: Path) -> None:
    enc_dir = make_encoder(tmp_path / "enc")
    with pytest.raises(FileNotFoundError, match=r"has no head.*run geossl probe"):
        load_landcover_model(enc_dir)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_landcover_model(tmp_path / "nowhere")

    model_dir = save_landcover_model(enc_dir, _head(768, 3), ["a", "b", "c"], "cls_last4", tmp_path / "m", {})
    (model_dir / "geossl.json").unlink()
    with pytest.raises(FileNotFoundError, match="geossl.json"):
        load_landcover_model(model_dir)

    # head.json claims a different recipe: feature size no longer matches the encoder.
    model_dir = save_landcover_model(enc_dir, _head(768, 3), ["a", "b", "c"], "cls_last4", tmp_path / "m2", {})
    info = json.loads((model_dir / "head.json").read_text())
    info["feature_recipe"] = "cls"
    (model_dir / "head.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"head\.json: head takes 768 features but the encoder gives 192"):
        load_landcover_model(model_dir)

    # Weights for 2 classes, head.json lists 3.
    model_dir = save_landcover_model(enc_dir, _head(768, 3), ["a", "b", "c"], "cls_last4", tmp_path / "m3", {})
    safetensors.torch.save_file(_head(768, 2).state_dict(), str(model_dir / "head.safetensors"))
    with pytest.raises(ValueError, match=r"head\.safetensors: tensor shapes"):
        load_landcover_model(model_dir)


def test_save_checks(tmp_path: Path) -> None:
    enc_dir = make_encoder(tmp_path / "enc")
    with pytest.raises(ValueError, match="2 outputs for 3 classes"):
        save_landcover_model(enc_dir, _head(768, 2), ["a", "b", "c"], "cls_last4", tmp_path / "m", {})
    with pytest.raises(FileNotFoundError, match="encoder file missing"):
        save_landcover_model(tmp_path / "nothing", _head(768, 2), ["a", "b"], "cls_last4", tmp_path / "m", {})
    assert not (tmp_path / "m").exists()
