"""Shared by the GPU benchmarks: presets, the real DINOModule driven by a real Lightning Trainer, timing.

Timing is honest by construction: the step is ``DINOModule.training_step`` plus its clipping and EMA
hooks, run by ``lightning.Trainer.fit`` exactly as ``geossl.dino.train`` runs it (same precision rule,
same ``apply_compile`` of both backbones); the only device syncs we add are at the two ends of
the timed window. Imports nothing from kornia/rasterio/torchgeo (the GPU host has none of them).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from geossl.config import Config, config_from_dict
from geossl.dino.module import DINOModule
from geossl.dino.train import apply_compile

H100_BF16_DENSE_TFLOPS = 989.0

# name: (timm arch, patch override, global px, local px, input px, extra timm kwargs, head dims)
PRESETS: dict[str, dict[str, Any]] = {
    "vits16_224": {"arch": "vit_small_patch16_224", "patch": None, "global": 224, "local": 96, "image": 224,
                   "extra": {}, "head": {}},
    "vits8_64": {"arch": "vit_small_patch16_224", "patch": 8, "global": 64, "local": 32, "image": 64,
                 "extra": {}, "head": {}},
    # --quick: a 1-block, 48-wide ViT and a small head, so a CPU test runs in seconds.
    "tiny": {"arch": "vit_small_patch16_224", "patch": 8, "global": 32, "local": 16, "image": 32,
             "extra": {"depth": 1, "embed_dim": 48, "num_heads": 2},
             "head": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32}},
}


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|self\.log|LeafSpec|TF32|"
                            r"Tensor Cores|max_epochs|on_step|num_workers|eval mode).*")


def bench_config(preset: str, batch_size: int, n_local: int, compile_model: bool, **data: Any) -> Config:
    """A real Config for ``preset``. The last-layer freeze is off: we time the steady state, not epoch 1."""
    p = PRESETS[preset]
    head = {"freeze_last_layer_epochs": 0.0, **p["head"]}
    return config_from_dict({
        "data": {"batch_size": batch_size, **data},
        "model": {"arch": p["arch"], "patch_size": p["patch"], "extra": dict(p["extra"])},
        "head": head,
        "augment": {"global_size": p["global"], "local_size": p["local"], "n_local": n_local},
        "optim": {"epochs": 1000},  # max_steps decides; schedules only need to be long enough
        "trainer": {"compile": compile_model, "progress_bar": False},
    }, f"bench preset {preset}")


def build_module(cfg: Config, in_chans: int, dataset_size: int, mean: list[float], std: list[float],
                 value_range: tuple[float, float] | None) -> DINOModule:
    stats = {"bands": [f"band_{i + 1}" for i in range(in_chans)], "mean": mean, "std": std,
             "p2": mean, "p98": mean}
    return DINOModule(config=cfg.to_dict(), in_chans=in_chans, band_names=stats["bands"], stats=stats,
                      dataset_size=dataset_size, value_range=list(value_range) if value_range else None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class StepTimer(L.Callback):
    """Times steps [warmup, warmup + steps) with a device sync only at both ends of that window.

    Afterwards, on CUDA, ``probe`` more steps run under ``torch.cuda.set_sync_debug_mode("warn")`` and
    every synchronising call is recorded with the Python line that made it (``sync_sites``).
    """

    def __init__(self, device: torch.device, warmup: int, steps: int, probe: int = 0) -> None:
        self.device, self.warmup, self.steps, self.probe = device, warmup, steps, probe
        self.t0 = self.t1 = 0.0
        self.peak_bytes = 0
        self.graphs0 = self.graphs1 = 0
        self.sync_sites: dict[str, int] = {}
        self._catcher: Any = None
        self._caught: list[warnings.WarningMessage] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.warmup:
            sync(self.device)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self.graphs0 = unique_graphs()
            self.t0 = time.perf_counter()
        if self.device.type == "cuda" and step >= self.warmup + self.steps and self._catcher is None:
            self._catcher = warnings.catch_warnings(record=True)
            self._caught = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step  # already advanced past this batch
        if step == self.warmup + self.steps:
            sync(self.device)
            self.t1 = time.perf_counter()
            self.graphs1 = unique_graphs()
            if self.device.type == "cuda":
                self.peak_bytes = torch.cuda.max_memory_allocated(self.device)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        if self._catcher is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._catcher.__exit__(None, None, None)
            for w in self._caught:
                if "synchroniz" in str(w.message):
                    key = f"{w.filename.split('site-packages/')[-1]}:{w.lineno}"
                    self.sync_sites[key] = self.sync_sites.get(key, 0) + 1

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def make_trainer(device: torch.device, cfg: Config, max_steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    """The performance-relevant Trainer arguments of geossl.dino.train (no loggers/checkpoints/progress bar)."""
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"  # train._precision with "auto"
    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=precision, max_epochs=cfg.optim.epochs, max_steps=max_steps, callbacks=callbacks,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, log_every_n_steps=cfg.trainer.log_every_steps,
    )


class DeviceBatches:
    """``n`` batches cycling over a few device-resident uint8 tensors: Lightning's transfer is a no-op."""

    def __init__(self, pool: list[torch.Tensor], n: int) -> None:
        self.pool, self.n = pool, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(self.n):
            yield {"image": self.pool[i % len(self.pool)]}


def count_flops(module: DINOModule, images: torch.Tensor) -> float:
    """Model FLOPs of one training step on ``images`` (teacher fwd on globals, student fwd+bwd on all crops).

    FlopCounterMode with the math SDPA backend, so attention counts on every device (the fused CPU
    kernel is not in its registry). The augmentation is not counted (model FLOPs, as MFU means).
    Restores the loss centre and clears gradients afterwards.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    center = module.dino_loss.center.clone()
    crops = module.augment(images, generator=torch.Generator(images.device).manual_seed(0))
    with FlopCounterMode(display=False) as counter, sdpa_kernel([SDPBackend.MATH]):
        with torch.no_grad():
            teacher_out, _ = module.model.teacher(crops[:2])
        student_out, _ = module.model.student(crops)
        module.dino_loss(student_out, teacher_out, 0.04).backward()
    module.zero_grad(set_to_none=True)
    module.dino_loss.center.copy_(center)
    return float(counter.get_total_flops())


def analytic_flops(cfg: Config, module: DINOModule, batch: int) -> float:
    """Cross-check: 2 FLOPs per MAC; ViT block = 24 N d^2 + 4 N^2 d; training = 3x forward (student)."""
    backbone = module.model.student.backbone
    backbone = getattr(backbone, "_orig_mod", backbone)
    d, depth = module.model.embed_dim, len(backbone.blocks)
    patch = backbone.patch_embed.patch_size
    p = int(patch[0] if isinstance(patch, tuple | list) else patch)
    c = int(module.hparams.in_chans)
    h = cfg.head
    head = 2 * (d * h.hidden_dim + h.hidden_dim * h.hidden_dim * (h.n_layers - 2)
                + h.hidden_dim * h.bottleneck_dim + h.bottleneck_dim * h.out_dim)

    def forward(size: int) -> float:
        n_patch = (size // p) ** 2
        n = n_patch + backbone.num_prefix_tokens
        return depth * (24 * n * d * d + 4 * n * n * d) + 2 * n_patch * c * p * p * d + head

    a = cfg.augment
    student = 2 * forward(a.global_size) + a.n_local * forward(a.local_size)
    return batch * (3 * student + 2 * forward(a.global_size))


def run_training(module: DINOModule, cfg: Config, device: torch.device, warmup: int, steps: int, probe: int,
                 train_data: Iterable | None = None, datamodule: L.LightningDataModule | None = None) -> StepTimer:
    timer = StepTimer(device, warmup, steps, probe)
    trainer = make_trainer(device, cfg, warmup + steps + probe, [timer])
    if cfg.trainer.compile:
        torch._dynamo.reset()
        apply_compile(module)
    trainer.fit(module, train_dataloaders=train_data, datamodule=datamodule)
    if timer.t1 == 0.0:
        raise RuntimeError(f"training stopped at step {trainer.global_step} before the timed window ended")
    return timer


def time_augment(module: torch.nn.Module, images: torch.Tensor, reps: int = 5) -> float:
    """Median milliseconds per MultiCropAugment call on ``images`` (their device); median resists shared-CPU noise."""
    augment = getattr(module, "augment", module)
    gen = torch.Generator(images.device).manual_seed(0)
    augment(images, generator=gen)
    times = []
    for _ in range(reps):
        sync(images.device)
        t = time.perf_counter()
        augment(images, generator=gen)
        sync(images.device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1000


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> None:
    """columns: (key, header, decimals)."""
    cells = [[h for _, h, _ in columns]] + [[fmt(r.get(k), dp) for k, _, dp in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), flush=True)


def print_json(payload: dict[str, Any]) -> None:
    """The machine-readable result: always the LAST line of stdout."""
    print(json.dumps(payload, separators=(",", ":")), flush=True)


# --- sizing a pretraining run to a time budget (bench/gpu_suite.py) ------------------------------------------


class WindowClock(L.Callback):
    """Seconds between the ends of steps ``first`` and ``last`` of a real run, a device sync at both ends only."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.marks: dict[int, float] = {}

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in (self.first, self.last):
            sync(module.device)
            self.marks[trainer.global_step] = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.marks[self.last] - self.marks[self.first]


def recipe_throughput(config: str, overrides: list[str], steps: int, skip: int) -> dict[str, Any]:
    """Training img/s of a config as ``geossl pretrain`` runs it (real loader, module, Trainer, precision).

    A throwaway run of ``steps`` steps in a temporary folder; steps ``skip``..``steps`` are timed, so
    start-up (workers, first-batch allocations) is excluded but loader stalls are not.
    """
    import tempfile
    from pathlib import Path

    from geossl.config import load_config
    from geossl.dino.train import pretrain

    if not 0 < skip < steps:
        raise ValueError(f"need 0 < skip < steps, got skip={skip}, steps={steps}")
    clock = WindowClock(skip, steps)
    cfg = load_config(config, [*overrides, f"trainer.max_steps={steps}", "trainer.max_minutes=null",
                               "eval.knn_data=null", "trainer.progress_bar=false",
                               "trainer.checkpoint_every_steps=1000000000"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geossl-throughput-") as tmp:
        summary = pretrain(cfg, Path(tmp) / "run", resume="never", callbacks=[clock])
    if len(clock.marks) != 2:
        raise RuntimeError(f"throughput run stopped at step {summary['steps']} before step {steps}: "
                           "the data holds fewer batches than the timed window")
    batch = cfg.data.batch_size
    return {"img_per_s": (steps - skip) * batch / clock.seconds, "timed_steps": steps - skip, "batch_size": batch,
            "wall_s": time.perf_counter() - start}


def sized_overrides(images: float, n_train: int, batch: int, min_epochs: int = 2) -> tuple[list[str], dict[str, int]]:
    """``data.limit`` and ``optim.epochs`` so that limit x epochs ~ ``images``: the whole schedule fits.

    All ``n_train`` images per epoch when the budget allows at least ``min_epochs`` of them, else a
    class-balanced subset (at least 4 batches) seen ``min_epochs`` times.
    """
    epochs = max(min_epochs, math.ceil(images / n_train))
    limit = int(min(n_train, max(batch * 4, images / epochs)))
    steps = epochs * (limit // batch)
    return [f"data.limit={limit}", f"optim.epochs={epochs}"], {"epochs": epochs, "limit": limit, "steps": steps}
