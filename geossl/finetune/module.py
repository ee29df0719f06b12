"""Lightning pieces of fine-tuning: the module (loss, schedule, validation top-1) and the data module.

The learning rate follows linear warm-up then cosine to ``min_lr``, set by step on every group (times the
group's layer-wise ``lr_scale``), and the augmentation draws from a generator seeded by the step: both are
functions of the global step alone, so a resumed run is bitwise the uninterrupted one (the sampler is the
pretraining's :class:`~geossl.dino.data.ResumableSampler`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from geossl.dino.bad_files import BadFileMonitor
from geossl.dino.data import ResumableSampler, init_worker, start_sampler_at_step, steps_per_epoch
from geossl.finetune.augment import augment_batch, mix_batch, soft_targets, step_generator
from geossl.finetune.config import FinetuneConfig
from geossl.finetune.network import ClassifierNet, param_groups


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then half-cosine from ``peak`` to ``floor`` at ``total``."""
    if step < warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class FinetuneModule(L.LightningModule):
    def __init__(self, net: ClassifierNet, cfg: FinetuneConfig, num_classes: int, steps_per_epoch: int,
                 class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net, self.cfg, self.num_classes = net, cfg, num_classes
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, round(cfg.optim.epochs * steps_per_epoch))
        self.warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
        self.history: list[dict[str, float]] = []  # validation curve (restored with the module's checkpoint)
        self._val_correct = self._val_total = 0
        self._nonfinite = False
        self.run_info: dict[str, Any] = {}  # what a resume must match (config, encoder); stored in checkpoints

    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = param_groups(self.net, o.lr, o.weight_decay, o.layer_decay)
        return torch.optim.AdamW(groups, lr=o.lr, betas=(0.9, 0.999))

    def _set_lr(self, step: int) -> float:
        o = self.cfg.optim
        lr = lr_at(step, self.total_steps, self.warmup_steps, o.lr, o.min_lr)
        for group in self.optimizers().optimizer.param_groups:  # type: ignore[union-attr]
            group["lr"] = lr * group["lr_scale"]
        return lr

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        lr = self._set_lr(step)
        a, o = self.cfg.augment, self.cfg.optim
        x = prepared(batch, self.net)
        g = step_generator(self.cfg.seed, step)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))  # drop-path: a function of the step too
        # The config checks made both [low, high].
        scale = cast(tuple[float, float], tuple(a.crop_scale))
        ratio = cast(tuple[float, float], tuple(a.crop_ratio))
        x = augment_batch(x, g, a.dihedral, scale, ratio, a.crop_p)
        if a.low_res is not None and step < a.low_res_fraction * self.total_steps and a.low_res < x.shape[-1]:
            x = F.interpolate(x, size=(a.low_res, a.low_res), mode="bilinear", antialias=True, align_corners=False)
        targets = soft_targets(batch["label"], self.num_classes, o.label_smoothing).to(x.device)
        x, targets = mix_batch(x, targets, o.mixup_alpha, o.cutmix_alpha, seed=self.cfg.seed * 1_000_003 + step)
        logits = self.net(x)
        loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        if not torch.isfinite(loss):
            self._nonfinite = True
            raise NonFiniteLossError(f"non-finite fine-tuning loss at step {step}: lower optim.lr or check the "
                                     "data; the last checkpoint is kept for --resume")
        self.log_dict({"loss": loss.detach(), "lr": lr}, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        if self.cfg.optim.clip_grad > 0:  # called after unscaling under mixed precision
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self.net(prepared(batch, self.net))
        self._val_correct += int((logits.argmax(-1) == batch["label"]).sum())
        self._val_total += int(batch["label"].numel())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self._val_total == 0:
            return
        top1 = self._val_correct / self._val_total
        self._val_correct = self._val_total = 0
        self.log("val_top1", top1, prog_bar=True)
        self.history.append({"step": int(self.global_step), "epoch": self.global_step / self.steps_per_epoch,
                             "val_top1": top1})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geossl_val_history"] = list(self.history)
        checkpoint["geossl_finetune"] = dict(self.run_info)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("geossl_val_history", []))

    def check_finite(self) -> None:
        """Called before a signal-triggered save: never checkpoint weights of a diverged step."""
        if self._nonfinite:
            raise NonFiniteLossError("refusing to checkpoint after a non-finite loss")


def prepared(batch: dict[str, torch.Tensor], net: ClassifierNet) -> torch.Tensor:
    """Raw pixels as float; pixels outside a file's validity mask take the band mean (0 after normalisation)."""
    x = batch["image"].float()
    if "mask" in batch:
        mean = net.encoder.mean.to(x.device)
        x = torch.where(batch["mask"].unsqueeze(1).to(x.device), x, mean.expand_as(x))
    return x


class FinetuneDataModule(L.LightningDataModule):
    """Train loader: resumable seeded order (optionally class-balanced), bad files skipped by the monitor;
    val loader: the val split in file order."""

    def __init__(self, cfg: FinetuneConfig, train: Dataset, val: Dataset, bad_files: BadFileMonitor | None,
                 labels: torch.Tensor) -> None:
        super().__init__()
        self.cfg, self.train, self.val, self.bad_files, self.labels = cfg, train, val, bad_files, labels

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "skipped" in batch:
            skipped = batch.pop("skipped")
            if self.bad_files is not None:
                self.bad_files.record(skipped)
        return batch

    def _balanced_order(self, seed: int, epoch: int) -> list[int]:
        """Indices drawn with class-balanced weights (with replacement), one epoch's worth, seeded by epoch."""
        counts = torch.bincount(self.labels).float().clamp_min(1)
        weights = (1.0 / counts)[self.labels]
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return torch.multinomial(weights, len(self.labels), replacement=True, generator=g).tolist()

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        cfg = self.cfg
        n = len(self.train)  # type: ignore[arg-type]
        order = self._balanced_order if cfg.optim.balanced_sampling else None
        sampler = ResumableSampler(n, cfg.seed, trainer.global_rank, trainer.world_size, order=order)
        per_epoch = steps_per_epoch(n, cfg.optim.batch_size, trainer.world_size)
        start_sampler_at_step(sampler, trainer, cfg.optim.batch_size, per_epoch)
        self.sampler = sampler
        return self._loader(self.train, sampler=sampler, drop_last=True, persistent=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, sampler=None, drop_last=False, persistent=False, batch=256)

    def _loader(self, dataset: Dataset, sampler: Any, drop_last: bool, persistent: bool,
                batch: int | None = None) -> DataLoader:
        workers = self.cfg.trainer.num_workers
        trainer = self.trainer
        return DataLoader(dataset, batch_size=batch or self.cfg.optim.batch_size, sampler=sampler, shuffle=False,
                          num_workers=workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                          persistent_workers=persistent and workers > 0,
                          worker_init_fn=functools.partial(init_worker, rank=trainer.global_rank if trainer else 0))
