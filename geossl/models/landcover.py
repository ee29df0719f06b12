"""The land-cover model: an exported encoder plus a head on its frozen features.

A model folder holds the encoder's own files (``model.safetensors``, ``geossl.json``, copied unchanged
so the folder is also a valid encoder) plus ``head.safetensors`` and ``head.json``. The head carries
the train-set feature mean/std as buffers, so a model is self-contained: raw pixels in, logits out.

Two head types: a :class:`LinearHead` on a feature recipe's vector (``head.json`` without a ``"head"``
key, as every folder before attentive heads), or an :class:`AttentiveHead` (``"head": "attentive"``,
``"feature_recipe": "tokens"``) on the last block's CLS + patch tokens (``geossl probe --head attentive``).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn

from geossl.choices import FEATURE_RECIPES, HEAD_TYPES
from geossl.io import atomic_path, atomic_write_json, read_json
from geossl.models.encoder import META_FILE, WEIGHTS_FILE, Encoder, EncoderMeta, load_encoder

HEAD_FORMAT = "geossl-landcover-head"
HEAD_VERSION = 2  # the newest head.json this geossl reads; linear folders are still written as version 1
LINEAR_HEAD_VERSION = 1  # version 2 = an attentive head (older geossl then says "newer than this geossl reads")
TOKENS_RECIPE = "tokens"  # the "feature recipe" of an attentive head: CLS + patch tokens of the last block
TOKENS_DESCRIPTION = "last block tokens after the final norm: CLS then the patch tokens (register tokens dropped)"
HEAD_WEIGHTS = "head.safetensors"
HEAD_META = "head.json"
DENSE_WEIGHTS = "dense_head.safetensors"  # optional: the per-patch head of ``geossl probe --dense``


class _ClassifierHead(nn.Module):
    """What every land-cover head ends in: a ``linear`` layer to the classes (its sizes are the head's)."""

    linear: nn.Linear

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def num_classes(self) -> int:
        return self.linear.out_features


class LinearHead(_ClassifierHead):
    """Standardise features with train-set statistics, then one Linear layer.

    Standardising inside the module (not in the data pipeline) means the saved head applies exactly
    the transform it was trained with, and one learning-rate sweep suits any encoder's feature scale.
    """

    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.linear = nn.Linear(in_features, num_classes)

    def set_standardization(self, features: torch.Tensor) -> None:
        """Take mean/std from the train features (std floored so constant features do not blow up)."""
        self.mean.copy_(features.float().mean(dim=0))
        self.std.copy_(features.float().std(dim=0, unbiased=False).clamp_min(1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features.float() - self.mean) / self.std)


def default_num_heads(embed_dim: int) -> int:
    """Attention heads of 64 dims each (as ViTs use): the largest count <= embed_dim // 64 dividing embed_dim."""
    n = max(1, embed_dim // 64)
    while embed_dim % n:
        n -= 1
    return n


class AttentiveHead(_ClassifierHead):
    """Attentive probe (V-JEPA / AIM): one learned query cross-attends over frozen tokens, then LayerNorm + Linear.

    Input: tokens (B, N, D), the encoder's last-block CLS + patch tokens (:func:`last_block_tokens`),
    standardised per dimension with train-set mean/std buffers (as :class:`LinearHead` does, so one
    learning-rate sweep suits any encoder's token scale). The attention is a ``torch.nn.MultiheadAttention``
    (its parameters and state-dict keys, ``attn.in_proj_weight`` ...), evaluated in a factorised form that is
    exactly equal for a single query: per head ``softmax(q K^T / sqrt(d)) V`` with ``K = X Wk^T + bk`` and
    ``V = X Wv^T + bv`` equals ``softmax(X (Wk^T q) / sqrt(d)) X Wv^T + bv`` (``q . bk`` is the same for every
    token, so it cancels in the softmax, and the attention weights sum to 1). No (B, N, D) key or value
    projection is ever formed: about D / heads times fewer operations, which keeps CPU probes cheap.
    """

    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int | None = None) -> None:
        super().__init__()
        num_heads = num_heads or default_num_heads(embed_dim)
        if embed_dim % num_heads:
            raise ValueError(f"attentive head: {num_heads} heads do not divide embed_dim {embed_dim}")
        self.register_buffer("mean", torch.zeros(embed_dim))
        self.register_buffer("std", torch.ones(embed_dim))
        self.query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)
        self.linear = nn.Linear(embed_dim, num_classes)

    @property
    def num_heads(self) -> int:
        return self.attn.num_heads

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension mean/std of the train tokens (std floored so a constant dimension does not blow up)."""
        self.mean.copy_(mean.float())
        self.std.copy_(std.float().clamp_min(1e-6))

    def standardize(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens.float() - self.mean) / self.std

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The query's attention output (B, D) over raw ``tokens`` (B, N, D)."""
        return self.pool_standardized(self.standardize(tokens))

    def pool_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """The query's attention output (B, D) over tokens already standardised with the head's mean/std."""
        x = x.float()
        d, h = self.in_features, self.num_heads
        dh = d // h
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, _, b_v = self.attn.in_proj_bias.chunk(3)
        q = (self.query.reshape(d) @ w_q.T + b_q).view(h, dh)  # the projected query, per head
        u = torch.einsum("hc,hcd->hd", q, w_k.view(h, dh, d)) / math.sqrt(dh)  # Wk^T q per head: (H, D)
        attn = torch.softmax(x @ u.T, dim=1)  # (B, N, H): over the tokens
        mixed = torch.einsum("bnh,bnd->bhd", attn, x)  # attention-weighted tokens, per head: (B, H, D)
        v = torch.einsum("bhd,hcd->bhc", mixed, w_v.view(h, dh, d)) + b_v.view(h, dh)
        return self.attn.out_proj(v.reshape(-1, d))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_standardized(self.standardize(tokens))

    def forward_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from tokens already standardised (what the probe stores, to standardise once, not per step)."""
        return self.linear(self.norm(self.pool_standardized(x)))


def last_block_tokens(encoder: Encoder, x_raw: torch.Tensor) -> torch.Tensor:
    """What an attentive head reads: the last block's CLS then patch tokens after the final norm, (B, 1 + N, D)."""
    ((patches, cls),) = encoder.tokens(x_raw, 1)
    return torch.cat([cls.unsqueeze(1), patches], dim=1)


class LandCoverModel(nn.Module):
    """Raw pixel values (B, C, H, W) -> land-cover logits (B, K), with the encoder frozen in eval mode."""

    def __init__(self, encoder: Encoder, head: nn.Module, classes: list[str], feature_recipe: str,
                 dense_head: LinearHead | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.classes = list(classes)
        self.feature_recipe = feature_recipe
        self.dense_head = dense_head  # per-patch head on the last block's patch tokens, when probed with --dense
        self.source: Path | None = None  # the model folder it was loaded from (for messages)

    @property
    def meta(self) -> EncoderMeta:
        return self.encoder.meta

    def forward(self, x_raw: torch.Tensor) -> torch.Tensor:
        if self.feature_recipe == TOKENS_RECIPE:  # an attentive head reads the tokens, not a feature vector
            return self.head(last_block_tokens(self.encoder, x_raw))
        return self.head(self.encoder.features(x_raw, self.feature_recipe))

    def predict_proba(self, x_raw: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x_raw), dim=-1)

    def predict_patch_proba(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Per-patch class probabilities (B, K, H // p, W // p) from the dense head on the patch tokens."""
        if self.dense_head is None:
            raise ValueError("this land-cover model has no dense head: rerun `geossl probe --dense`")
        tokens = self.encoder.patch_grid(x_raw)  # (B, h, w, D)
        return torch.softmax(self.dense_head(tokens.flatten(0, 2)), dim=-1).reshape(
            *tokens.shape[:3], -1).permute(0, 3, 1, 2)


def _copy_atomic(src: Path, dst: Path) -> None:
    if dst.exists() and dst.resolve() == src.resolve():
        return
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        shutil.copyfile(src, tmp)


def save_landcover_model(
    encoder_dir: Path,
    head: nn.Module,
    classes: list[str],
    feature_recipe: str,
    out_dir: Path,
    probe_info: dict[str, Any],
    dense_head: nn.Module | None = None,
    dense_info: dict[str, Any] | None = None,
) -> Path:
    """Write a model folder: encoder files copied in, then ``head.safetensors`` (and ``dense_head.safetensors``
    with a dense head), ``head.json`` last.

    ``head.json`` is written last (atomically) so a folder with a head.json is always complete; it names
    the dense head under ``"dense"`` (readers without dense support ignore the key). A stale dense head of
    an earlier probe into the same folder is removed, so the folder never mixes two probes.

    An :class:`AttentiveHead` (``feature_recipe`` must then be ``"tokens"``) adds ``"head": "attentive"``
    and ``"attentive"`` (what rebuilds it: heads, queries) to head.json, whose version is then 2; a linear
    head's head.json is exactly as before (version 1, no ``"head"`` key).
    """
    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    if str(encoder_dir).startswith("random:"):
        raise ValueError(f"{encoder_dir}: export the random-init encoder first; a model needs its weights on disk")
    for name in (WEIGHTS_FILE, META_FILE):
        if not (encoder_dir / name).exists():
            raise FileNotFoundError(f"{encoder_dir / name}: encoder file missing, cannot build a land-cover model")
    attentive = isinstance(head, AttentiveHead)
    if attentive and feature_recipe != TOKENS_RECIPE:
        raise ValueError(f"an attentive head reads the encoder's tokens: feature_recipe must be {TOKENS_RECIPE!r}, "
                         f"got {feature_recipe!r}")
    if not attentive and feature_recipe not in FEATURE_RECIPES:
        raise ValueError(f"unknown feature recipe {feature_recipe!r} (choose from {FEATURE_RECIPES})")
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    weight = state.get("linear.weight")
    if weight is None or weight.ndim != 2:
        raise ValueError("head: expected a LinearHead or AttentiveHead (state dict with 'linear.weight')")
    if weight.shape[0] != len(classes):
        raise ValueError(f"head: {weight.shape[0]} outputs for {len(classes)} classes {classes}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, META_FILE):
        _copy_atomic(encoder_dir / name, out_dir / name)
    dense_state = _dense_state(dense_head, len(classes))
    with atomic_path(out_dir / HEAD_WEIGHTS, suffix=".safetensors") as tmp:
        safetensors.torch.save_file(state, str(tmp), metadata={"format": "pt"})
    if dense_state is not None:
        with atomic_path(out_dir / DENSE_WEIGHTS, suffix=".safetensors") as tmp:
            safetensors.torch.save_file(dense_state, str(tmp), metadata={"format": "pt"})
    info: dict[str, Any] = {
        "format": HEAD_FORMAT,
        "version": HEAD_VERSION if attentive else LINEAR_HEAD_VERSION,
        "classes": list(classes),
        "feature_recipe": feature_recipe,
        "in_features": int(weight.shape[1]),
        "probe": probe_info,
    }
    if attentive:
        info["head"] = "attentive"
        info["attentive"] = {"num_heads": head.num_heads, "queries": 1, "tokens": TOKENS_DESCRIPTION}
    if dense_state is not None:
        info["dense"] = {"weights": DENSE_WEIGHTS, "in_features": int(dense_state["linear.weight"].shape[1]),
                         "tokens": "last block patch tokens after the final norm", "probe": dense_info or {}}
    atomic_write_json(out_dir / HEAD_META, info)
    if dense_state is None:
        (out_dir / DENSE_WEIGHTS).unlink(missing_ok=True)
    return out_dir


def _dense_state(dense_head: nn.Module | None, n_classes: int) -> dict[str, torch.Tensor] | None:
    if dense_head is None:
        return None
    state = {k: v.detach().cpu().contiguous() for k, v in dense_head.state_dict().items()}
    weight = state.get("linear.weight")
    if weight is None or weight.ndim != 2 or weight.shape[0] != n_classes:
        raise ValueError(f"dense head: expected a LinearHead with {n_classes} outputs")
    return state


MODEL_FILES = (WEIGHTS_FILE, META_FILE, HEAD_WEIGHTS, HEAD_META, DENSE_WEIGHTS)  # what a model's outputs depend on


def model_hash(path: str | Path) -> str:
    """``sha256:<hex>`` of the files of a model folder that decide its predictions (encoder and head weights
    and descriptions, the dense head when present), each with its name.

    Maps record it (the classify manifest) so a rerun can tell "the same model" from "a retrained model
    saved into the same folder": the folder's path and modification times say neither.
    """
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        file = Path(path) / name
        if not file.is_file():
            continue
        digest.update(f"{name}\0".encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def load_landcover_model(path: Path, device: str | torch.device = "cpu") -> LandCoverModel:
    """Load a model folder written by ``geossl probe``; errors name the folder/file and what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: land-cover model folder not found")
    head_json, head_weights = path / HEAD_META, path / HEAD_WEIGHTS
    if not head_json.exists() or not head_weights.exists():
        missing = HEAD_META if not head_json.exists() else HEAD_WEIGHTS
        raise FileNotFoundError(f"model folder {path} has no head ({missing} missing): run geossl probe")
    info = read_json(head_json)
    if not isinstance(info, dict) or info.get("format") != HEAD_FORMAT:
        raise ValueError(f"{head_json}: not a land-cover head description (format={info.get('format')!r})")
    if int(info.get("version", 0)) > HEAD_VERSION:
        raise ValueError(f"{head_json}: version {info['version']} is newer than this geossl reads ({HEAD_VERSION})")
    for key in ("classes", "feature_recipe", "in_features"):
        if key not in info:
            raise ValueError(f"{head_json}: missing key {key!r}")
    classes, recipe = list(info["classes"]), str(info["feature_recipe"])
    head_type = info.get("head", "linear")  # absent: a linear head (every folder written before attentive heads)
    if head_type not in HEAD_TYPES:
        raise ValueError(f"{head_json}: unknown head type {head_type!r} (this geossl reads {list(HEAD_TYPES)})")
    if (head_type == "attentive") != (recipe == TOKENS_RECIPE):
        raise ValueError(f"{head_json}: head {head_type!r} with feature recipe {recipe!r} (an attentive head "
                         f"and only it reads {TOKENS_RECIPE!r})")
    encoder = load_encoder(path, device=device)  # names geossl.json / model.safetensors on errors
    if head_type == "attentive":
        expected = encoder.meta.embed_dim
    else:
        try:
            expected = encoder.feature_dim(recipe)
        except (KeyError, ValueError):
            raise ValueError(f"{head_json}: unknown feature recipe {recipe!r} (choose from {FEATURE_RECIPES})") from None
    if int(info["in_features"]) != expected:
        what = "token dims" if head_type == "attentive" else "features"
        raise ValueError(
            f"{head_json}: head takes {info['in_features']} {what} but the encoder gives {expected} "
            f"for recipe {recipe!r}"
        )
    try:
        state = safetensors.torch.load_file(str(head_weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{head_weights}: unreadable safetensors file ({exc})") from None
    head: nn.Module = (_attentive_head(head_json, info, expected, len(classes)) if head_type == "attentive"
                       else LinearHead(expected, len(classes)))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != shapes:
        raise ValueError(
            f"{head_weights}: tensor shapes {got} do not match {len(classes)} classes x {expected} features {shapes}"
        )
    head.load_state_dict(state, strict=True)
    dense = _load_dense_head(path, info, encoder.meta.embed_dim, len(classes))
    model = LandCoverModel(encoder, head, classes, recipe, dense).to(device)
    model.source = path
    model.eval()
    return model


def _attentive_head(head_json: Path, info: dict[str, Any], embed_dim: int, n_classes: int) -> AttentiveHead:
    """An untrained :class:`AttentiveHead` of the shape head.json's ``"attentive"`` entry describes."""
    entry = info.get("attentive")
    if not isinstance(entry, dict) or not isinstance(entry.get("num_heads"), int) or entry["num_heads"] < 1:
        raise ValueError(f"{head_json}: an attentive head needs 'attentive': {{'num_heads': <int >= 1>, ...}}, "
                         f"got {entry!r}")
    if int(entry.get("queries", 1)) != 1:
        raise ValueError(f"{head_json}: attentive head with {entry['queries']} queries (this geossl reads 1)")
    if embed_dim % entry["num_heads"]:
        raise ValueError(f"{head_json}: {entry['num_heads']} attention heads do not divide the encoder's "
                         f"{embed_dim} token dims")
    return AttentiveHead(embed_dim, n_classes, entry["num_heads"])


def _load_dense_head(path: Path, info: dict[str, Any], embed_dim: int, n_classes: int) -> LinearHead | None:
    """The dense head named by head.json's ``"dense"`` entry; None for folders probed without --dense."""
    entry = info.get("dense")
    if entry is None:
        return None
    head_json, weights = path / HEAD_META, path / DENSE_WEIGHTS
    if not isinstance(entry, dict):
        raise ValueError(f"{head_json}: 'dense' must be an object, got {type(entry).__name__}")
    if not weights.is_file():
        raise FileNotFoundError(f"{head_json}: names a dense head but {weights} is missing")
    if int(entry.get("in_features", -1)) != embed_dim:
        raise ValueError(f"{head_json}: dense head takes {entry.get('in_features')} features, the encoder's "
                         f"patch tokens have {embed_dim}")
    try:
        state = safetensors.torch.load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{weights}: unreadable safetensors file ({exc})") from None
    head = LinearHead(embed_dim, n_classes)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != {k: tuple(v.shape) for k, v in head.state_dict().items()}:
        raise ValueError(f"{weights}: tensor shapes {got} do not match {n_classes} classes x {embed_dim} features")
    head.load_state_dict(state, strict=True)
    return head
