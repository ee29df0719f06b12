"""The network fine-tuning trains: an :class:`~geossl.models.encoder.Encoder` plus a linear head, with the
trainable part chosen by mode (full, last-N blocks, LoRA) and layer-wise learning rates.

The head is the land-cover model's own :class:`~geossl.models.landcover.LinearHead` (its standardisation
left at identity), so what is trained is exactly what ``geossl classify`` loads. LoRA comes from peft
(low-rank adapters on each block's attention ``qkv`` and ``proj``) and is merged into the weights on
export, so a fine-tuned model folder is plain timm + safetensors like any other.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay

from geossl.models.backbone import create_backbone
from geossl.models.encoder import Encoder, EncoderMeta, export_encoder, load_encoder
from geossl.models.landcover import HEAD_META, LinearHead, load_landcover_model, save_landcover_model

if TYPE_CHECKING:
    from peft import PeftModel

LORA_TARGETS = r".*blocks\.\d+\.attn\.(qkv|proj)"  # attention projections only: not the stem's conv "proj"


class ClassifierNet(nn.Module):
    """Raw pixels (B, C, H, W) -> logits (B, K) through ``encoder.features(x, features)`` and a linear head."""

    def __init__(self, encoder: Encoder, num_classes: int, features: str, head: LinearHead | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.features = features
        if head is None:
            head = LinearHead(encoder.feature_dim(features), num_classes)
            nn.init.trunc_normal_(head.linear.weight, std=0.01)  # small start: the encoder's features lead
            nn.init.zeros_(head.linear.bias)
        if head.in_features != encoder.feature_dim(features) or head.num_classes != num_classes:
            raise ValueError(f"head of {head.in_features} features x {head.num_classes} classes does not fit "
                             f"{features!r} ({encoder.feature_dim(features)}) and {num_classes} classes")
        self.head = head
        self.lora = False

    def forward(self, x_raw: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(x_raw, self.features))

    @property
    def blocks(self) -> nn.Sequential | nn.ModuleList:  # timm ViTs: Sequential; Eva (DINOv3): ModuleList
        return cast(nn.Sequential | nn.ModuleList, self._plain_backbone().blocks)

    def _plain_backbone(self) -> nn.Module:
        backbone = self.encoder.backbone
        return cast("PeftModel", backbone).get_base_model() if self.lora else backbone


def trainable_encoder(path: str, drop_path_rate: float, seed: int) -> Encoder:
    """The encoder folder's network rebuilt with drop-path (stochastic depth) for training.

    ``random:<dir>`` builds the same architecture at random init under ``seed`` (the fine-tune's baseline).
    Drop-path has no weights, so the stored state loads unchanged and the export stays drop-path free."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plain = load_encoder(path)
    meta = plain.meta
    backbone = create_backbone(meta.timm_name, meta.timm_kwargs, drop_path_rate=drop_path_rate)
    backbone.load_state_dict(plain.backbone.state_dict(), strict=True)
    encoder = Encoder(backbone, meta)
    encoder.train()
    return encoder


def probe_head(folder: str, classes: list[str]) -> tuple[LinearHead, str] | None:
    """(the linear head, its feature recipe) of a land-cover model folder whose classes are ``classes``;
    None for a plain encoder folder. Another class list is one line saying the head is not reused."""
    if folder.startswith("random:") or not (Path(folder) / HEAD_META).is_file():
        return None
    model = load_landcover_model(Path(folder))
    if not isinstance(model.head, LinearHead):
        print(f"geossl finetune: {folder}: its head is not linear ({type(model.head).__name__}); starting a new "
              "linear head", file=sys.stderr)
        return None
    if model.classes != list(classes):
        print(f"geossl finetune: {folder}: its head ({len(model.classes)} classes) does not match the data's "
              f"{len(classes)} classes; starting a new head", file=sys.stderr)
        return None
    return model.head, model.feature_recipe


def apply_mode(net: ClassifierNet, mode: str, last_n: int = 2, lora_rank: int = 8, lora_alpha: float = 16.0,
               lora_dropout: float = 0.0) -> None:
    """Freeze what the mode does not train. ``full``: everything trains. ``last_n``: the last ``last_n``
    blocks, the final norm and the head. ``lora``: peft adapters on the attention projections and the head."""
    backbone = net.encoder.backbone
    if mode == "full":
        return
    if mode == "last_n":
        depth = len(cast(nn.Sequential | nn.ModuleList, backbone.blocks))
        if last_n > depth:
            raise ValueError(f"model.last_n: {last_n} blocks asked, the encoder has {depth}")
        for name, param in backbone.named_parameters():
            param.requires_grad = name.startswith(("norm.", "fc_norm.")) or any(
                name.startswith(f"blocks.{i}.") for i in range(depth - last_n, depth))
        return
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        # peft annotates lora_alpha int, but only divides by it (scaling = lora_alpha / r): a float is fine.
        config = LoraConfig(r=lora_rank, lora_alpha=cast(int, lora_alpha), lora_dropout=lora_dropout,
                            target_modules=LORA_TARGETS)
        net.encoder.backbone = get_peft_model(backbone, config)
        net.lora = True
        return
    raise ValueError(f"model.mode: unknown mode {mode!r}")


def param_groups(net: ClassifierNet, lr: float, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: timm's layer-wise decay over the backbone (block i of d: ``layer_decay ** (d - 1 - i)``,
    the stem and tokens ``layer_decay ** d``, the final norm 1) and the head at the full rate. Weight decay on
    2+-dimensional weights only. Each group keeps its ``lr_scale`` for the schedule; frozen weights are left out."""
    backbone = net._plain_backbone()
    skip = set(getattr(backbone, "no_weight_decay", lambda: set())())
    groups = [g for g in param_groups_layer_decay(backbone, weight_decay=weight_decay, no_weight_decay_list=skip,
                                                  layer_decay=layer_decay)]
    head_params = [p for p in net.head.parameters() if p.requires_grad]
    groups.append({"params": [p for p in head_params if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": 1.0})
    groups.append({"params": [p for p in head_params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": 1.0})
    out = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            out.append({**g, "params": params, "lr": lr * g["lr_scale"]})
    return out


def merged_backbone(net: ClassifierNet) -> nn.Module:
    """The backbone as plain timm: LoRA adapters folded into the weights (W + B A x alpha / r), peft removed.

    Works on a deep copy, so training (and a later resume) keeps its adapters."""
    backbone = net.encoder.backbone
    if not net.lora:
        return backbone
    return cast("PeftModel", copy.deepcopy(backbone)).merge_and_unload()


def export_model(net: ClassifierNet, meta: EncoderMeta, classes: list[str], out_dir: Path,
                 info: dict[str, Any]) -> Path:
    """A land-cover model folder (encoder files + head) that ``geossl classify`` and ``embed`` read as is."""
    export_encoder(merged_backbone(net), meta, out_dir)
    return save_landcover_model(out_dir, net.head, classes, net.features, out_dir, info)
