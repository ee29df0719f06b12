"""External or existing weights -> a geossl encoder: import, rename bands, adapt bands and sizes.

The three steps are separate functions so the CLI (``geossl import-encoder``) and continued pretraining
(``geossl pretrain --init``) share them: :func:`import_weights` reads a checkpoint into a timm model,
:func:`adapt_encoder` moves an encoder to other bands (by name), patch size or image size, and
:func:`rename_bands` only corrects the band names an encoder records.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import timm

from geossl.models.backbone import backbone_kwargs, create_backbone, effective_patch_size
from geossl.models.bands import (
    BandMapping,
    adapt_input_weight,
    check_unique,
    input_conv,
    map_bands,
    standardized_weight,
)
from geossl.models.checkpoints import (
    checkpoint_in_chans,
    load_exactly,
    read_weights_file,
    to_model_state,
    unwrap_checkpoint,
)
from geossl.models.encoder import Encoder, EncoderMeta

# timm constructor arguments that geossl sets itself (the rest of timm_kwargs is the architecture).
MANAGED_KWARGS = ("in_chans", "img_size", "num_classes", "dynamic_img_size", "patch_size")


@dataclass
class Normalization:
    """What the weights expect: per-band mean/std in raw pixel units (optionally 2nd/98th percentiles)."""

    mean: list[float]
    std: list[float]
    p2: list[float] | None = None
    p98: list[float] | None = None

    @classmethod
    def scaled(cls, mean: list[float], std: list[float], scale: float, n_bands: int) -> Normalization:
        """``mean``/``std`` stated in units of raw/``scale`` (e.g. ImageNet's 0-1 values, scale 255);
        one value stands for every band."""
        def expand(values: list[float], name: str) -> list[float]:
            if len(values) == 1:
                values = values * n_bands
            if len(values) != n_bands:
                raise ValueError(f"--{name}: {len(values)} values for {n_bands} bands")
            return [float(v) * scale for v in values]

        out = cls(expand(mean, "mean"), expand(std, "std"))
        if min(out.std) <= 0:
            raise ValueError("--std: every standard deviation must be > 0")
        return out

    @classmethod
    def from_stats(cls, stats: Any, n_bands: int, source: str) -> Normalization:
        if stats.count != n_bands:
            raise ValueError(f"{source}: statistics of {stats.count} bands for a model reading {n_bands}")
        return cls(list(stats.mean), list(stats.std), list(stats.p2), list(stats.p98))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _import_kwargs(timm_name: str, n_bands: int, img_size: int | None, patch_size: int | None,
                   extra: dict[str, Any] | None) -> dict[str, Any]:
    """Constructor arguments for an imported model: the CLS token as its output (DINO's embedding;
    timm's DINOv3 models pool by average by default), the model's own image size unless told."""
    if img_size is None:
        img_size = 224
        if timm.is_model(timm_name):  # a registered model's pretrained cfg has an input_size (C, H, W)
            img_size = int(cast(tuple[int, ...], timm.get_pretrained_cfg_value(timm_name, "input_size"))[-1])
    return backbone_kwargs(n_bands, img_size, patch_size, {"global_pool": "token", **(extra or {})})


def import_weights(
    timm_name: str, weights: str | Path, bands: list[str], norm: Normalization, *,
    img_size: int | None = None, patch_size: int | None = None, timm_kwargs: dict[str, Any] | None = None,
    which: str = "teacher", gsd: float | None = None, feature_recipe: str = "cls_last4",
) -> Encoder:
    """Read ``weights`` (any supported layout) into ``timm_name`` reading ``bands``; exact or an error."""
    check_unique(bands, "--bands")
    kwargs = _import_kwargs(timm_name, len(bands), img_size, patch_size, timm_kwargs)
    backbone = create_backbone(timm_name, kwargs, key="--timm-kwargs: {key}")
    state, layout = unwrap_checkpoint(read_weights_file(weights), which)
    state = to_model_state(state, backbone)
    conv_name, _ = input_conv(backbone, len(bands))
    n_file = checkpoint_in_chans(state, f"{conv_name}.weight")
    if n_file != len(bands):
        raise ValueError(f"{weights}: the weights read {n_file} bands but --bands names {len(bands)} ({','.join(bands)})")
    load_exactly(backbone, state, str(weights))
    meta = EncoderMeta(
        timm_name=timm_name, timm_kwargs=kwargs, bands=list(bands), mean=norm.mean, std=norm.std,
        patch_size=effective_patch_size(backbone), img_size=int(kwargs["img_size"]),
        embed_dim=int(cast(int, backbone.num_features)), gsd=gsd, p2=norm.p2, p98=norm.p98,
        feature_recipe=feature_recipe,
        extra={"import": {"weights": str(Path(weights).resolve()), "sha256": file_sha256(weights),
                          "layout": layout, "which": which if layout.startswith("dino-") else None}},
    )
    return _eval(Encoder(backbone, meta))


def rename_bands(encoder: Encoder, bands: list[str]) -> Encoder:
    """The same weights and statistics, with the band names corrected (same count, same order)."""
    check_unique(bands, "--bands")
    if len(bands) != encoder.meta.in_chans:
        raise ValueError(f"--bands names {len(bands)} bands but the encoder reads {encoder.meta.in_chans} "
                         f"({','.join(encoder.meta.bands)})")
    meta = dataclasses.replace(encoder.meta, bands=list(bands), extra=dict(encoder.meta.extra))
    meta.extra["renamed_bands"] = {"from": list(encoder.meta.bands), "to": list(bands)}
    return _eval(Encoder(encoder.backbone, meta))


def adapt_encoder(
    encoder: Encoder, *, bands: list[str] | None = None, norm: Normalization | None = None,
    img_size: int | None = None, patch_size: int | None = None, new_bands: str = "zero",
    extra_kwargs: dict[str, Any] | None = None,
) -> tuple[Encoder, BandMapping | None]:
    """``encoder`` moved to other ``bands`` (matched by name, see :mod:`geossl.models.bands`), patch or image
    size (timm's resampling of patch and position embeddings). ``norm`` gives the target bands' statistics
    (required when the bands change: each kept band's filter then sees its z-score in the new data's units).
    ``extra_kwargs`` are timm arguments to change besides (e.g. ``global_pool``)."""
    meta = encoder.meta
    mapping = map_bands(meta.bands, bands) if bands is not None else None
    if mapping is not None and mapping.identity:
        mapping = None
    if mapping is not None and norm is None:
        raise ValueError("changing the bands needs the new bands' statistics (--stats, or --mean and --std)")
    target_bands = list(bands) if mapping is not None and bands is not None else list(meta.bands)
    if norm is not None and len(norm.mean) != len(target_bands):
        raise ValueError(f"statistics of {len(norm.mean)} bands for {len(target_bands)} target bands")
    kwargs = dict(meta.timm_kwargs)
    kwargs.update(extra_kwargs or {})
    kwargs["in_chans"] = len(target_bands)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    if patch_size is not None:
        kwargs["patch_size"] = int(patch_size)
    backbone = create_backbone(meta.timm_name, kwargs, key="--timm-kwargs: {key}")
    state = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    if mapping is not None:
        conv_name, source_conv = input_conv(encoder.backbone, meta.in_chans)
        key = f"{conv_name}.weight"
        state[key] = adapt_input_weight(standardized_weight(state[key], source_conv), mapping, new_bands)
    load_exactly(backbone, to_model_state(state, backbone), f"{meta.timm_name} adapted")
    norm = norm or Normalization(list(meta.mean), list(meta.std), meta.p2, meta.p98)
    new_meta = dataclasses.replace(
        meta, timm_kwargs=kwargs, bands=target_bands, mean=norm.mean, std=norm.std, p2=norm.p2, p98=norm.p98,
        patch_size=effective_patch_size(backbone), img_size=int(kwargs["img_size"]), extra=dict(meta.extra),
    )
    if mapping is not None:
        new_meta.extra["band_adaptation"] = {**mapping.to_json(), "new_bands": new_bands}
    return _eval(Encoder(backbone, new_meta)), mapping


def architecture_of(meta: EncoderMeta) -> dict[str, Any]:
    """The ``model`` config values that rebuild ``meta``'s architecture (arch, patch_size, extra)."""
    return {
        "arch": meta.timm_name,
        "patch_size": meta.timm_kwargs.get("patch_size"),
        "extra": {k: v for k, v in meta.timm_kwargs.items() if k not in MANAGED_KWARGS},
    }


def _eval(encoder: Encoder) -> Encoder:
    encoder.eval()
    return encoder


