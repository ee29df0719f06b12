"""DINO self-attention maps: where the last block's CLS token looks, per head, over a tile.

timm's attention usually runs fused (``scaled_dot_product_attention``), which never materialises
the attention matrix. A forward pre-hook on the last block's ``attn`` captures its input (the block's
``norm1`` output); we recompute q and k from the module's own ``qkv`` projection (and q/k norms), and
``softmax(q k^T * scale)``. The CLS row over the patch tokens is renormalised to sum to 1 per head
(the mass CLS puts on itself and on register tokens is dropped), so heads compare on one scale.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from geossl.models.encoder import Encoder
from geossl.plotting import save_png
from geossl.predict.maps import percentiles, stretch_rgb

if TYPE_CHECKING:
    from timm.models.vision_transformer import Attention


def _last_attention(encoder: Encoder) -> Attention:
    if not isinstance(encoder.backbone, VisionTransformer):  # e.g. Eva (DINOv3): RoPE is applied inside attention
        raise ValueError(f"{encoder.meta.timm_name}: attention maps are read from timm VisionTransformer blocks; "
                         f"{type(encoder.backbone).__name__} applies rotary position embeddings inside its attention")
    blocks = getattr(encoder.backbone, "blocks", None)
    if blocks is None or not len(blocks) or not hasattr(blocks[-1], "attn") or not hasattr(blocks[-1].attn, "qkv"):
        raise ValueError(f"{encoder.meta.timm_name}: no timm ViT attention block (blocks[-1].attn.qkv) to read")
    # timm's Attention (or a look-alike with its qkv, q_norm/k_norm, num_heads and scale): what we read of it.
    return cast("Attention", blocks[-1].attn)


def grid_size(encoder: Encoder, height: int, width: int) -> tuple[int, int]:
    p = encoder.meta.patch_size
    return height // p, width // p


@torch.inference_mode()
def attention_maps(encoder: Encoder, image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """CLS-to-patch attention of the last block: (B, heads, H/p, W/p), each map summing to 1.

    ``image`` is raw pixels (C, H, W) or (B, C, H, W) in the encoder's bands; any band count, any
    size that is a multiple of the patch size (extra pixels are cropped, as the patch embedding does).
    """
    x = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
    if x.ndim == 3:
        x = x[None]
    gh, gw = grid_size(encoder, x.shape[-2], x.shape[-1])
    if gh < 1 or gw < 1:
        raise ValueError(f"image of {tuple(x.shape[-2:])} px is smaller than one {encoder.meta.patch_size} px patch")
    p = encoder.meta.patch_size
    x = x[..., : gh * p, : gw * p].to(next(encoder.parameters()).device)
    attn = _last_attention(encoder)
    captured: list[torch.Tensor] = []
    handle = attn.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        encoder(x)
    finally:
        handle.remove()
    tokens = captured[-1].float()  # (B, N, D): input of the last attention = norm1(x)
    b, n, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = torch.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)  # (B, heads, N, N)
    prefix = n - gh * gw
    if prefix < 1:
        raise ValueError(f"unexpected token count {n} for a {gh}x{gw} patch grid")
    cls_row = weights[:, :, 0, prefix:]
    cls_row = cls_row / cls_row.sum(dim=-1, keepdim=True)
    return cls_row.reshape(b, attn.num_heads, gh, gw).cpu()


def rgb_indices(n_bands: int, rgb_bands: Sequence[int] | None) -> list[int]:
    """0-based bands to render: ``rgb_bands`` (1-based) or the first three (one band: greyscale)."""
    if rgb_bands is None:
        return list(range(min(3, n_bands))) if n_bands >= 3 else [0]
    bad = [b for b in rgb_bands if not 1 <= b <= n_bands]
    if len(rgb_bands) not in (1, 3) or bad:
        raise ValueError(f"--rgb-bands: need 1 or 3 band numbers in 1..{n_bands}, got {list(rgb_bands)}")
    return [b - 1 for b in rgb_bands]


def write_attention_png(
    out_png: str | os.PathLike[str],
    image: np.ndarray,
    maps: torch.Tensor,
    rgb: Sequence[int],
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """The tile in RGB, the head-mean map and every head's map over the tile (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = np.asarray(image, dtype=np.float32)[list(rgb)]
    if low is None or high is None:
        low, high = percentiles(bands)
    rgb_img = stretch_rgb(bands, low, high)
    heads = maps.numpy()
    h, w = rgb_img.shape[:2]
    panels = [("tile", None), ("mean of heads", heads.mean(axis=0))] + [(f"head {i}", m) for i, m in enumerate(heads)]
    ncols = min(len(panels), 5)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, amap) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(rgb_img, extent=(0, w, h, 0), interpolation="nearest")
        if amap is not None:
            norm = (amap - amap.min()) / max(float(amap.max() - amap.min()), 1e-12)
            ax.imshow(norm, extent=(0, w, h, 0), cmap="inferno", alpha=0.65, interpolation="nearest")
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, Path(out_png))
