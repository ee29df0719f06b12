"""`geossl import-encoder`: checkpoints saved the way each source saves them import to the same outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from geossl.cli import main
from geossl.models.encoder import load_encoder, read_meta

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet, in 0-1 units: --scale 255
IMAGENET = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--scale", "255"]


def small(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()


def normalized(raw: torch.Tensor, mean: list[float], std: list[float], scale: float = 255.0) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1) * scale
    s = torch.tensor(std).view(1, -1, 1, 1) * scale
    return (raw - m) / s


def import_cli(*args: str) -> int:
    return main(["import-encoder", *args])


def assert_same_outputs(source: torch.nn.Module, encoder_dir: Path, size: int, bands: int = 3,
                        mean: list[float] = MEAN, std: list[float] = STD, scale: float = 255.0) -> None:
    """The imported encoder on raw pixels == the source model on the normalised pixels (all tokens too)."""
    encoder = load_encoder(encoder_dir)
    raw = torch.rand(2, bands, size, size) * 255
    with torch.no_grad():
        expected = source.forward_features(normalized(raw, mean, std, scale))
        got = encoder.backbone.forward_features(encoder.normalize(raw))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encoder(raw), expected[:, 0], atol=1e-5, rtol=1e-5)


VIT = {"depth": 2}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_state_dict(tmp_path, suffix):
    source = small("vit_small_patch16_224", img_size=64, **VIT)
    weights = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), weights)
    else:
        safetensors.torch.save_file(source.state_dict(), str(weights))
    out = tmp_path / "enc"
    assert import_cli("--timm", "vit_small_patch16_224", "--weights", str(weights), "--bands", "R,G,B", *IMAGENET,
                      "--img-size", "64", "--timm-kwargs", json.dumps(VIT), "--gsd", "0.6", "--out", str(out)) == 0
    assert_same_outputs(source, out, 64)
    meta = read_meta(out)
    assert meta.bands == ["R", "G", "B"] and meta.gsd == 0.6 and meta.img_size == 64 and meta.patch_size == 16
    assert meta.mean == pytest.approx([m * 255 for m in MEAN]) and meta.extra["import"]["layout"] == "timm"


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_original_dino_training_checkpoint(tmp_path, which):
    """main_dino.py's checkpoint.pth: DDP student ('module.backbone.'), teacher ('backbone.'), heads,
    optimizer state, epoch and the argparse Namespace of its arguments."""
    student, teacher = small("vit_small_patch16_224", 1, img_size=64, **VIT), small("vit_small_patch16_224", 2,
                                                                                      img_size=64, **VIT)
    head = {"head.mlp.0.weight": torch.randn(8, 384), "head.last_layer.weight_g": torch.ones(16, 1)}
    checkpoint = {
        "student": {**{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                    **{f"module.{k}": v for k, v in head.items()}},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=0.0005),
        "dino_loss": {"center": torch.zeros(1, 16)},
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    out = tmp_path / "enc"
    assert import_cli("--timm", "vit_small_patch16_224", "--weights", str(tmp_path / "checkpoint.pth"),
                      "--which", which, "--bands", "R,G,B", *IMAGENET, "--img-size", "64",
                      "--timm-kwargs", json.dumps(VIT), "--out", str(out)) == 0
    assert_same_outputs(teacher if which == "teacher" else student, out, 64)
    assert read_meta(out).extra["import"]["layout"] == f"dino-{which}"


def test_dinov2_original_with_registers(tmp_path):
    """Meta's DINOv2 backbone file: register_tokens, a position embedding with a CLS slot, mask_token."""
    source = small("vit_small_patch14_reg4_dinov2", img_size=56, **VIT)
    state = {k: v for k, v in source.state_dict().items() if k not in ("reg_token", "pos_embed")}
    dim = source.embed_dim
    state["register_tokens"] = source.reg_token.detach().clone()
    # DINOv2 adds pos_embed[:, 0] to the CLS token; timm folds that slot into cls_token.
    slot = torch.randn(1, 1, dim)
    state["pos_embed"] = torch.cat([slot, source.pos_embed.detach()], dim=1)
    state["cls_token"] = source.cls_token.detach() - slot
    source.cls_token.data = state["cls_token"] + slot  # float32 rounding of the round trip, made exact
    state["mask_token"] = torch.zeros(1, dim)
    torch.save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    out = tmp_path / "enc"
    assert import_cli("--timm", "vit_small_patch14_reg4_dinov2", "--weights",
                      str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"), "--bands", "R,G,B", *IMAGENET,
                      "--img-size", "56", "--timm-kwargs", json.dumps(VIT), "--out", str(out)) == 0
    assert_same_outputs(source, out, 56)
    assert read_meta(out).extra["import"]["layout"] == "dinov2"


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3", "vit_small_patch16_dinov3_qkvb"])
def test_dinov3_original(tmp_path, name):
    """Meta's DINOv3 backbone file: storage_tokens, ls1/ls2.gamma, qkv.bias (zero k part) + bias_mask, rope
    periods; the _qkvb variant (the satellite model's) keeps the q and v biases."""
    source = small(name, img_size=64, global_pool="token", **VIT)
    with torch.no_grad():
        for block in source.blocks:  # timm initialises the biases at zero: make them count
            for bias in (getattr(block.attn, "q_bias", None), getattr(block.attn, "v_bias", None)):
                if bias is not None:
                    bias.normal_()
    state = {}
    for key, value in source.state_dict().items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if key.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        state[key] = value
    for i in range(VIT["depth"]):
        attn = source.blocks[i].attn
        q = attn.q_bias.detach() if getattr(attn, "q_bias", None) is not None else torch.zeros(source.embed_dim)
        v = attn.v_bias.detach() if getattr(attn, "v_bias", None) is not None else torch.zeros(source.embed_dim)
        state[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, torch.zeros(source.embed_dim), v])
        state[f"blocks.{i}.attn.qkv.bias_mask"] = torch.ones(3 * source.embed_dim)
    state["mask_token"] = torch.zeros(1, source.embed_dim)
    state["rope_embed.periods"] = torch.arange(16, dtype=torch.float32)
    torch.save(state, tmp_path / "dinov3_vits16_pretrain.pth")
    out = tmp_path / "enc"
    assert import_cli("--timm", name, "--weights", str(tmp_path / "dinov3_vits16_pretrain.pth"),
                      "--bands", "R,G,B", *IMAGENET, "--img-size", "64", "--timm-kwargs", json.dumps(VIT),
                      "--out", str(out)) == 0
    assert_same_outputs(source, out, 64)
    assert read_meta(out).extra["import"]["layout"] == "dinov3"


def test_torchgeo_weights_file_and_metadata(tmp_path):
    """torchgeo's SSL4EO-S12 ViT-S/16: a timm state dict of 13 bands; bands and scaling from torchgeo's enum."""
    source = small("vit_small_patch16_224", in_chans=13, img_size=64, **VIT)
    torch.save(source.state_dict(), tmp_path / "vit_small_patch16_224_sentinel2_all_dino.pth")
    out = tmp_path / "enc"
    assert import_cli("--torchgeo", "ViTSmall16_Weights.SENTINEL2_ALL_DINO", "--weights",
                      str(tmp_path / "vit_small_patch16_224_sentinel2_all_dino.pth"), "--img-size", "64",
                      "--timm-kwargs", json.dumps(VIT), "--out", str(out)) == 0
    meta = read_meta(out)
    assert meta.bands[:4] == ["B1", "B2", "B3", "B4"] and meta.bands[8] == "B8a" and meta.in_chans == 13
    assert meta.mean == [0.0] * 13 and meta.std == [10000.0] * 13  # torchgeo divides by 10,000
    assert_same_outputs(source, out, 64, bands=13, mean=[0.0] * 13, std=[10000.0] * 13, scale=1.0)


def test_patch_size_change_uses_timms_resampling(tmp_path):
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    source = small("vit_small_patch16_224", img_size=64, **VIT)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    out = tmp_path / "enc"
    assert import_cli("--timm", "vit_small_patch16_224", "--weights", str(tmp_path / "vit.pth"), "--bands", "R,G,B",
                      *IMAGENET, "--img-size", "64", "--patch-size", "8", "--timm-kwargs", json.dumps(VIT),
                      "--out", str(out)) == 0
    encoder = load_encoder(out)
    assert encoder.meta.patch_size == 8 and encoder.backbone.patch_embed.grid_size == (8, 8)
    expected = resample_patch_embed(source.patch_embed.proj.weight.detach(), [8, 8])
    torch.testing.assert_close(encoder.backbone.patch_embed.proj.weight, expected)
    expected_pos = resample_abs_pos_embed(source.pos_embed.detach(), (8, 8), (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(encoder.backbone.pos_embed, expected_pos)


def test_rename_bands_of_an_existing_encoder(tmp_path):
    source = small("vit_small_patch16_224", img_size=64, **VIT)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    first, second = tmp_path / "a", tmp_path / "b"
    base = ["--timm", "vit_small_patch16_224", "--weights", str(tmp_path / "vit.pth"), "--bands", "R,G,B", *IMAGENET,
            "--img-size", "64", "--timm-kwargs", json.dumps(VIT)]
    assert import_cli(*base, "--out", str(first)) == 0
    assert import_cli("--from", str(first), "--bands", "B04,B03,B02", "--out", str(second)) == 0
    a, b = read_meta(first), read_meta(second)
    assert b.bands == ["B04", "B03", "B02"] and b.mean == a.mean and b.extra["renamed_bands"]["from"] == ["R", "G", "B"]
    wa = safetensors.torch.load_file(str(first / "model.safetensors"))
    wb = safetensors.torch.load_file(str(second / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # An existing encoder is never replaced silently.
    assert import_cli("--from", str(first), "--bands", "X,Y,Z", "--out", str(second)) == 1
    assert read_meta(second).bands == ["B04", "B03", "B02"]
    assert import_cli("--from", str(first), "--bands", "X,Y,Z", "--out", str(second), "--overwrite") == 0
    assert read_meta(second).bands == ["X", "Y", "Z"]


class RunsCode:
    """A pickle that would run code when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoints_get_one_clear_line(tmp_path, capsys):
    source = small("vit_small_patch16_224", img_size=64, **VIT)
    cases = {}
    torch.save(source.state_dict(), tmp_path / "depth2.pth")
    cases["deeper"] = (["--weights", str(tmp_path / "depth2.pth"), "--timm-kwargs", '{"depth": 3}'],
                       r"missing \d+ keys \(e\.g\. blocks\.2\.")
    torch.save(small("vit_tiny_patch16_224", img_size=64, **VIT).state_dict(), tmp_path / "tiny.pth")
    cases["wrong width"] = (["--weights", str(tmp_path / "tiny.pth"), "--timm-kwargs", json.dumps(VIT)],
                            r"wrong shapes: cls_token \(1, 1, 192\) vs \(1, 1, 384\)")
    marker = tmp_path / "pwned"
    torch.save({"x": RunsCode(marker)}, tmp_path / "evil.pth")
    cases["code"] = (["--weights", str(tmp_path / "evil.pth")], r"evil\.pth: not a loadable weights file")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "depth2.pth").read_bytes()[:5000])
    cases["truncated"] = (["--weights", str(tmp_path / "truncated.pth")], r"truncated\.pth: not a loadable")
    cases["missing"] = (["--weights", str(tmp_path / "nope.pth")], r"nope\.pth: weights file not found")
    cases["band count"] = (["--weights", str(tmp_path / "depth2.pth"), "--timm-kwargs", json.dumps(VIT),
                            "--bands", "R,G,B,NIR", "--mean", "0", "--std", "1"],
                           r"the weights read 3 bands but --bands names 4")
    for name, (extra, pattern) in cases.items():
        args = ["--timm", "vit_small_patch16_224", "--bands", "R,G,B", *IMAGENET, "--img-size", "64",
                "--out", str(tmp_path / f"out-{name}")]
        assert import_cli(*args, *extra) == 1, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert __import__("re").search(pattern, err), (name, err)
        assert not (tmp_path / f"out-{name}" / "geossl.json").exists()
    assert not marker.exists()  # the pickled code never ran


def test_missing_normalisation_and_sources_are_refused(tmp_path, capsys):
    assert import_cli("--timm", "vit_small_patch16_224", "--weights", "x.pth", "--bands", "R,G,B",
                      "--out", str(tmp_path / "o")) == 1
    assert "state the normalisation" in capsys.readouterr().err
    assert import_cli("--bands", "R,G,B", "--out", str(tmp_path / "o")) == 1
    assert "name exactly one source" in capsys.readouterr().err
    assert import_cli("--torchgeo", "ViTSmall16_Weights.NOPE", "--weights", "x", "--out", str(tmp_path / "o")) == 1
    assert "not a torchgeo weights enum member" in capsys.readouterr().err


def test_imported_encoders_serve_probe_features_and_attention(tmp_path):
    """DINOv2 with registers and DINOv3 (timm's Eva class) give probe features of the right size; attention
    maps work with registers and are refused, clearly, for rotary-embedding attention."""
    from geossl.predict.attention import attention_maps

    for name, size in (("vit_small_patch14_reg4_dinov2", 56), ("vit_small_patch16_dinov3", 64)):
        source = small(name, img_size=size, **VIT)
        torch.save(source.state_dict(), tmp_path / f"{name}.pth")
        out = tmp_path / name
        assert import_cli("--timm", name, "--weights", str(tmp_path / f"{name}.pth"), "--bands", "R,G,B", *IMAGENET,
                          "--img-size", str(size), "--timm-kwargs", json.dumps(VIT), "--out", str(out)) == 0
        encoder = load_encoder(out)
        raw = torch.rand(2, 3, size, size) * 255
        with torch.no_grad():
            for recipe in ("cls", "cls_last4", "last4_avgpool_cls"):
                features = encoder.features(raw, recipe)
                assert features.shape == (2, encoder.feature_dim(recipe)) and torch.isfinite(features).all()
            tokens = source.forward_features(encoder.normalize(raw))
            patches = tokens[:, source.num_prefix_tokens:]  # registers are not patches
            torch.testing.assert_close(encoder.features(raw, "cls_avgpool"),
                                       torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1), atol=1e-5, rtol=1e-5)
        if name.endswith("dinov2"):
            maps = attention_maps(encoder, raw)
            assert maps.shape == (2, 6, size // 14, size // 14)
            torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, 6))
        else:
            with pytest.raises(ValueError, match="rotary position embeddings"):
                attention_maps(encoder, raw)
