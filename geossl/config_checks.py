"""Value checks of a loaded :class:`geossl.config_schema.Config`: every number finite and in its range.

The types are checked as the YAML is read (``geossl.config.merge_into``); these are the checks the types
cannot express. They run when the config loads, so ``optim.base_lr=nan`` or a warm-up longer than the
run fails in a second naming the key, instead of hours later as a NaN loss or a silently wrong schedule.
Kept apart from the dataclasses (:mod:`geossl.config_schema`) so they (what a run is) stay short and
readable; below :mod:`geossl.config`, which runs these checks whenever a config loads.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any

from geossl.config_schema import Config


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in (each end open or closed); ``integer`` demands an int."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False  # None is allowed (means "off" / "all")
    note: str = ""  # why the bound, when it is not obvious

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            text = (f"{kind} in {'(' if self.low_open else '['}{_fmt(self.low)}, "
                    f"{_fmt(self.high)}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {_fmt(self.low)}"
        else:
            text = kind
        text = f"null or {text}" if self.optional else text
        return f"{text} ({self.note})" if self.note else text

    def holds(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
PROBABILITY = Range(low=0, high=1)
COUNT = Range(low=1, integer=True)  # sizes, steps, epochs: at least one
OPTIONAL_COUNT = Range(low=1, integer=True, optional=True)
NON_NEGATIVE_INT = Range(low=0, integer=True)
TEACHER_TEMP = Range(low=0, high=0.07, low_open=True, note="above 0.07 is unstable, DINO paper")

# Every numeric scalar key, by section: the rule it obeys. Lists and cross-field rules are checked below.
RULES: dict[str, dict[str, Range]] = {
    "": {"seed": Range(low=0, high=2**32, high_open=True, integer=True)},  # numpy seeds are uint32
    "data": {"limit": OPTIONAL_COUNT, "tile_size": COUNT, "tiles_per_epoch": COUNT, "max_open_files": COUNT,
             "min_valid_fraction": PROBABILITY, "gsd": Range(low=0, low_open=True, optional=True),
             "batch_size": COUNT, "num_workers": NON_NEGATIVE_INT, "max_bad_fraction": PROBABILITY,
             "stack_min_overlap": Range(low=0, high=1, low_open=True)},
    "model": {"patch_size": OPTIONAL_COUNT, "drop_path_rate": Range(low=0, high=1, high_open=True)},
    "head": {"out_dim": COUNT, "hidden_dim": COUNT, "bottleneck_dim": COUNT, "n_layers": COUNT,
             "freeze_last_layer_epochs": NON_NEGATIVE},
    # brightness/contrast b scale by a factor in [1 - b, 1 + b]: above 1 the factor goes negative.
    "augment": {"global_size": COUNT, "local_size": COUNT, "n_local": NON_NEGATIVE_INT,
                "brightness": PROBABILITY, "contrast": PROBABILITY, "jitter_p": PROBABILITY,
                "grayscale_p": PROBABILITY, "solarize_p": PROBABILITY},
    "loss": {"student_temp": POSITIVE, "teacher_temp": TEACHER_TEMP, "warmup_teacher_temp": TEACHER_TEMP,
             "warmup_teacher_temp_epochs": NON_NEGATIVE, "center_momentum": Range(low=0, high=1, high_open=True),
             "sk_iterations": COUNT, "koleo_weight": NON_NEGATIVE, "ibot_weight": NON_NEGATIVE,
             "ibot_mask_probability": PROBABILITY},
    "optim": {"epochs": COUNT, "base_lr": POSITIVE, "min_lr": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE,
              "weight_decay": NON_NEGATIVE, "weight_decay_end": NON_NEGATIVE, "momentum_teacher": PROBABILITY,
              "clip_grad": NON_NEGATIVE},
    "trainer": {"num_nodes": COUNT, "max_steps": OPTIONAL_COUNT,
                "max_minutes": Range(low=0, low_open=True, optional=True),
                "checkpoint_every_steps": COUNT, "log_every_steps": COUNT, "keep_last": NON_NEGATIVE_INT,
                "keep_every": NON_NEGATIVE_INT},
    "eval": {"knn_max_train": COUNT, "knn_max_val": COUNT, "knn_k": COUNT, "knn_temperature": POSITIVE,
             "every_epochs": COUNT},
}

# lightning.Trainer arguments geossl sets itself, and the key to use instead (trainer.kwargs refuses them).
TRAINER_ARGS_SET_BY_GEOSSL: dict[str, str] = {
    "accelerator": "trainer.accelerator", "devices": "trainer.devices", "num_nodes": "trainer.num_nodes",
    "precision": "trainer.precision", "max_epochs": "optim.epochs", "max_steps": "trainer.max_steps",
    "max_time": "trainer.max_minutes", "log_every_n_steps": "trainer.log_every_steps",
    "enable_progress_bar": "trainer.progress_bar", "default_root_dir": "--run-dir",
    "callbacks": "geossl's own callbacks", "logger": "geossl's TensorBoard and CSV loggers",
    "plugins": "geossl's atomic checkpoint writer",
    "use_distributed_sampler": "geossl's resumable sampler, which shards by rank",
    "enable_model_summary": "geossl (off)", "num_sanity_val_steps": "geossl (0)",
    # geossl clips each parameter's gradient norm separately, as the DINO code does:
    "gradient_clip_val": "optim.clip_grad (per parameter)", "gradient_clip_algorithm": "optim.clip_grad (per parameter)",
}

# timm constructor arguments a config or an encoder's timm_kwargs may not carry, and why: geossl passes
# these itself (a second value is a TypeError inside timm), and ``pretrained`` would download weights
# while a run starts (runs must start offline; weights come in once, through geossl import-encoder).
REFUSED_TIMM_KWARGS: dict[str, str] = {
    "pretrained": "geossl never downloads weights while it runs; bring them in once with geossl import-encoder "
                  "(--timm NAME --weights FILE) and start from that folder (model.init)",
    "pretrained_cfg_overlay": "it only matters for downloads, which geossl never makes while it runs",
    "drop_path_rate": "set by geossl (model.drop_path_rate)",
}

HYBRID_ARCH = re.compile(r"_r\d*_|resnet")  # timm's conv-stem hybrids: vit_tiny_r_s16_p8_224, vit_base_r50_s16_384


def check_number(key: str, value: Any, rule: Range) -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` obeys ``rule``."""
    if not rule.holds(value):
        raise ConfigError(f"key '{key}': must be {rule.describe()}, got {value!r}")


def check_numbers(cfg: Config) -> None:
    """Every rule of :data:`RULES`, then the list-valued and cross-field numbers."""
    for section, rules in RULES.items():
        obj = getattr(cfg, section) if section else cfg
        for name, rule in rules.items():
            check_number(f"{section}.{name}" if section else name, getattr(obj, name), rule)
    _check_data_lists(cfg)
    _check_augment_lists(cfg)
    if cfg.optim.warmup_epochs > cfg.optim.epochs:
        raise ConfigError(f"key 'optim.warmup_epochs': must be <= optim.epochs ({cfg.optim.epochs}), "
                          f"got {cfg.optim.warmup_epochs!r}")
    if cfg.loss.koleo_weight > 0 and cfg.data.batch_size < 2:
        raise ConfigError("key 'loss.koleo_weight': KoLeo needs a nearest neighbour, so data.batch_size >= 2")
    ratio = cfg.loss.ibot_mask_ratio
    if len(ratio) != 2 or not 0 <= ratio[0] <= ratio[1] <= 1:  # NaN fails every comparison
        raise ConfigError(f"key 'loss.ibot_mask_ratio': expected [low, high] with 0 <= low <= high <= 1, got {ratio}")


def _check_data_lists(cfg: Config) -> None:
    for i, band in enumerate(cfg.data.bands or []):
        check_number(f"data.bands[{i}]", band, COUNT)  # 1-based, as rasterio counts
    vrange = cfg.data.value_range
    if vrange is not None:
        finite = all(isinstance(v, int | float) and math.isfinite(v) for v in vrange)
        if len(vrange) != 2 or not finite or not vrange[0] < vrange[1]:
            raise ConfigError(f"key 'data.value_range': expected [low, high] with finite low < high, got {vrange}")


def _check_augment_lists(cfg: Config) -> None:
    aug = cfg.augment
    for name in ("global_scale", "local_scale"):
        lo_hi = getattr(aug, name)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise ConfigError(f"key 'augment.{name}': expected [low, high] with 0 < low <= high <= 1, got {lo_hi}")
    if len(aug.blur_p) != 3:
        raise ConfigError("key 'augment.blur_p': expected three probabilities [global-1, global-2, locals]")
    for i, p in enumerate(aug.blur_p):
        check_number(f"augment.blur_p[{i}]", p, PROBABILITY)


def check_patch_multiples(cfg: Config) -> None:
    """Crops must tile into whole patches: timm's patch embedding silently drops a partial last row.

    Checked only where the config decides the pixel patch: ``model.patch_size`` (or ``model.extra``'s) is
    set, the arch is a plain ViT (a conv-stem hybrid counts its patch in stem-output cells, after a stride
    that depends on the stem) and no ``model.init`` encoder supplies the architecture instead.
    """
    patch = cfg.model.extra.get("patch_size", cfg.model.patch_size)
    if patch is None or cfg.model.init is not None or HYBRID_ARCH.search(cfg.model.arch):
        return
    if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
        return  # a (h, w) pair or a bad value: timm's own error names it
    source = "model.extra.patch_size" if "patch_size" in cfg.model.extra else "model.patch_size"
    for name in ("global_size", "local_size"):
        size = getattr(cfg.augment, name)
        if size % patch:
            raise ConfigError(f"key 'augment.{name}': {size} px is not a multiple of {source} ({patch}); "
                              f"use e.g. {max(patch, size - size % patch)}")


def check_timm_kwargs(kwargs: dict[str, Any], key: str = "key 'model.extra.{key}'") -> None:
    """Refuse the timm arguments of :data:`REFUSED_TIMM_KWARGS`; ``key`` names where they were written
    (``{key}`` is the argument), e.g. a config's ``model.extra`` or an encoder's ``geossl.json``."""
    for name, why in REFUSED_TIMM_KWARGS.items():
        if name in kwargs:
            raise ConfigError(f"{key.format(key=name)}: not allowed ({why})")


def check_trainer_kwargs(kwargs: dict[str, Any]) -> None:
    """``trainer.kwargs`` keys must be real ``lightning.Trainer`` arguments that geossl does not set itself.

    Lightning is imported only when there is something to check: loading a config stays fast.
    """
    if not kwargs:
        return

    import lightning

    valid = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    for name in kwargs:
        key = f"trainer.kwargs.{name}"
        if name in TRAINER_ARGS_SET_BY_GEOSSL:
            raise ConfigError(f"key '{key}': set by geossl; use {TRAINER_ARGS_SET_BY_GEOSSL[name]}")
        if name not in valid:
            raise ConfigError(f"key '{key}': not a lightning.Trainer argument "
                              f"(passed through: {', '.join(sorted(valid - set(TRAINER_ARGS_SET_BY_GEOSSL)))})")


def check_values(cfg: Config) -> None:
    """All value checks of this module, in the order a reader meets the keys."""
    check_numbers(cfg)
    check_patch_multiples(cfg)
    check_timm_kwargs(cfg.model.extra)
    check_trainer_kwargs(cfg.trainer.kwargs)
    check_temporal(cfg)


def check_temporal(cfg: Config) -> None:
    """Temporal views read other dates from scenes: patches and chips have no dates to read."""
    if cfg.augment.temporal and cfg.data.kind != "scenes":
        raise ConfigError(f"key 'augment.temporal': temporal views need data.kind scenes (the dates of a ground are "
                          f"read from the scenes), got {cfg.data.kind!r}")
    if cfg.augment.temporal_locals and not cfg.augment.temporal:
        raise ConfigError("key 'augment.temporal_locals': needs augment.temporal: true")
    if cfg.data.dates is not None and not cfg.augment.temporal:
        raise ConfigError("key 'data.dates': only read with augment.temporal: true")

