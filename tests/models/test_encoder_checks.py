"""Encoders with non-finite weights or statistics (or a std <= 0) are refused at export and at load."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from bench.synthetic import make_tiny_encoder
from geossl.models.backbone import backbone_kwargs, create_backbone
from geossl.models.encoder import META_FILE, WEIGHTS_FILE, EncoderMeta, export_encoder, load_encoder


def tiny_backbone_and_meta() -> tuple[torch.nn.Module, EncoderMeta]:
    """The same 1-block ViT-Tiny as ``make_tiny_encoder``, kept in memory so tests can poison it."""
    torch.manual_seed(0)
    kwargs = backbone_kwargs(3, 32, patch_size=8, extra={"depth": 1})
    backbone = create_backbone("vit_tiny_patch16_224", kwargs)
    meta = EncoderMeta(timm_name="vit_tiny_patch16_224", timm_kwargs=kwargs, bands=["B4", "B3", "B2"],
                       mean=[88.0, 97.0, 104.0], std=[52.0, 35.0, 29.0], patch_size=8, img_size=32,
                       embed_dim=backbone.embed_dim, p2=[10.0, 20.0, 30.0], p98=[200.0, 210.0, 220.0])
    return backbone, meta


def test_a_clean_encoder_exports_and_loads(tmp_path: Path) -> None:
    backbone, meta = tiny_backbone_and_meta()
    out = export_encoder(backbone, meta, tmp_path / "enc")
    encoder = load_encoder(out)
    assert encoder(torch.rand(1, 3, 32, 32) * 255).isfinite().all()


@pytest.mark.parametrize("name", ["blocks.0.attn.qkv.weight", "pos_embed"])
def test_export_refuses_a_nan_weight_and_writes_nothing(tmp_path: Path, name: str) -> None:
    backbone, meta = tiny_backbone_and_meta()
    with torch.no_grad():
        backbone.get_parameter(name).view(-1)[3] = float("nan")
    out = tmp_path / "run" / "encoder"
    with pytest.raises(ValueError) as info:
        export_encoder(backbone, meta, out)
    message = str(info.value)
    assert str(out) in message and f"weight '{name}'" in message and "1 non-finite" in message
    assert not out.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("key", "index", "value", "problem"), [
    ("std", 1, 0.0, "'std' is <= 0 for bands ['B3']"),
    ("std", 0, -5.0, "'std' is <= 0 for bands ['B4']"),
    ("std", 2, math.nan, "'std' is not a finite number for bands ['B2']"),
    ("mean", 0, math.inf, "'mean' is not a finite number for bands ['B4']"),
    ("p2", 1, math.nan, "'p2' is not a finite number for bands ['B3']"),
    ("p98", 2, -math.inf, "'p98' is not a finite number for bands ['B2']"),
])
def test_export_refuses_bad_statistics_and_writes_nothing(tmp_path: Path, key: str, index: int, value: float,
                                                          problem: str) -> None:
    backbone, meta = tiny_backbone_and_meta()
    values = list(getattr(meta, key))
    values[index] = value
    out = tmp_path / "enc"
    out.mkdir()  # an existing (empty) folder stays empty
    with pytest.raises(ValueError) as info:
        export_encoder(backbone, dataclasses.replace(meta, **{key: values}), out)
    assert str(out) in str(info.value) and problem in str(info.value)
    assert list(out.iterdir()) == []


def test_load_refuses_a_zero_std_naming_the_description(tmp_path: Path) -> None:
    enc = make_tiny_encoder(tmp_path / "enc")
    data = json.loads((enc / META_FILE).read_text())
    data["std"][1] = 0.0
    (enc / META_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        load_encoder(enc)
    assert str(enc / META_FILE) in str(info.value) and "'std' is <= 0 for bands ['B3']" in str(info.value)
    with pytest.raises(ValueError, match="'std' is <= 0"):  # the random-init baseline reads the same statistics
        load_encoder(f"random:{enc}")


def test_load_refuses_nan_statistics_written_as_json_nan(tmp_path: Path) -> None:
    enc = make_tiny_encoder(tmp_path / "enc")
    data = json.loads((enc / META_FILE).read_text())
    data["mean"][0] = float("nan")  # Python's json writes (and reads back) a bare NaN
    (enc / META_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"geossl\.json: unusable encoder: 'mean' is not a finite number"):
        load_encoder(enc)


def test_load_refuses_a_nan_weight_naming_the_file(tmp_path: Path) -> None:
    enc = make_tiny_encoder(tmp_path / "enc")
    weights = enc / WEIGHTS_FILE
    state = safetensors.torch.load_file(str(weights))
    state["cls_token"].view(-1)[0] = float("inf")
    safetensors.torch.save_file(state, str(weights))
    with pytest.raises(ValueError) as info:
        load_encoder(enc)
    assert str(weights) in str(info.value) and "weight 'cls_token' has 1 non-finite value(s)" in str(info.value)
    # random:<dir> never reads the weights, so the baseline of a broken run still builds.
    assert load_encoder(f"random:{enc}").meta.bands == ["B4", "B3", "B2"]


def test_cli_reports_a_poisoned_encoder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geossl.cli import main

    enc = make_tiny_encoder(tmp_path / "enc")
    state = safetensors.torch.load_file(str(enc / WEIGHTS_FILE))
    state["norm.weight"][:] = float("nan")
    safetensors.torch.save_file(state, str(enc / WEIGHTS_FILE))
    rc = main(["import-encoder", "--from", str(enc), "--bands", "R,G,B", "--out", str(tmp_path / "renamed")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "norm.weight" in err and str(enc / WEIGHTS_FILE) in err
    assert not (tmp_path / "renamed").exists()
