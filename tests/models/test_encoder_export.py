"""The exported encoder loads with plain timm + safetensors, and with geossl.load_encoder, identically."""

import json

import pytest
import safetensors.torch
import timm
import torch
from dino_helpers import make_patch_folder, tiny_config

import geossl
from geossl.dino.train import pretrain
from geossl.models.encoder import read_meta


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    data, stats = make_patch_folder(tmp / "patches", n_per_class=8)
    summary = pretrain(tiny_config(data, stats, ["optim.epochs=1", "data.gsd=10.0"]), tmp / "run")
    return tmp / "run" / "encoder", summary


def test_plain_timm_and_safetensors_load_the_encoder(exported):
    encoder_dir, summary = exported
    assert summary["encoder_dir"] == str(encoder_dir)
    meta = json.loads((encoder_dir / "geossl.json").read_text())
    model = timm.create_model(meta["timm_name"], pretrained=False, **meta["timm_kwargs"])
    model.load_state_dict(safetensors.torch.load_file(str(encoder_dir / "model.safetensors")))
    model.eval()

    raw = torch.rand(2, 3, 32, 32) * 255
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        plain = model((raw - mean) / std)
        ours = geossl.load_encoder(encoder_dir)(raw)
    torch.testing.assert_close(plain, ours)
    assert plain.shape == (2, meta["embed_dim"])


def test_metadata_describes_the_inputs(exported):
    encoder_dir, _ = exported
    meta = read_meta(encoder_dir)
    assert meta.in_chans == 3 and meta.bands == ["r", "g", "b"] and meta.mean == [115.0] * 3
    assert meta.patch_size == 8 and meta.img_size == 32 and meta.gsd == 10.0
    assert meta.timm_kwargs["dynamic_img_size"] is True and meta.timm_kwargs["num_classes"] == 0
    assert meta.extra["steps"] == 2  # 16 patches / batch 8, 1 epoch


def test_exported_weights_are_the_teacher(exported):
    """DINO evaluates (and we export) the EMA teacher, not the student."""
    from geossl.dino.checkpoint import load_checkpoint_file

    encoder_dir, _ = exported
    state = load_checkpoint_file(encoder_dir.parent / "checkpoints" / "last.ckpt")["state_dict"]
    weights = safetensors.torch.load_file(str(encoder_dir / "model.safetensors"))
    key = "pos_embed"
    assert torch.equal(weights[key], state[f"model.teacher.backbone.{key}"])
    assert not torch.equal(weights[key], state[f"model.student.backbone.{key}"])


def test_missing_or_broken_encoder_files(exported, tmp_path):
    import shutil

    encoder_dir, _ = exported
    broken = tmp_path / "enc"
    shutil.copytree(encoder_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"enc/model.safetensors: unreadable safetensors file"):
        geossl.load_encoder(broken)
    (broken / "geossl.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"enc/geossl.json: encoder description missing"):
        geossl.load_encoder(broken)
