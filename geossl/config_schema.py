"""The keys of a run's configuration: one dataclass per section, each key with its type and default.

Defaults are the DINO paper's values (Caron et al. 2021, "boosted" ViT-S recipe); every number from a
paper lives here, once. Only the dataclasses (what a run is): reading YAML and overrides strictly is
:mod:`geossl.config` (which exports these classes too), the value checks :mod:`geossl.config_checks`;
both import this module, which imports nothing of geossl.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    # With augment.temporal: a uri,date CSV of acquisition dates (else TIFFTAG_DATETIME, else the file
    # name's _YYYYMMDD or year); scenes overlapping by this share of the smaller footprint form a stack.
    dates: str | None = None
    stack_min_overlap: float = 0.5


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
    # Temporal views (data.kind scenes): global-2 comes from another date of the same ground, read onto
    # the first date's pixels (geossl/data/temporal.py); temporal_locals: every other local crop too.
    temporal: bool = False
    temporal_locals: bool = False


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
