"""DINO's objective: the losses, their centring, the iBOT masks and the per-step schedules.

This is what DINO/DINOv2 optimise, kept apart from how the run is driven (the LightningModule, the
trainer, callbacks, checkpoints and run folders in the rest of :mod:`geossl.dino`). Each module is a
small typed block of plain torch/numpy, tested on its own against the reference formulas of the papers
and the original code (``tests/dino/objective/``: ``test_loss.py``, ``test_ibot.py``, ``test_koleo.py``,
``test_sinkhorn.py``, ``test_masking.py``, ``test_schedules.py``); none of them imports
Lightning or anything else from geossl's training machinery, so they can be read, checked and reused
without it.

- :mod:`.loss`: ``DINOLoss`` (CLS cross-entropy over view pairs) and ``TeacherCentering``
  (EMA centre or Sinkhorn-Knopp, shared with iBOT).
- :mod:`.ibot`: ``IBOTPatchLoss`` (masked-patch loss), ``PatchMasks``, ``select_patches``.
- :mod:`.koleo`: ``koleo_loss`` (KoLeo regulariser on the CLS embeddings).
- :mod:`.sinkhorn`: ``sinkhorn_knopp`` (teacher centring by Sinkhorn-Knopp).
- :mod:`.masking`: ``draw_masks``, ``mask_counts`` (which global-crop patches the student sees masked).
- :mod:`.schedules`: ``cosine_schedule``, ``linear_warmup_constant`` (precomputed per-step values).
"""

from geossl.dino.objective.ibot import IBOTPatchLoss, PatchMasks, select_patches
from geossl.dino.objective.koleo import koleo_loss
from geossl.dino.objective.loss import DINOLoss, TeacherCentering
from geossl.dino.objective.masking import draw_masks, mask_counts
from geossl.dino.objective.schedules import cosine_schedule, linear_warmup_constant
from geossl.dino.objective.sinkhorn import sinkhorn_knopp

__all__ = [
    "DINOLoss",
    "IBOTPatchLoss",
    "PatchMasks",
    "TeacherCentering",
    "cosine_schedule",
    "draw_masks",
    "koleo_loss",
    "linear_warmup_constant",
    "mask_counts",
    "select_patches",
    "sinkhorn_knopp",
]
