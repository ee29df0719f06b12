"""The exported encoder: ``model.safetensors`` + ``geossl.json``, loadable with plain timm.

A folder ``encoder/`` holds the backbone weights (safetensors, no pickles) and a JSON that says how to
rebuild it (``timm.create_model(meta["timm_name"], **meta["timm_kwargs"])``) and what inputs it
expects (bands, per-band statistics in raw pixel units, patch and image size, ground sample distance).
:class:`Encoder` wraps the backbone with that normalisation, so users feed raw pixel values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
import torch.nn as nn

from geossl.choices import FEATURE_RECIPES
from geossl.io import atomic_path, atomic_write_json
from geossl.models.backbone import create_backbone

FORMAT = "geossl-encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "geossl.json"


@dataclass
class EncoderMeta:
    """What an exported encoder is and what inputs it expects."""

    timm_name: str
    timm_kwargs: dict[str, Any]
    bands: list[str]  # band names (or "band_<i>"), in the order the model reads them
    mean: list[float]  # per-band statistics in raw pixel units (what the files hold)
    std: list[float]
    patch_size: int
    img_size: int
    embed_dim: int
    gsd: float | None = None  # metres per pixel of the training data, when known
    p2: list[float] | None = None  # 2nd/98th percentiles: for RGB renderings of any band count
    p98: list[float] | None = None
    feature_recipe: str = "cls_last4"  # what probes use by default
    # 1-based bands of the training files it read (data.bands), when a subset: classify/embed default to
    # them for files with more bands whose descriptions do not name the model's bands.
    band_indices: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: config, steps, epochs

    @property
    def in_chans(self) -> int:
        return int(self.timm_kwargs["in_chans"])

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "geossl.json") -> EncoderMeta:
        if data.get("format") != FORMAT:
            raise ValueError(f"{source}: not a geossl encoder description (format={data.get('format')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ValueError(f"{source}: missing keys {missing}")
        meta = cls(**{k: v for k, v in data.items() if k in names})
        n = meta.in_chans
        for key in ("bands", "mean", "std"):
            if len(getattr(meta, key)) != n:
                raise ValueError(f"{source}: '{key}' has {len(getattr(meta, key))} entries, the model reads {n} bands")
        return meta


class Encoder(nn.Module):
    """A ViT backbone plus the per-band normalisation it was trained with.

    ``forward`` takes raw pixel values (B, C, H, W) in the units of the training files and returns the
    final CLS embedding; :meth:`features` returns the probe features of a named recipe.
    """

    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, meta: EncoderMeta) -> None:
        super().__init__()
        self.backbone = backbone
        self.meta = meta
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-6))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Per-band standardisation, cropped to whole patches.

        A tile whose sides are not multiples of the patch size (a 63 px crop, an odd scene edge) loses its
        last partial row/column of patches, as DINOv2 and our attention maps do; timm would assert.
        A tile smaller than one patch is a clear error."""
        if x.ndim != 4 or x.shape[1] != self.meta.in_chans:
            raise ValueError(
                f"encoder expects {self.meta.in_chans} bands {self.meta.bands}, got input of shape {tuple(x.shape)}"
            )
        p = self.meta.patch_size
        h, w = x.shape[-2] // p * p, x.shape[-1] // p * p
        if h == 0 or w == 0:
            raise ValueError(f"input of {x.shape[-2]}x{x.shape[-1]} px is smaller than one {p} px patch of the encoder")
        return (x[..., :h, :w].float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def tokens(self, x: torch.Tensor, n_last: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(patch tokens (B, N, D), CLS (B, D)) of the last ``n_last`` blocks, after the final norm.

        timm's ``forward_intermediates`` serves every ViT family geossl imports (VisionTransformer, hybrids,
        and the Eva class of DINOv3, which has no ``get_intermediate_layers``); register tokens are dropped."""
        # A timm method nn.Module's typing cannot see; with prefix tokens it returns (patches, prefix) pairs.
        forward_intermediates = cast(
            Callable[..., list[tuple[torch.Tensor, torch.Tensor]]], self.backbone.forward_intermediates
        )
        outs = forward_intermediates(
            self.normalize(x), indices=n_last, return_prefix_tokens=True, norm=True, output_fmt="NLC",
            intermediates_only=True,
        )
        return [(patches, prefix[:, 0]) for patches, prefix in outs]

    def patch_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's normalised patch tokens on their grid: (B, H // p, W // p, D), p = ``meta.patch_size``.

        ``meta.patch_size`` counts input pixels per token (a conv-stem hybrid's stem stride included), so
        token (i, j) describes pixels ``[i p, (i + 1) p) x [j p, (j + 1) p)``: what dense maps rely on; a
        backbone whose token count disagrees with that grid is an error, not a silently shifted map."""
        p = self.meta.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        ((patches, _),) = self.tokens(x, 1)
        if patches.shape[1] != h * w:
            raise ValueError(f"{self.meta.timm_name}: {patches.shape[1]} patch tokens for a {h}x{w} grid of "
                             f"{p} px patches (geossl.json patch_size is wrong for this backbone)")
        return patches.reshape(patches.shape[0], h, w, patches.shape[-1])

    def features(self, x: torch.Tensor, recipe: str | None = None) -> torch.Tensor:
        """Frozen features for probes: ``cls``, ``cls_last4`` (DINO ViT-S protocol), ``cls_avgpool`` (DINO ViT-B)
        or ``last4_avgpool_cls`` (both for the last 4 blocks: small ViTs on small tiles keep much of what
        they know in the patch tokens). The final block's CLS is always the last (or only first) part."""
        recipe = recipe or self.meta.feature_recipe
        if recipe == "cls":
            return self.forward(x)
        if recipe == "cls_last4":
            return torch.cat([cls for _, cls in self.tokens(x, self._last_n())], dim=-1)
        if recipe == "cls_avgpool":
            ((patches, cls),) = self.tokens(x, 1)
            return torch.cat([cls, patches.mean(dim=1)], dim=-1)
        if recipe == "last4_avgpool_cls":  # mean patch token of each of the last 4 blocks, then their CLS
            outs = self.tokens(x, self._last_n())
            return torch.cat([p.mean(dim=1) for p, _ in outs] + [cls for _, cls in outs], dim=-1)
        raise ValueError(f"unknown feature recipe {recipe!r} (choose from {FEATURE_RECIPES})")

    def _last_n(self) -> int:
        """The last 4 blocks (DINO's ViT-S protocol), or all of them in a shallower ViT."""
        return min(4, len(cast(nn.Sequential | nn.ModuleList, self.backbone.blocks)))

    def feature_dim(self, recipe: str | None = None) -> int:
        recipe = recipe or self.meta.feature_recipe
        if recipe not in FEATURE_RECIPES:
            raise ValueError(f"unknown feature recipe {recipe!r} (choose from {FEATURE_RECIPES})")
        return self.meta.embed_dim * {"cls": 1, "cls_last4": self._last_n(), "cls_avgpool": 2,
                                     "last4_avgpool_cls": 2 * self._last_n()}[recipe]


def meta_problems(meta: EncoderMeta) -> list[str]:
    """What is wrong with an encoder's statistics: non-finite mean/std/p2/p98, or a std <= 0.

    A NaN statistic turns every input into NaN features; a zero std divides by zero (the clamp in
    :class:`Encoder` only hides it as a 1e6 gain). Either way the encoder is unusable, silently.
    """
    def band(i: int) -> str:
        return meta.bands[i] if i < len(meta.bands) else f"#{i}"

    def finite(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    problems = []
    for key in ("mean", "std", "p2", "p98"):
        bad = [band(i) for i, v in enumerate(getattr(meta, key) or []) if not finite(v)]
        if bad:
            problems.append(f"'{key}' is not a finite number for bands {bad}")
    low = [band(i) for i, v in enumerate(meta.std) if finite(v) and v <= 0]
    if low:
        problems.append(f"'std' is <= 0 for bands {low} (a constant band cannot be normalised)")
    return problems


def weight_problems(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point weights holding NaN/inf (a diverged run or a corrupted file)."""
    problems = []
    for name, tensor in state.items():
        if tensor.is_floating_point():
            n_bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if n_bad:
                problems.append(f"weight '{name}' has {n_bad} non-finite value(s) of {tensor.numel()}")
    return problems


def _joined(problems: list[str], limit: int = 3) -> str:
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def export_encoder(backbone: nn.Module, meta: EncoderMeta, out_dir: str | Path) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/geossl.json`` atomically (weights first).

    Non-finite weights or statistics are refused before anything is written: an encoder folder that
    exists is one that works, so a diverged run never leaves a plausible-looking export behind.
    """
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    problems = meta_problems(meta) + weight_problems(state)
    if problems:
        raise ValueError(f"{out_dir}: refusing to export the encoder: {_joined(problems)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        safetensors.torch.save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_json(out_dir / META_FILE, meta.to_json())
    return out_dir


def read_meta(path: str | Path) -> EncoderMeta:
    """Read ``geossl.json`` of an encoder (or land-cover model) folder, naming the file on errors."""
    path = Path(path)
    meta_path = path / META_FILE if path.is_dir() else path
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: encoder description missing (expected {META_FILE} in {path})")
    try:
        data = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        hint = "" if path.is_dir() else f"; give the encoder's folder (holding {META_FILE})"
        raise ValueError(f"{meta_path}: not valid JSON ({exc}){hint}") from None
    return EncoderMeta.from_json(data, str(meta_path))


def load_encoder(path: str | Path, device: str | torch.device = "cpu", random_init: bool = False) -> Encoder:
    """Load an exported encoder folder; ``random_init=True`` builds the same architecture untrained.

    A path of the form ``random:<dir>`` is the same as ``random_init=True`` (the probe's baseline).
    """
    text = str(path)
    if text.startswith("random:"):
        path, random_init = text[len("random:") :], True
    path = Path(path)
    meta = read_meta(path)
    if problems := meta_problems(meta):
        raise ValueError(f"{path / META_FILE if path.is_dir() else path}: unusable encoder: {_joined(problems)}")
    where = str(path / META_FILE if path.is_dir() else path).replace("{", "{{").replace("}", "}}")
    backbone = create_backbone(meta.timm_name, meta.timm_kwargs, key=where + ": timm_kwargs.{key}")
    if not random_init:
        weights = path / WEIGHTS_FILE
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: encoder weights missing")
        try:
            state = safetensors.torch.load_file(str(weights))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{weights}: unreadable safetensors file ({exc})") from None
        if problems := weight_problems(state):
            raise ValueError(f"{weights}: unusable encoder: {_joined(problems)}")
        try:
            backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{weights}: weights do not match {meta.timm_name} {meta.timm_kwargs}: {exc}") from None
    encoder = Encoder(backbone, meta).to(device)
    encoder.eval()
    return encoder
