"""The DINO LightningModule: one training step = GPU multi-crop, teacher and student forward, loss (DINO,
plus optional DINOv2 terms: KoLeo, iBOT masked patches), schedules set per step, per-parameter clipping of
unscaled gradients, last-layer freeze, EMA teacher."""

from __future__ import annotations

from typing import Any, cast

import lightning as L
import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.amp.grad_scaler import OptState

from geossl.config import config_from_dict
from geossl.dino.augment import MultiCropAugment
from geossl.dino.data import steps_per_epoch
from geossl.dino.health import marginal_entropy, student_teacher_kl, teacher_entropy
from geossl.dino.meta_arch import StudentTeacher, ViewOutputs
from geossl.dino.objective import (
    DINOLoss,
    IBOTPatchLoss,
    PatchMasks,
    cosine_schedule,
    draw_masks,
    koleo_loss,
    linear_warmup_constant,
)
from geossl.models.backbone import effective_patch_size
from geossl.models.encoder import Encoder, EncoderMeta

N_GLOBAL = 2  # global crops: the teacher's views, the student's masked views (iBOT) and KoLeo's batches


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; continuing would only destroy the weights."""


class DINOModule(L.LightningModule):
    """Self-supervised DINO on raw multi-band tiles.

    Arguments are plain types (saved as hyperparameters, so checkpoints load with ``weights_only=True``):
    ``config`` is ``Config.to_dict()``, ``stats`` the band statistics JSON, ``dataset_size`` the number
    of training samples (schedules are per step, so they need steps per epoch).
    """

    band_mean: torch.Tensor  # buffers registered in __init__
    band_std: torch.Tensor
    nonfinite_steps: torch.Tensor

    def __init__(
        self,
        config: dict[str, Any],
        in_chans: int,
        band_names: list[str],
        stats: dict[str, Any],
        dataset_size: int,
        value_range: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg = config_from_dict(config, "checkpoint hyperparameters")
        self.model = StudentTeacher(cfg, in_chans)
        self.dino_loss = DINOLoss(cfg.head.out_dim, cfg.loss.student_temp, cfg.loss.center_momentum,
                                  cfg.loss.centering, cfg.loss.sk_iterations)
        # Only built when used, so a run without iBOT keeps today's checkpoint keys.
        self.ibot_loss = (
            IBOTPatchLoss(cfg.head.out_dim, cfg.loss.student_temp, cfg.loss.center_momentum,
                          cfg.loss.centering, cfg.loss.sk_iterations)
            if cfg.loss.ibot_weight > 0 else None
        )
        value_bounds = cast(tuple[float, float], tuple(value_range)) if value_range else None  # (low, high)
        self.augment = MultiCropAugment(cfg.augment, stats["mean"], stats["std"], value_bounds)
        self.register_buffer("band_mean", torch.tensor(stats["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("band_std", torch.tensor(stats["std"], dtype=torch.float32).view(1, -1, 1, 1))
        # Accumulated on the device so non-finite checks cost no host sync per step.
        self.register_buffer("nonfinite_steps", torch.zeros((), dtype=torch.int64), persistent=False)
        self.schedules: dict[str, np.ndarray] = {}
        self.steps_per_epoch = 1
        self.monitors: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- schedules
    def build_schedules(self, world_size: int) -> None:
        cfg = self.cfg
        per_epoch = steps_per_epoch(self.hparams["dataset_size"], cfg.data.batch_size, world_size)
        total = cfg.optim.epochs * per_epoch
        global_batch = cfg.data.batch_size * world_size
        peak_lr = cfg.optim.base_lr * global_batch / 256.0  # linear scaling rule
        self.steps_per_epoch = per_epoch
        self.schedules = {
            "lr": cosine_schedule(peak_lr, cfg.optim.min_lr, total, int(cfg.optim.warmup_epochs * per_epoch)),
            "wd": cosine_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, total),
            "momentum": cosine_schedule(cfg.optim.momentum_teacher, 1.0, total),
            "teacher_temp": linear_warmup_constant(
                cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp, total,
                int(cfg.loss.warmup_teacher_temp_epochs * per_epoch),
            ),
        }

    def schedule_value(self, name: str, step: int) -> float:
        values = self.schedules[name]
        return float(values[min(step, len(values) - 1)])

    def setup(self, stage: str) -> None:
        self.build_schedules(self.trainer.world_size if self._trainer is not None else 1)

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        regularized: list[torch.nn.Parameter] = []
        not_regularized: list[torch.nn.Parameter] = []
        for name, param in self.model.student.named_parameters():
            if not param.requires_grad:
                continue
            # As the original: no weight decay on biases and 1-D parameters (norms).
            (not_regularized if name.endswith(".bias") or param.ndim == 1 else regularized).append(param)
        groups: list[dict[str, Any]] = [
            {"params": regularized}, {"params": not_regularized, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, fused=self._fuse_optimizer() or None)

    def _fuse_optimizer(self) -> bool:
        """Fused AdamW on CUDA (one kernel for all parameters). Safe with ``16-mixed`` too: a fused
        optimizer unscales in its own step, which Lightning relies on to skip unscaling before clipping,
        so :meth:`configure_gradient_clipping` unscales itself (see :meth:`_unscale_for_clipping`)."""
        return torch.cuda.is_available() and self.device.type == "cuda"

    def _apply_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        lr, wd = self.schedule_value("lr", step), self.schedule_value("wd", step)
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = lr
            if i == 0:
                group["weight_decay"] = wd

    def _seeds(self, step: int) -> tuple[int, torch.Generator]:
        """Deterministic randomness per (seed, step, rank): a resumed run replays the same crops and drop-path."""
        seed = (self.cfg.seed * 1_000_003 + step * 7919 + self.global_rank * 104_729) % (2**63 - 1)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return seed, generator

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.global_step
        optimizer = self.optimizers()
        raw = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        self._apply_schedules(cast(torch.optim.Optimizer, raw), step)  # one optimizer (configure_optimizers)
        seed, generator = self._seeds(step)
        torch.manual_seed(seed)  # drop-path draws from the global RNG

        images = batch["image"]
        if "mask" in batch:  # nodata pixels become the band mean, i.e. 0 after normalisation
            images = torch.where(batch["mask"].unsqueeze(1), images.float(), self.band_mean)
        other = batch.get("image_other") if self.cfg.augment.temporal else None
        if other is not None and "mask_other" in batch:
            other = torch.where(batch["mask_other"].unsqueeze(1), other.float(), self.band_mean)
        crops = self.augment(images, generator=generator, images_other=other)
        teacher_temp = self.schedule_value("teacher_temp", step)
        masks = self.draw_patch_masks(crops[0], seed) if self.ibot_loss is not None else None
        # Monitors every few steps only, read by MetricPrinter after this step.
        monitor = (step + 1) % self.cfg.trainer.log_every_steps == 0 or step == 0
        terms, teacher, seen = self.losses_and_outputs(crops, teacher_temp, masks, monitor)
        loss = terms["loss"]
        self.nonfinite_steps += (~torch.isfinite(loss.detach())).long()

        if monitor:
            self._log_monitors(terms, teacher.first_embeddings, seen, teacher_temp, step)
        return loss

    def draw_patch_masks(self, global_crop: torch.Tensor, seed: int) -> PatchMasks:
        """iBOT masks for the N_GLOBAL * B global crops of this step (see :mod:`geossl.dino.objective.masking`).

        Drawn on the CPU from a generator seeded by the step's seed (a stream of its own, so masks are
        independent of the crops yet replayed exactly on resume), as DINOv2 draws them in its collate.
        """
        cfg = self.cfg.loss
        vit = cast(VisionTransformer, self.model.student.backbone)  # iBOT: check_maskable refused any other
        grid = vit.patch_embed.dynamic_feat_size(tuple(global_crop.shape[-2:]))
        generator = torch.Generator().manual_seed((seed * 6_364_136_223_846_793_005 + 1) % (2**63 - 1))
        masks = draw_masks(N_GLOBAL * global_crop.shape[0], grid, cfg.ibot_mask_ratio, cfg.ibot_mask_probability,
                           cfg.ibot_mask_mode, generator)
        return PatchMasks.from_masks(masks, self.device)

    def compute_losses(
        self, crops: list[torch.Tensor], teacher_temp: float, masks: PatchMasks | None = None,
    ) -> tuple[dict[str, torch.Tensor], ViewOutputs]:
        """The step's loss terms and the teacher's outputs (for the monitors).

        total = DINO + ``koleo_weight`` * KoLeo + ``ibot_weight`` * iBOT (DINOv2's weighted sum). The
        student sees the global crops masked when ``masks`` is given (iBOT); the teacher never does.
        Returns ``{"loss": total, "dino": ..., "koleo": ..., "ibot": ...}`` with the active terms.
        """
        terms, teacher, _ = self.losses_and_outputs(crops, teacher_temp, masks)
        return terms, teacher

    def losses_and_outputs(
        self, crops: list[torch.Tensor], teacher_temp: float, masks: PatchMasks | None = None, monitor: bool = False,
    ) -> tuple[dict[str, torch.Tensor], ViewOutputs, dict[str, list[torch.Tensor]]]:
        """:meth:`compute_losses`, plus with ``monitor`` what the health signals need: ``targets``, the DINO
        loss's teacher targets per global view (taken before the loss moves its centre, so exactly those the
        loss used), and ``student``, the student's detached head outputs for the global views."""
        cfg = self.cfg.loss
        index = masks.index if masks is not None else None
        with torch.no_grad():
            teacher = self.model.teacher.forward_views(crops[:N_GLOBAL], N_GLOBAL, patch_index=index)
        student = self.model.student.forward_views(
            crops, N_GLOBAL, masks=masks.masks if masks is not None else None, patch_index=index
        )
        seen: dict[str, list[torch.Tensor]] = {}
        if monitor:
            seen["targets"] = self.dino_loss.teacher_probs(teacher.head, teacher_temp)
            seen["student"] = [s.detach() for s in student.head[:N_GLOBAL]]
        loss = self.dino_loss(student.head, teacher.head, teacher_temp)
        terms = {"dino": loss}
        if cfg.koleo_weight > 0:  # per global crop, summed (DINOv2)
            terms["koleo"] = sum((koleo_loss(e) for e in student.first_embeddings.chunk(N_GLOBAL)), loss.new_zeros(()))
            loss = loss + cfg.koleo_weight * terms["koleo"]
        if self.ibot_loss is not None:
            assert masks is not None and student.patch_head is not None and teacher.patch_head is not None
            terms["ibot"] = self.ibot_loss(student.patch_head, teacher.patch_head, masks.weight, teacher_temp)
            loss = loss + cfg.ibot_weight * terms["ibot"]
        terms["loss"] = loss
        return terms, teacher, seen

    @torch.no_grad()
    def _log_monitors(
        self, terms: dict[str, torch.Tensor], embeddings: torch.Tensor, seen: dict[str, list[torch.Tensor]],
        teacher_temp: float, step: int,
    ) -> None:
        """Collapse monitors every few steps only, all device-side (no host sync): std of normalised teacher
        embeddings; teacher entropy, entropy of its batch-mean distribution and KL(teacher || student) on the
        global crops (see :mod:`geossl.dino.health`); each loss term as ``loss_<term>`` when more than the
        DINO term is active."""
        normalized = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        probs = torch.cat(seen["targets"])
        loss = terms["loss"]
        self.monitors = {
            "loss": loss.detach(),
            "teacher_std": normalized.std(dim=0).mean(),
            "teacher_entropy": teacher_entropy(probs),
            "marginal_entropy": marginal_entropy(probs),
            "kl": student_teacher_kl(seen["targets"], seen["student"], self.dino_loss.student_temp),
        }
        if len(terms) > 2:
            self.monitors.update({f"loss_{k}": v.detach() for k, v in terms.items() if k != "loss"})
        values: dict[str, torch.Tensor | float] = {f"train/{k}": v for k, v in self.monitors.items()}
        values.update({
            "train/lr": self.schedule_value("lr", step),
            "train/wd": self.schedule_value("wd", step),
            "train/momentum": self.schedule_value("momentum", step),
            "train/teacher_temp": teacher_temp,
            "train/epoch_float": step / self.steps_per_epoch,
        })
        self.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, sync_dist=False)
        self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        """Called by Lightning right before the optimizer step.

        Clip each parameter's gradient norm separately (as the original DINO), then drop the student
        head's last-layer gradients while it is frozen (the first ``head.freeze_last_layer_epochs``).
        The norms are those of UNSCALED gradients even under ``16-mixed`` (see :meth:`_unscale_for_clipping`).
        """
        clip = self.cfg.optim.clip_grad
        grads = [p.grad for p in self.model.student.parameters() if p.grad is not None]
        if clip > 0 and grads:
            self._unscale_for_clipping(optimizer)
            grads = [p.grad for p in self.model.student.parameters() if p.grad is not None]  # unscale_ may replace
            norms = torch._foreach_norm(grads)
            scales = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
            torch._foreach_mul_(grads, scales)
        if self.global_step < self.cfg.head.freeze_last_layer_epochs * self.steps_per_epoch:
            self.model.cancel_last_layer_gradients()

    def _unscale_for_clipping(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale this step's gradients with the AMP GradScaler (``16-mixed``) if nobody has yet.

        Lightning's MixedPrecision plugin calls ``scaler.unscale_`` before clipping only for optimizers
        that do not unscale in their own step; for a fused AdamW it skips it, so clipping would see
        gradients multiplied by the loss scale (the threshold silently divided by up to 65536). Unscaling
        here is what torch documents for clipping with a GradScaler: ``scaler.step`` then finds the
        optimizer UNSCALED, reuses the inf/NaN check of this unscale and passes the fused step no scale,
        so nothing is unscaled twice. Kept rather than "no fused AdamW under 16-mixed" because it holds
        for any optimizer, fused or not, and any Lightning version: the per-optimizer stage is read,
        never assumed (``unscale_`` twice per step raises). bf16 and 32-bit runs have no scaler: no-op.
        """
        trainer = self._trainer
        scaler = getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None
        if scaler is None or not scaler.is_enabled():
            return
        raw = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the one the scaler sees
        if scaler._per_optimizer_states[id(raw)]["stage"] is OptState.READY:
            scaler.unscale_(raw)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The student step, then at once the teacher EMA: before any callback (checkpointing) runs,
        so a checkpoint always holds a teacher that matches its step count."""
        step = self.global_step  # not yet incremented for this step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.model.update_teacher(self.schedule_value("momentum", step))

    def teacher_encoder(self) -> Encoder:
        """The EMA teacher as an :class:`Encoder` (DINO evaluates and exports the teacher): the online
        k-NN and the export see the same backbone, normalisation and description."""
        cfg, stats = self.cfg, self.hparams["stats"]
        backbone = self.model.teacher.backbone
        meta = EncoderMeta(
            timm_name=cfg.model.arch,
            timm_kwargs=dict(self.model.backbone_kwargs),
            bands=list(stats["bands"]),
            mean=list(stats["mean"]), std=list(stats["std"]), p2=stats.get("p2"), p98=stats.get("p98"),
            patch_size=effective_patch_size(backbone),
            img_size=cfg.augment.global_size,
            embed_dim=self.model.embed_dim,
            gsd=cfg.data.gsd,
            feature_recipe=cfg.model.feature_recipe,
            band_indices=list(cfg.data.bands) if cfg.data.bands else None,
            extra={"steps": int(self.global_step), "config": cfg.to_dict()},
        )
        return Encoder(backbone, meta)

    def check_finite(self) -> None:
        """Raise if any step so far produced a non-finite loss (called every few steps and before saving)."""
        if int(self.nonfinite_steps) > 0:
            raise NonFiniteLossError(
                f"non-finite DINO loss at or before step {self.global_step}: lower optim.base_lr, check the "
                "band statistics (data.stats) and the input for NaN/inf pixels; the last good checkpoint is kept"
            )
