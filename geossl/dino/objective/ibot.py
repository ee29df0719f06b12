"""iBOT masked-patch loss (Zhou et al. 2022, "iBOT: Image BERT pre-training with online tokenizer"; DINOv2).

The student sees the global crops with some patch tokens replaced by a learned mask token; the
teacher sees them intact. At every masked position the student's patch prediction must match the
teacher's centred, sharpened patch distribution: a masked-image-modelling target that teaches the
patch tokens (dense features) what DINO's CLS loss alone does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geossl.dino.objective.loss import TeacherCentering


@dataclass
class PatchMasks:
    """The step's masks and what the loss needs of them, computed once on the host.

    ``masks`` (n_images, n_patches) bool; ``index`` (M,) positions of the masked patches in the
    flattened (n_images * n_patches) token list, in row-major order; ``weight`` (M,) each masked
    patch's share of the loss: 1 / (masked patches of its image) / n_images (DINOv2's per-image mean,
    then the mean over ALL global crops, unmasked ones contributing 0).
    """

    masks: torch.Tensor
    index: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def from_masks(cls, masks: torch.Tensor, device: torch.device | str | None = None) -> PatchMasks:
        """Build from CPU masks; the index is computed on the host so no device sync is ever needed."""
        masks = masks.to("cpu", torch.bool)
        index = masks.flatten().nonzero().flatten()
        per_image = 1.0 / masks.sum(dim=1).clamp(min=1).float() / masks.shape[0]
        weight = per_image.view(-1, 1).expand_as(masks)[masks]
        return cls(_to_device(masks, device), _to_device(index, device), _to_device(weight, device))

    @property
    def n_masked(self) -> int:
        return int(self.index.shape[0])


def _to_device(tensor: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """Host to device without waiting for the GPU's queue: a plain copy from pageable memory would
    synchronise the stream every step; from pinned memory ``non_blocking`` is safe."""
    if device is not None and torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def select_patches(tokens: torch.Tensor, num_prefix_tokens: int, index: torch.Tensor) -> torch.Tensor:
    """(M, D) patch tokens at ``index`` from backbone tokens (n_images, prefix + n_patches, D)."""
    patches = tokens[:, num_prefix_tokens:]
    return patches.reshape(-1, patches.shape[-1]).index_select(0, index)


class IBOTPatchLoss(TeacherCentering):
    """Cross-entropy H(P_t, P_s) on masked patches only, averaged per image then over images.

    Teacher patch outputs are centred by their own EMA centre (``centering="center"``, iBOT; the
    centre is a buffer, saved in checkpoints) or by Sinkhorn-Knopp over all masked patches of the
    global batch (``"sinkhorn_knopp"``, DINOv2), then sharpened by the teacher temperature.
    """

    def forward(
        self, student_patch_out: torch.Tensor, teacher_patch_out: torch.Tensor, weight: torch.Tensor,
        teacher_temp: float,
    ) -> torch.Tensor:
        """``student_patch_out``, ``teacher_patch_out``: (M, K) head outputs at the masked positions;
        ``weight``: (M,) from :class:`PatchMasks`. Updates the EMA centre when ``centering="center"``."""
        q = self.targets(teacher_patch_out, teacher_temp)
        logp = F.log_softmax(student_patch_out.float() / self.student_temp, dim=-1)
        loss = (torch.sum(-q * logp, dim=-1) * weight).sum()
        if self.centering == "center":
            self.update_center(teacher_patch_out)
        return loss
