"""Reading ViT weights saved by other projects into a timm model, safely and with clear errors.

Supported layouts (detected from the keys, reported by name):

- ``timm``: a plain timm ``state_dict`` (timm, torchgeo's weight files, DINO's released backbones);
- ``dino-teacher`` / ``dino-student``: the original DINO training checkpoint (``teacher``/``student``
  dicts with ``backbone.`` or DDP's ``module.backbone.`` prefixes and a ``head.``); the teacher by default,
  as DINO evaluates it;
- ``dinov2`` / ``dinov3``: Meta's original backbone files (``mask_token``, ``register_tokens``,
  ``storage_tokens``, ``ls1.gamma`` ...), converted by timm's own checkpoint filter of the target model;
- wrappers: ``model``, ``state_dict``, ``module.`` and Lightning ``state_dict`` prefixes are unwrapped.

Files are safetensors or PyTorch pickles loaded with ``weights_only=True`` (the only non-tensor object
allowed is ``argparse.Namespace``, which DINO saves as its ``args``): a pickle that would run code is refused.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from geossl.choices import CHECKPOINT_WEIGHTS

TensorDict = dict[str, torch.Tensor]
# Prefixes that wrap a backbone's keys in training checkpoints, tried in this order.
WRAPPER_PREFIXES = ("module.backbone.", "backbone.", "module.", "model.backbone.", "encoder.", "model.")


def read_weights_file(path: str | Path) -> dict[str, Any]:
    """The raw contents of a safetensors file or a PyTorch checkpoint (never executes pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return dict(safetensors.torch.load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{path}: unreadable safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code, RuntimeError/EOFError for broken files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable weights file (weights_only=True refused or failed: {first})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(content).__name__}")
    return content


def _tensors(mapping: dict[str, Any]) -> TensorDict:
    return {k: v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def unwrap_checkpoint(content: dict[str, Any], which: str = "teacher") -> tuple[TensorDict, str]:
    """The backbone tensors of a checkpoint and the name of the layout they came in."""
    if which not in CHECKPOINT_WEIGHTS:
        raise ValueError(f"--which: expected 'teacher' or 'student', got {which!r}")
    layout = "timm"
    if isinstance(content.get("teacher"), dict) or isinstance(content.get("student"), dict):
        if not isinstance(content.get(which), dict):
            raise ValueError(f"the checkpoint has no '{which}' weights (keys: {sorted(content)[:8]})")
        content, layout = content[which], f"dino-{which}"
    for key in ("model_ema", "model", "state_dict", "module"):
        if isinstance(content.get(key), dict):
            content = content[key]
    state = _tensors(content)
    if not state:
        raise ValueError("the checkpoint holds no tensors")
    for prefix in WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    if layout == "timm" and "storage_tokens" in state:
        layout = "dinov3"
    elif layout == "timm" and "mask_token" in state:
        layout = "dinov2"
    return state, layout


def _drop_heads(state: TensorDict, model: nn.Module) -> TensorDict:
    """Training heads (DINO's projection head, a classifier) are not part of a num_classes=0 backbone."""
    own = set(model.state_dict())
    return {k: v for k, v in state.items() if not (k.startswith(("head.", "fc_norm.")) and k not in own)}


def to_model_state(state: TensorDict, model: nn.Module) -> TensorDict:
    """Convert ``state`` to ``model``'s keys and sizes with timm's own filter for that model family
    (renames DINOv2/DINOv3 keys, resamples patch and position embeddings to the model's sizes)."""
    module = importlib.import_module(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    state = dict(state)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except (KeyError, RuntimeError, ValueError, AttributeError) as exc:
            raise ValueError(f"timm's {module.__name__}.checkpoint_filter_fn cannot convert these weights "
                             f"for {type(model).__name__}: {exc}") from None
    return _drop_heads(state, model)


def load_exactly(model: nn.Module, state: TensorDict, source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error naming it."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong[:3])}")
    if problems:
        raise ValueError(f"{source}: weights do not fit the model: {'; '.join(problems)} "
                         "(check --timm, --patch-size and the model's size)")
    model.load_state_dict(state, strict=True)


def checkpoint_in_chans(state: TensorDict, conv_key: str) -> int:
    """How many bands the checkpoint's input convolution reads."""
    if conv_key not in state:
        raise ValueError(f"the weights have no '{conv_key}' (the model's input convolution)")
    return int(state[conv_key].shape[1])
