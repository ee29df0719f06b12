"""Typed fine-tuning options: YAML (``configs/finetune_*.yaml``) + ``section.key=value`` overrides.

The same strict loader as pretraining (:func:`geossl.config.merge_into`): an unknown key or a wrong type
is one line naming the key and the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geossl.choices import ACCELERATORS, FEATURE_RECIPES
from geossl.config import fill_config, merge_into
from geossl.config_checks import ConfigError

MODES = ("full", "last_n", "lora")


@dataclass
class FinetuneModelConfig:
    mode: str = "full"  # full | last_n (only the last `last_n` blocks, the final norm and the head) | lora
    last_n: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    features: str = "cls_avgpool"  # what the head reads (geossl.models.encoder recipes)
    # Start from the linear head of a land-cover model folder given as --encoder (geossl probe's model/), when
    # its classes are the data's: linear probing then fine-tuning (LP-FT, Kumar et al. 2022); the head then
    # reads that model's feature recipe. Off by default: on EuroSAT RGB with the demo encoder it learned far
    # slower than a new head (val top-1 61 % vs 77 % after one epoch; README "Fine-tuning"): the probe's
    # head sits on standardised features with almost no weight decay, so every move of the encoder is amplified.
    init_head: bool = False
    drop_path_rate: float = 0.1


@dataclass
class FinetuneOptimConfig:
    epochs: float = 10.0  # may be fractional: the schedule spans exactly round(epochs x steps per epoch) steps
    batch_size: int = 64
    lr: float = 1e-3  # peak, for the head; block i of d gets lr x layer_decay^(d - i), the stem ^(d + 1)
    layer_decay: float = 0.75  # 1.0 = one learning rate for every layer
    min_lr: float = 1e-6
    warmup_epochs: float = 0.5
    weight_decay: float = 0.05  # weights with 2+ dimensions only (no biases, norms, tokens)
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0  # 0 = off
    cutmix_alpha: float = 0.0  # 0 = off; with both on, each batch picks one (p = 0.5)
    clip_grad: float = 1.0  # global norm; 0 = off
    balanced_sampling: bool = False  # draw classes equally often (inverse-frequency weights)


@dataclass
class FinetuneAugmentConfig:
    dihedral: bool = True  # the 8 flips / 90-degree rotations: no canonical "up" from orbit
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # random resized crop inside the tile
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    crop_p: float = 1.0  # share of samples cropped; the rest keep the whole tile
    # Progressive resizing (as EfficientNetV2 / FixRes): the first `low_res_fraction` of the steps train on
    # tiles resampled to `low_res` px (a 64 px tile at 32 px has a quarter of the tokens: ~3x the steps per
    # minute on a CPU), the rest at full size, where the model is evaluated. null = off.
    low_res: int | None = None
    low_res_fraction: float = 0.5


@dataclass
class FinetuneTrainerConfig:
    accelerator: str = "auto"
    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU
    num_workers: int = 1
    checkpoint_every_steps: int = 200
    log_every_steps: int = 20
    val_every_epochs: float = 1.0  # may be fractional (e.g. 0.5 = twice per epoch)
    early_stop_patience: int = 0  # validations without a new best val top-1 before stopping; 0 = never
    max_bad_fraction: float = 0.01
    progress_bar: bool = True


@dataclass
class FinetuneConfig:
    seed: int = 0
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    augment: FinetuneAugmentConfig = field(default_factory=FinetuneAugmentConfig)
    trainer: FinetuneTrainerConfig = field(default_factory=FinetuneTrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_finetune_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides; validated before anything runs."""
    cfg = fill_config(FinetuneConfig(), path, overrides, "fine-tuning config")
    validate(cfg)
    return cfg


def finetune_config_from_dict(values: dict[str, Any], source: str = "config") -> FinetuneConfig:
    cfg = FinetuneConfig()
    merge_into(cfg, values, "", source)
    validate(cfg)
    return cfg


def validate(cfg: FinetuneConfig) -> None:
    """Choices and ranges the types cannot express, each error naming its key."""
    m, o, a, t = cfg.model, cfg.optim, cfg.augment, cfg.trainer
    checks: list[tuple[bool, str]] = [
        (m.mode in MODES, f"key 'model.mode': expected one of {list(MODES)}, got {m.mode!r}"),
        (m.features in FEATURE_RECIPES,
         f"key 'model.features': expected one of {list(FEATURE_RECIPES)}, got {m.features!r}"),
        (m.last_n >= 1, f"key 'model.last_n': expected >= 1, got {m.last_n}"),
        (m.lora_rank >= 1, f"key 'model.lora_rank': expected >= 1, got {m.lora_rank}"),
        (0 <= m.drop_path_rate < 1, f"key 'model.drop_path_rate': expected in [0, 1), got {m.drop_path_rate}"),
        (o.epochs > 0, f"key 'optim.epochs': expected > 0, got {o.epochs}"),
        (o.batch_size >= 1, f"key 'optim.batch_size': expected >= 1, got {o.batch_size}"),
        (o.lr > 0, f"key 'optim.lr': expected > 0, got {o.lr}"),
        (0 < o.layer_decay <= 1, f"key 'optim.layer_decay': expected in (0, 1], got {o.layer_decay}"),
        (0 <= o.warmup_epochs < o.epochs, f"key 'optim.warmup_epochs': expected in [0, optim.epochs), got {o.warmup_epochs}"),
        (0 <= o.label_smoothing < 1, f"key 'optim.label_smoothing': expected in [0, 1), got {o.label_smoothing}"),
        (o.mixup_alpha >= 0 and o.cutmix_alpha >= 0, "keys 'optim.mixup_alpha'/'optim.cutmix_alpha': expected >= 0"),
        (o.weight_decay >= 0 and o.clip_grad >= 0, "keys 'optim.weight_decay'/'optim.clip_grad': expected >= 0"),
        (len(a.crop_scale) == 2 and 0 < a.crop_scale[0] <= a.crop_scale[1] <= 1,
         f"key 'augment.crop_scale': expected [low, high] with 0 < low <= high <= 1, got {a.crop_scale}"),
        (len(a.crop_ratio) == 2 and 0 < a.crop_ratio[0] <= a.crop_ratio[1],
         f"key 'augment.crop_ratio': expected [low, high] with 0 < low <= high, got {a.crop_ratio}"),
        (0 <= a.crop_p <= 1, f"key 'augment.crop_p': expected in [0, 1], got {a.crop_p}"),
        (a.low_res is None or a.low_res >= 8, f"key 'augment.low_res': expected null or >= 8 px, got {a.low_res}"),
        (0 <= a.low_res_fraction <= 1, f"key 'augment.low_res_fraction': expected in [0, 1], got {a.low_res_fraction}"),
        (t.accelerator in ACCELERATORS, f"key 'trainer.accelerator': unknown {t.accelerator!r}"),
        (t.num_workers >= 0, f"key 'trainer.num_workers': expected >= 0, got {t.num_workers}"),
        (t.checkpoint_every_steps >= 1, f"key 'trainer.checkpoint_every_steps': expected >= 1, got {t.checkpoint_every_steps}"),
        (t.log_every_steps >= 1, f"key 'trainer.log_every_steps': expected >= 1, got {t.log_every_steps}"),
        (t.val_every_epochs > 0, f"key 'trainer.val_every_epochs': expected > 0, got {t.val_every_epochs}"),
        (t.early_stop_patience >= 0, f"key 'trainer.early_stop_patience': expected >= 0, got {t.early_stop_patience}"),
        (0 <= t.max_bad_fraction < 1, f"key 'trainer.max_bad_fraction': expected in [0, 1), got {t.max_bad_fraction}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
