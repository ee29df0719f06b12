"""DINO attention maps: the hook-and-recompute result equals timm's own attention matrix; PNGs for 3/13 bands."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.synthetic import make_tiny_encoder
from geossl.cli import main
from geossl.models.encoder import load_encoder
from geossl.predict import attention_maps


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("att")
    return {
        "rgb": make_tiny_encoder(root / "rgb", 3, img_size=64, depth=2),
        "ms": make_tiny_encoder(root / "ms", 13, img_size=64, depth=2, mean=[1500.0] * 13, std=[1000.0] * 13),
    }


@pytest.mark.parametrize("which,shape", [("rgb", (2, 3, 64, 64)), ("ms", (1, 13, 48, 64))])
def test_attention_matches_timm_unfused_attention(encoders: dict[str, Path], which: str, shape: tuple) -> None:
    encoder = load_encoder(encoders[which])
    torch.manual_seed(0)
    x = torch.rand(shape) * 3000 if which == "ms" else torch.randint(0, 256, shape).float()
    maps = attention_maps(encoder, x)
    b, _, h, w = shape
    attn = encoder.backbone.blocks[-1].attn
    assert maps.shape == (b, attn.num_heads, h // 8, w // 8)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(b, attn.num_heads))
    # Reference: timm's non-fused path materialises softmax(q k^T) and passes it through attn_drop.
    seen: list[torch.Tensor] = []
    attn.fused_attn = False
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.inference_mode():
            encoder(x)
    finally:
        handle.remove()
        attn.fused_attn = True
    cls_row = seen[-1][:, :, 0, encoder.backbone.num_prefix_tokens:]
    expected = (cls_row / cls_row.sum(-1, keepdim=True)).reshape(maps.shape)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(maps[:, 0], maps[:, 1])  # heads differ: the per-head split is real


@pytest.mark.slow
@pytest.mark.parametrize("which,tile,rgb", [
    ("rgb", "eurosat-rgb/Forest/Forest_1.jpg", []),
    ("ms", "eurosat-ms/Forest/Forest_1019.tif", ["--rgb-bands", "4,3,2"]),
])
def test_attention_png_for_3_and_13_bands(shared_data: Path, encoders: dict[str, Path], tmp_path: Path,
                                          which: str, tile: str, rgb: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "attention.png"
    code = main(["attention", "--encoder", str(encoders[which]), "--input", str(shared_data / tile),
                 "--out", str(out), *rgb])
    assert code == 0, capsys.readouterr().err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "3 heads on a 8x8 patch grid" in capsys.readouterr().out
    assert main(["attention", "--encoder", str(encoders[which]), "--input", str(shared_data / tile),
                 "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["attention", "--encoder", str(encoders[which]), "--input", str(shared_data / tile),
                 "--out", str(tmp_path / "b.png"), "--rgb-bands", "1,2,99"]) == 1
    assert "--rgb-bands" in capsys.readouterr().err
