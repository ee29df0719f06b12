"""Per-parameter clipping under ``16-mixed`` with a fused AdamW acts on UNSCALED gradients.

Lightning's MixedPrecision plugin skips ``scaler.unscale_`` before clipping when the optimizer is fused
(it unscales in its own step), so the module must unscale itself. Run through a real Trainer with a real
CPU GradScaler and a fused AdamW (CPU supports it), i.e. the exact code path of a GPU 16-mixed run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from dino_helpers import TINY
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.amp.grad_scaler import OptState
from torch.utils.data import DataLoader

from geossl.config import load_config
from geossl.dino.module import DINOModule

STATS = {"bands": ["r", "g", "b"], "mean": [0.5] * 3, "std": [0.25] * 3, "p2": [0.0] * 3, "p98": [1.0] * 3}
CLIP = 3.0  # the default: this model's unscaled gradient norms (0.1 .. 1000) fall on both sides of it
SCALE = 2.0**12  # a power of two: scaling fp32 gradients by it is exact


class RecordingModule(DINOModule):
    """Records the gradients Lightning hands to clipping, the scaler's stage then, and the clipped ones."""

    fused = True  # the CUDA choice, forced on CPU

    def _fuse_optimizer(self) -> bool:
        return self.fused

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        scaler = self.trainer.precision_plugin.scaler
        self.stage_before = scaler._per_optimizer_states[id(optimizer)]["stage"]
        self.scale = float(scaler.get_scale())
        self.before = {n: p.grad.detach().clone() for n, p in self.model.student.named_parameters()
                       if p.grad is not None}

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.after = {n: p.grad.detach().clone() for n, p in self.model.student.named_parameters()
                      if p.grad is not None}
        self.stage_after = self.trainer.precision_plugin.scaler._per_optimizer_states[id(optimizer)]["stage"]

    def effective_gradients(self) -> dict[str, torch.Tensor]:
        """The gradients the optimizer step applies: a fused step still divides them by the scale when
        the scaler has not unscaled them (stage READY after clipping)."""
        divisor = self.scale if self.stage_after is OptState.READY else 1.0
        return {n: g / divisor for n, g in self.after.items()}


class FP32MixedPrecision(MixedPrecision):
    """The 16-mixed plugin (its GradScaler and optimizer_step) without fp16 autocast, which CPU kernels
    need not support: the gradients stay fp32, so the scaled ones are exactly SCALE * the unscaled ones."""

    def forward_context(self):  # type: ignore[override]
        return torch.autocast("cpu", enabled=False)


def _batches() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=generator)
    return DataLoader([{"image": img} for img in images], batch_size=8)


@pytest.mark.parametrize("fused", [True, False])
def test_clipping_sees_unscaled_gradients_with_a_grad_scaler(fused: bool) -> None:
    cfg = load_config(None, TINY + [f"optim.clip_grad={CLIP}", "head.freeze_last_layer_epochs=0"])
    module = RecordingModule(cfg.to_dict(), 3, STATS["bands"], STATS, dataset_size=8, value_range=None)
    module.fused = fused
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        plugins=[FP32MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(module, train_dataloaders=_batches())

    optimizer = trainer.optimizers[0]
    assert bool(getattr(optimizer, "_step_supports_amp_scaling", False)) is fused
    # The premise: Lightning leaves a fused optimizer's gradients scaled; it unscales a plain one itself.
    assert module.stage_before is (OptState.READY if fused else OptState.UNSCALED)
    applied = module.effective_gradients()
    assert module.before.keys() == applied.keys() and module.before
    clipped = kept = 0
    for name, grad in module.before.items():
        unscaled = grad / module.scale if fused else grad
        norm = unscaled.norm()
        expected = torch.clamp(CLIP / (norm + 1e-6), max=1.0) * unscaled
        clipped, kept = clipped + int(norm > CLIP), kept + int(norm < CLIP)
        torch.testing.assert_close(applied[name], expected, rtol=1e-5, atol=1e-9,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # Both kinds occur, so gradients clipped at the scaled norm (all of them, here) would be caught.
    assert clipped > 0 and kept > 0
    assert module.stage_after is OptState.UNSCALED  # clipped in unscaled units, stepped without a 2nd unscale
    assert scaler.get_scale() == SCALE  # no inf/NaN found, the step was taken and the scale kept
    assert trainer.global_step == 1
