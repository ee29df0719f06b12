"""Every numeric config key refuses non-finite and out-of-range values when the config loads, naming the key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from geossl.config import Config, ConfigError, load_config
from geossl.config_checks import RULES

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
PRETRAIN_CONFIGS = [p for p in CONFIGS if not p.name.startswith(("sagemaker", "finetune_"))]  # finetune_*: tests/test_configs.py

# (override, the key the error must name). One bad value per key; NaN/inf where the key is a float.
BAD: list[tuple[str, str]] = [
    ("seed=-1", "seed"),
    ("data.limit=0", "data.limit"),
    ("data.bands=[1, 0]", "data.bands[1]"),
    ("data.tile_size=0", "data.tile_size"),
    ("data.tiles_per_epoch=0", "data.tiles_per_epoch"),
    ("data.min_valid_fraction=1.5", "data.min_valid_fraction"),
    ("data.min_valid_fraction=nan", "data.min_valid_fraction"),
    ("data.value_range=[0, .inf]", "data.value_range"),
    ("data.value_range=[10, 10]", "data.value_range"),
    ("data.value_range=[0]", "data.value_range"),
    ("data.gsd=0", "data.gsd"),
    ("data.gsd=.nan", "data.gsd"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("model.patch_size=0", "model.patch_size"),
    ("model.drop_path_rate=1.0", "model.drop_path_rate"),
    ("model.drop_path_rate=nan", "model.drop_path_rate"),
    ("head.out_dim=0", "head.out_dim"),
    ("head.hidden_dim=0", "head.hidden_dim"),
    ("head.bottleneck_dim=0", "head.bottleneck_dim"),
    ("head.n_layers=0", "head.n_layers"),
    ("head.freeze_last_layer_epochs=-1", "head.freeze_last_layer_epochs"),
    ("augment.global_size=0", "augment.global_size"),
    ("augment.local_size=-96", "augment.local_size"),
    ("augment.n_local=-1", "augment.n_local"),
    ("augment.global_scale=[0.25, nan]", "augment.global_scale"),
    ("augment.local_scale=[0.0, 0.25]", "augment.local_scale"),
    ("augment.brightness=-0.1", "augment.brightness"),
    ("augment.contrast=inf", "augment.contrast"),
    ("augment.jitter_p=1.1", "augment.jitter_p"),
    ("augment.grayscale_p=-0.2", "augment.grayscale_p"),
    ("augment.blur_p=[1.0, nan, 0.5]", "augment.blur_p[1]"),
    ("augment.blur_p=[1.0, 0.1]", "augment.blur_p"),
    ("augment.solarize_p=2", "augment.solarize_p"),
    ("loss.student_temp=0", "loss.student_temp"),
    ("loss.student_temp=nan", "loss.student_temp"),
    ("loss.teacher_temp=0.1", "loss.teacher_temp"),
    ("loss.teacher_temp=0", "loss.teacher_temp"),
    ("loss.warmup_teacher_temp=0.08", "loss.warmup_teacher_temp"),
    ("loss.warmup_teacher_temp_epochs=-1", "loss.warmup_teacher_temp_epochs"),
    ("loss.center_momentum=1.0", "loss.center_momentum"),
    ("loss.sk_iterations=0", "loss.sk_iterations"),
    ("loss.koleo_weight=nan", "loss.koleo_weight"),
    ("loss.ibot_weight=-1", "loss.ibot_weight"),
    ("loss.ibot_mask_ratio=[0.1, nan]", "loss.ibot_mask_ratio"),
    ("loss.ibot_mask_probability=-0.5", "loss.ibot_mask_probability"),
    ("optim.epochs=0", "optim.epochs"),
    ("optim.base_lr=nan", "optim.base_lr"),
    ("optim.base_lr=0", "optim.base_lr"),
    ("optim.min_lr=-1e-6", "optim.min_lr"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.warmup_epochs=101", "optim.warmup_epochs"),  # longer than the 100 epochs of the run
    ("optim.weight_decay=-0.04", "optim.weight_decay"),
    ("optim.weight_decay_end=inf", "optim.weight_decay_end"),
    ("optim.momentum_teacher=1.01", "optim.momentum_teacher"),
    ("optim.clip_grad=-inf", "optim.clip_grad"),
    ("trainer.num_nodes=0", "trainer.num_nodes"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.max_minutes=0", "trainer.max_minutes"),
    ("trainer.max_minutes=nan", "trainer.max_minutes"),
    ("trainer.checkpoint_every_steps=0", "trainer.checkpoint_every_steps"),
    ("trainer.log_every_steps=0", "trainer.log_every_steps"),
    ("eval.knn_max_train=0", "eval.knn_max_train"),
    ("eval.knn_max_val=0", "eval.knn_max_val"),
    ("eval.knn_k=0", "eval.knn_k"),
    ("eval.knn_temperature=0", "eval.knn_temperature"),
    ("eval.every_epochs=0", "eval.every_epochs"),
]


@pytest.mark.parametrize(("override", "key"), BAD, ids=[o for o, _ in BAD])
def test_bad_value_is_refused_naming_its_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert f"key '{key}'" in str(info.value)


def test_message_says_what_is_allowed_and_what_was_given() -> None:
    with pytest.raises(ConfigError, match=r"^key 'optim\.base_lr': must be a finite number > 0, got nan$"):
        load_config(None, ["optim.base_lr=nan"])
    with pytest.raises(ConfigError, match=r"^key 'data\.limit': must be null or an integer >= 1, got 0$"):
        load_config(None, ["data.limit=0"])
    with pytest.raises(ConfigError, match=r"key 'loss\.center_momentum': must be a finite number in \[0, 1\)"):
        load_config(None, ["loss.center_momentum=1"])


def test_boundary_values_load() -> None:
    """The edges of each range are allowed: the checks refuse nonsense, not legitimate settings."""
    cfg = load_config(None, [
        "optim.min_lr=0", "optim.weight_decay=0", "optim.clip_grad=0", "optim.momentum_teacher=1",
        "optim.epochs=10", "optim.warmup_epochs=10", "loss.center_momentum=0", "loss.teacher_temp=0.07",
        "loss.warmup_teacher_temp=0.07", "loss.warmup_teacher_temp_epochs=0", "model.drop_path_rate=0",
        "augment.n_local=0", "augment.blur_p=[0, 1, 0]", "augment.jitter_p=1", "data.num_workers=0",
        "data.limit=null", "data.gsd=null", "data.value_range=[-1, 1]", "trainer.max_steps=null",
        "trainer.max_minutes=null", "data.min_valid_fraction=0", "head.freeze_last_layer_epochs=0",
    ])
    assert cfg.optim.warmup_epochs == cfg.optim.epochs == 10 and cfg.loss.center_momentum == 0


def _numeric_fields(obj: object, prefix: str = "") -> list[str]:
    """Dotted names of every int/float (or optional int/float) field of the config dataclasses."""
    out: list[str] = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _numeric_fields(value, f"{f.name}.")
            continue
        hint = hints[f.name]
        scalars = {hint} if typing.get_origin(hint) is None else set(typing.get_args(hint)) - {type(None)}
        if typing.get_origin(hint) is not list and scalars <= {int, float}:  # lists have their own checks
            out.append(f"{prefix}{f.name}")
    return out


def test_every_numeric_key_has_a_rule() -> None:
    """A number added to a config section without a range rule fails here, not in a NaN run."""
    ruled = {f"{s}.{k}" if s else k for s, rules in RULES.items() for k in rules}
    numeric = set(_numeric_fields(Config()))
    assert numeric and numeric <= ruled, sorted(numeric - ruled)


@pytest.mark.parametrize(("overrides", "key"), [
    (["model.patch_size=8", "augment.global_size=60"], "augment.global_size"),
    (["model.patch_size=8", "augment.global_size=64", "augment.local_size=36"], "augment.local_size"),
    (["model.arch=vit_tiny_patch16_224", "model.extra={patch_size: 16}", "augment.local_size=40"], "augment.local_size"),
])
def test_crop_not_a_multiple_of_the_patch_is_refused(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert f"key '{key}'" in str(info.value) and "patch_size" in str(info.value)


def test_patch_multiples_skip_hybrids_and_init_encoders() -> None:
    """A conv-stem hybrid counts its patch in stem cells (demo: 2 cells = 8 px), and model.init's encoder
    replaces the config's architecture: neither config's patch_size is a pixel size to check crops against."""
    hybrid = load_config(None, ["model.arch=vit_tiny_r_s16_p8_224", "model.patch_size=3",
                                "augment.global_size=64", "augment.local_size=32"])
    assert hybrid.model.patch_size == 3
    init = load_config(None, ["model.init=/some/encoder", "model.patch_size=7"])
    assert init.model.init == "/some/encoder"


def test_trainer_kwargs_pass_real_trainer_arguments() -> None:
    cfg = load_config(None, ["trainer.kwargs={strategy: ddp, accumulate_grad_batches: 4}"])
    assert cfg.trainer.kwargs == {"strategy": "ddp", "accumulate_grad_batches": 4}
    assert load_config(None).trainer.kwargs == {}


@pytest.mark.parametrize(("name", "hint"), [
    ("gradient_clip_val", "optim.clip_grad"), ("max_epochs", "optim.epochs"), ("precision", "trainer.precision"),
    ("callbacks", "geossl"), ("use_distributed_sampler", "geossl"), ("log_every_n_steps", "trainer.log_every_steps"),
    ("max_time", "trainer.max_minutes"), ("default_root_dir", "--run-dir"),
])
def test_trainer_kwargs_refuse_what_geossl_sets(name: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"trainer.kwargs={{{name}: 1}}"])
    assert f"key 'trainer.kwargs.{name}'" in str(info.value) and hint in str(info.value)


def test_trainer_kwargs_refuse_unknown_arguments() -> None:
    with pytest.raises(ConfigError, match=r"key 'trainer\.kwargs\.stratgy': not a lightning\.Trainer argument"):
        load_config(None, ["trainer.kwargs={stratgy: ddp}"])


@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_still_load(path: Path) -> None:
    cfg = load_config(path, ["data.root=/work/shared/data"])
    assert cfg.optim.warmup_epochs <= cfg.optim.epochs and cfg.trainer.kwargs == {}
