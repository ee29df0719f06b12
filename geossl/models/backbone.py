"""timm ViT backbones for any band count and mixed crop sizes."""

from __future__ import annotations

from typing import Any, cast

import timm
import torch
import torch.nn as nn
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer

from geossl.config_checks import ConfigError, check_timm_kwargs


def backbone_kwargs(
    in_chans: int,
    img_size: int,
    patch_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The exact ``timm.create_model`` keyword arguments; recorded in exports so plain timm can rebuild it.

    ``dynamic_img_size`` lets one ViT take global and local crops of different sizes (DINO multi-crop);
    ``num_classes=0`` makes the forward return the pooled CLS embedding.
    """
    kwargs: dict[str, Any] = {
        "in_chans": int(in_chans),
        "img_size": int(img_size),
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    if patch_size is not None:
        kwargs["patch_size"] = int(patch_size)
    kwargs.update(extra or {})
    return kwargs


# the arguments backbone_kwargs sets from the data and crops: never the culprit of a bad model.extra
GEOSSL_KWARGS = ("in_chans", "img_size", "num_classes", "dynamic_img_size")


def create_backbone(arch: str, kwargs: dict[str, Any], drop_path_rate: float = 0.0,
                    key: str = "key 'model.extra.{key}'") -> nn.Module:
    """Create a randomly initialised timm ViT; never downloads weights.

    ``key`` names where the arguments were written (``{key}``: the argument): a config's ``model.extra``,
    an encoder's ``geossl.json`` or ``--timm-kwargs``. A refused argument (``pretrained``) or one timm
    cannot use (``depth: six``, which timm reports as a TypeError deep inside) is one ConfigError line
    naming it, not a traceback.
    """
    if not arch.startswith(("vit_", "deit", "eva")):
        raise ValueError(f"model.arch: {arch!r} is not a timm ViT (expected e.g. vit_small_patch16_224)")
    check_timm_kwargs(kwargs, key)
    try:
        return timm.create_model(arch, pretrained=False, drop_path_rate=drop_path_rate, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"model.arch: timm cannot create {arch!r} ({_first_line(exc)})") from None
    except (TypeError, ValueError, AssertionError) as exc:
        culprit = _culprit(arch, kwargs)
        names = [k for k in kwargs if k not in GEOSSL_KWARGS]
        where = key.format(key=culprit or "{" + ", ".join(names) + "}")
        given = f"{culprit}={kwargs[culprit]!r}" if culprit else ", ".join(f"{k}={kwargs[k]!r}" for k in names)
        raise ConfigError(f"{where}: timm cannot build {arch!r} with {given} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _culprit(arch: str, kwargs: dict[str, Any]) -> str | None:
    """The first argument that alone stops timm from building ``arch`` (tried on the meta device: no
    memory, milliseconds), or None when only a combination fails (e.g. embed_dim with num_heads)."""
    def builds(**overrides: Any) -> bool:
        try:
            with torch.device("meta"):
                timm.create_model(arch, pretrained=False, **{**base, **overrides})
        except Exception:  # noqa: BLE001 (any failure counts against the argument tried)
            return False
        return True

    base = {k: v for k, v in kwargs.items() if k in GEOSSL_KWARGS}
    if not builds():  # the arch cannot be built on the meta device at all: no argument can be blamed
        return None
    return next((name for name, value in kwargs.items() if name not in GEOSSL_KWARGS and not builds(**{name: value})),
                None)


def check_maskable(vit: nn.Module) -> None:
    """Refuse backbones :func:`forward_features_masked` cannot serve (iBOT needs one token per patch)."""
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"loss.ibot_weight: masked-patch training needs a timm VisionTransformer, got "
                         f"{type(vit).__name__} (set loss.ibot_weight=0 or use e.g. vit_small_patch16_224)")
    if not isinstance(vit.patch_drop, nn.Identity):
        raise ValueError("loss.ibot_weight: patch dropout reorders tokens, so masked patches cannot be matched; "
                         "drop patch_drop_rate from model.extra")


def forward_features_masked(
    vit: VisionTransformer, x: torch.Tensor, mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm's ``VisionTransformer.forward_features`` with masked patch embeddings replaced (iBOT, BEiT).

    ``mask``: (B, n_patches) bool, row-major over the patch grid (True = replace by ``mask_token``, a
    (1, D) tensor). The token is substituted after the patch embedding and BEFORE the position
    embedding, as iBOT and DINOv2 do, so the model knows where the hidden patch was. timm ViTs have
    no mask token; keeping it outside the backbone keeps the exported state dict plain timm.
    With ``mask`` None (or all False) the result equals ``vit.forward_features(x)`` exactly.
    Returns (B, prefix + n_patches, D) tokens after the final norm.
    """
    x = vit.patch_embed(x)  # (B, H, W, D) with dynamic_img_size, else (B, N, D)
    if mask is not None:
        if mask_token is None:
            raise ValueError("a mask needs a mask_token")
        keep_shape = x.shape[:-1]
        x = torch.where(mask.reshape(keep_shape).unsqueeze(-1), mask_token.to(x.dtype).view(-1), x)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    if vit.grad_checkpointing and not torch.jit.is_scripting():
        x = checkpoint_seq(vit.blocks, x)
    else:
        x = vit.blocks(x)
    return vit.norm(x)


def effective_patch_size(backbone: nn.Module) -> int:
    """Input pixels per token side: the patch size, times the stem's stride in a conv-stem hybrid
    (timm's ``HybridEmbed`` counts its patch size in feature-map cells)."""
    embed = cast(nn.Module, backbone.patch_embed)
    # A plain attribute (int or pair), not a submodule: nn.Module.__getattr__ types it Tensor | Module.
    size = cast(int | tuple[int, ...] | list[int], embed.patch_size)
    patch = size[0] if isinstance(size, tuple | list) else size
    ratio = getattr(embed, "feature_ratio", (1, 1))
    return int(patch) * int(ratio[0] if isinstance(ratio, tuple | list) else ratio)
