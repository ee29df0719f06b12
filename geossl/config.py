"""Typed run configuration: YAML file + ``key.sub=value`` overrides, validated strictly.

Defaults are the DINO paper's values (Caron et al. 2021, "boosted" ViT-S recipe); every number from a
paper lives here, once. Unknown keys and wrong types are errors that name the key and the file, so a
typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geossl import choices
from geossl.config_checks import ConfigError, check_values


@dataclass
class DataConfig:
    kind: str = "patches"  # "patches" (class folders / CSV), "scenes" (GeoTIFF/COG, random tiles) or "shards"
    paths: list[str] = field(default_factory=lambda: ["$GEOSSL_DATA/eurosat-rgb"])
    root: str | None = None  # data root for $GEOSSL_DATA in paths; None = geossl.settings.data_root()
    split: str | None = "train"  # patches: rows of splits.csv used for pretraining (labels never used)
    limit: int | None = None  # patches: use at most this many (a seeded, class-balanced subset)
    bands: list[int] | None = None  # 1-based band indices to read; None = all
    # Names of the bands read (e.g. [B01, ..., B8A]): recorded in the encoder, and how model.init matches
    # a pretrained encoder's bands to these (by name). None = band_1, band_2, ...
    band_names: list[str] | None = None
    tile_size: int = 64  # scenes: size of random tiles; patches: must match the patch size
    tiles_per_epoch: int = 10_000  # scenes: random tiles drawn per epoch
    min_valid_fraction: float = 0.9  # scenes: tiles with fewer valid pixels are never served
    # scenes: at most this many scene files open at once per process (an LRU pool; geossl/data/handles.py)
    max_open_files: int = 64
    # scenes: a GeoParquet of the scenes' headers, built on first use and reused while current, so start-up
    # opens no scene (geossl/data/scene_index.py); may start with $GEOSSL_DATA. None = headers read each start.
    scene_index: str | None = None
    stats: str | None = None  # band statistics JSON (geossl stats); None = computed from a sample
    value_range: list[float] | None = None  # raw values mapped to [0, 1] for photometric ops; None = 0-255 for uint8, else off
    gsd: float | None = None  # metres per pixel (recorded in the encoder; scenes: read from the files)
    batch_size: int = 64  # per device
    num_workers: int = 2
    # patches: a bad file (unreadable, truncated, another band count/dtype/mode, wrong size) is skipped
    # (the next good file serves instead), counted and listed in summary.json; the run stops, listing
    # them, once more than this fraction of the dataset's files proved bad. 0 = stop on the first.
    max_bad_fraction: float = 0.01


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch16_224"  # any timm ViT
    patch_size: int | None = None  # override the arch's patch size (e.g. 8)
    drop_path_rate: float = 0.1  # student only; the teacher has none
    # timm arguments forwarded verbatim (e.g. {depth: 6}); recorded in the exported encoder.
    extra: dict[str, Any] = field(default_factory=dict)
    # The exported encoder's default probe features (one of geossl.choices.FEATURE_RECIPES).
    feature_recipe: str = "cls_last4"
    # Continue from a pretrained encoder folder (geossl import-encoder / pretrain output) or a geossl run
    # folder (its DINO head too): arch, patch_size and extra then come from the encoder; its bands are
    # matched to data.band_names by name. None = random initialisation.
    init: str | None = None
    init_new_bands: str = "zero"  # filters of data bands the encoder never saw: zero | mean (models/bands.py)


@dataclass
class HeadConfig:
    out_dim: int = 4096  # K prototypes; 65536 on ImageNet, 4k-16k suits small datasets
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_layers: int = 3
    norm_last_layer: bool = False  # the best ViT-S runs used False
    use_bn: bool = False  # BatchNorm (batch statistics) after each hidden layer of the head
    freeze_last_layer_epochs: float = 1.0  # student last layer gets no update for this long
    # iBOT patch tokens go through their own DINOHead (DINOv2's default) or through the DINO head
    # (iBOT's shared head). Only read when loss.ibot_weight > 0; same sizes as the DINO head.
    ibot_separate_head: bool = True


@dataclass
class AugmentConfig:
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.25])
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    grayscale_p: float = 0.2  # "grayscale" = every band replaced by the band mean
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])  # global-1, global-2, locals
    solarize_p: float = 0.2  # global-2 only, and only where values lie in [0, 1]
    rotate90: bool = True  # no canonical "up" from orbit
    vflip: bool = True


@dataclass
class LossConfig:
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # final value; above 0.07 is unstable
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30
    center_momentum: float = 0.9  # EMA of the teacher centre (DINO and iBOT patch centres alike)
    # DINOv2 family (Oquab et al. 2023), all off by default until measured on our data:
    # "center" = DINO's EMA centre; "sinkhorn_knopp" = SwAV's 3-step equipartition of the teacher
    # batch (DINOv2), for both the DINO CLS and the iBOT patch targets.
    centering: str = "center"
    sk_iterations: int = 3  # Sinkhorn-Knopp iterations (DINOv2: 3)
    # KoLeo (Sablayrolles et al. 2019) on the student's L2-normalised CLS embeddings of each global
    # crop, summed over the two crops as DINOv2 does; DINOv2 uses 0.1. 0 disables it.
    koleo_weight: float = 0.0
    # iBOT masked-patch loss (Zhou et al. 2022); DINOv2 uses 1.0. 0 disables it and builds no mask
    # token, patch head or patch centre, so checkpoints keep today's keys.
    ibot_weight: float = 0.0
    ibot_mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])  # per-image ratio range
    ibot_mask_probability: float = 0.5  # fraction of global crops that are masked at all
    ibot_mask_mode: str = "block"  # "block" (BEiT/DINOv2 rectangles) | "random" (independent patches)


@dataclass
class OptimConfig:
    epochs: int = 100
    base_lr: float = 0.0005  # per 256 images of global batch
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    clip_grad: float = 3.0  # per-parameter norm, as the original; 0 disables


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"
    num_nodes: int = 1
    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU
    require_gpu: bool = False  # refuse to start without a GPU
    compile: bool = False
    max_steps: int | None = None  # stop early (demos, tests); schedules still span `epochs`
    max_minutes: float | None = None
    checkpoint_every_steps: int = 500
    log_every_steps: int = 10
    progress_bar: bool = True
    # Checkpoint retention: keep the newest keep_last periodic step-*.ckpt (0 = all) plus every
    # keep_every-th of them (0 = none besides); last.ckpt is always kept (geossl/dino/run_folder.py).
    keep_last: int = 0
    keep_every: int = 0
    # Any other lightning.Trainer keyword argument, passed through verbatim (e.g. {strategy: ddp,
    # accumulate_grad_batches: 2}). Arguments geossl sets itself are refused, naming the key to use instead:
    # gradient_clip_val among them, because geossl clips per parameter via optim.clip_grad.
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    knn_data: str | None = None  # labelled patches for the online k-NN monitor; None disables it
    knn_train_split: str = "train"
    knn_val_split: str = "val"
    knn_max_train: int = 2000
    knn_max_val: int = 1000
    knn_k: int = 20
    knn_temperature: float = 0.07
    every_epochs: int = 1


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise a ConfigError naming ``key``."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{source}: key '{key}': expected {_type_name(annotation)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float, str, bool):
        if isinstance(value, bool) and annotation is not bool:
            raise ConfigError(f"{source}: key '{key}': expected {annotation.__name__}, got {value!r}")
        if not isinstance(value, annotation):
            raise ConfigError(f"{source}: key '{key}': expected {annotation.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}': unsupported type {annotation}")


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def merge_into(obj: Any, values: dict[str, Any], prefix: str, source: str) -> None:
    """Set dataclass fields of ``obj`` from nested ``values``, strictly (shared by every typed config)."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{full}' (valid: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{full}': expected a mapping, got {value!r}")
            merge_into(current, value, f"{full}.", source)
        else:
            setattr(obj, key, _check_type(value, hints[key], full, source))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value parsed as YAML, so ``3``, ``1e-4``, ``[1,2]``, ``null`` work).

    The value goes through the same loader as config files, so a ``!!python/object`` tag or an alias
    bomb on a command line is the same one-line error naming the override, never a traceback."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value (e.g. optim.epochs=10)")
    key, raw = text.split("=", 1)
    if not raw.strip():
        return key.strip().split("."), ""
    try:
        value = _load_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': not a valid YAML value ({_yaml_problem(exc)})") from None
    return key.strip().split("."), value


MAX_YAML_VALUES = 100_000  # values in a document once its aliases are expanded; a real config has a few hundred


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key repeated in one mapping is an error: PyYAML keeps the last silently,
    so a config that says two things (a second ``compute:`` section, ``epochs`` twice) would run one of them.

    And aliases may not expand a document beyond :data:`MAX_YAML_VALUES` values: PyYAML shares an aliased
    node rather than copying it, so a "billion laughs" file loads in a millisecond, but every later step
    that walks the config (type checks, ``asdict``, writing the run's config.yaml) expands it and runs out
    of memory. Aliases used as intended (a few shared lists) stay far below the limit."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return self.construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values of the composed document as if every alias were copied (iteratively, memoised per
    node, so the count itself costs one visit per node); too many, or an alias inside itself, is an error."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if not children_done:
            if id(node) in open_nodes:
                raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                                  node.start_mark)
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[id(node)] > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand it to more than {MAX_YAML_VALUES:,} values (an alias bomb?)",
                node.start_mark)


def _load_yaml(text: str) -> Any:
    """YAML text -> Python values, by :class:`_UniqueKeyLoader` (safe tags only, aliases bounded)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: PyYAML's own message spans several lines and quotes the source."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = "; ".join(str(part) for part in (exc.context, exc.problem) if part) or type(exc).__name__
        mark = exc.problem_mark or exc.context_mark
        return f"{what}, line {mark.line + 1} column {mark.column + 1}" if mark else what
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping, with no key given twice; errors name the file."""
    path = Path(path)
    try:
        raw = _load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def apply_override(obj: Any, keys: list[str], value: Any, text: str) -> None:
    """Set the dotted ``keys`` of ``obj`` to ``value`` with the same checks as a YAML file."""
    nested: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        nested = {k: nested}
    merge_into(obj, nested, "", f"override '{text}'")


def fill_config(cfg: Any, path: str | Path | None, overrides: list[str] | None, what: str = "config") -> Any:
    """Any typed config (pretraining, fine-tuning): defaults in ``cfg``, then the YAML file, then ``key=value``
    overrides, each strictly (the one loader every config goes through)."""
    if path is not None:
        merge_into(cfg, read_yaml_mapping(path, what), "", str(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(cfg, keys, value, text)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    cfg = fill_config(Config(), path, overrides)
    validate(cfg)
    resolve_data_root(cfg)
    return cfg


def resolve_data_root(cfg: Config) -> None:
    """Expand ``$GEOSSL_DATA`` in every data path of ``cfg`` once, where the config is loaded: training,
    statistics and the online k-NN then read the same root (``GEOSSL_DATA``, else ``data.root``, else
    ``../shared/data`` or ``./data``; see :mod:`geossl.settings`), and the run's config.yaml shows the
    paths actually read."""
    from geossl.settings import resolve_data_path

    root = cfg.data.root
    cfg.data.paths = [resolve_data_path(p, root) for p in cfg.data.paths]
    if cfg.data.stats:
        cfg.data.stats = resolve_data_path(cfg.data.stats, root)
    if cfg.eval.knn_data:
        cfg.eval.knn_data = resolve_data_path(cfg.eval.knn_data, root)


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    cfg = Config()
    merge_into(cfg, values, "", source)
    validate(cfg)
    return cfg


def _one_of(values: tuple[str, ...]) -> str:
    """``('a', 'b', 'c')`` -> ``"'a', 'b' or 'c'"``, as the messages have always named the choices."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def validate(cfg: Config) -> None:
    """Checks the types cannot express: choices here, numbers and ranges in :mod:`geossl.config_checks`."""
    if cfg.data.kind not in choices.DATA_KINDS:
        raise ConfigError(f"key 'data.kind': expected {_one_of(choices.DATA_KINDS)}, got {cfg.data.kind!r}")
    if cfg.trainer.accelerator not in choices.ACCELERATORS:
        raise ConfigError(f"key 'trainer.accelerator': unknown accelerator {cfg.trainer.accelerator!r}")
    if cfg.model.feature_recipe not in choices.FEATURE_RECIPES:
        raise ConfigError(f"key 'model.feature_recipe': expected one of {list(choices.FEATURE_RECIPES)}, "
                          f"got {cfg.model.feature_recipe!r}")
    if cfg.model.init_new_bands not in choices.NEW_BAND_POLICIES:
        raise ConfigError(f"key 'model.init_new_bands': expected {_one_of(choices.NEW_BAND_POLICIES)}, "
                          f"got {cfg.model.init_new_bands!r}")
    if cfg.loss.centering not in choices.CENTERINGS:
        raise ConfigError(f"key 'loss.centering': expected {_one_of(choices.CENTERINGS)}, got {cfg.loss.centering!r}")
    if cfg.loss.ibot_mask_mode not in choices.IBOT_MASK_MODES:
        raise ConfigError(f"key 'loss.ibot_mask_mode': expected {_one_of(choices.IBOT_MASK_MODES)}, "
                          f"got {cfg.loss.ibot_mask_mode!r}")
    check_values(cfg)
