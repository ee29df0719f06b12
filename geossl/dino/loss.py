"""DINO loss: cross-entropy between the centred (EMA centre or Sinkhorn-Knopp), sharpened teacher and the
student, over view pairs."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from geossl.dino.sinkhorn import sinkhorn_knopp


class DINOLoss(nn.Module):
    """Cross-entropy H(P_t, P_s) averaged over all (teacher view, student view) pairs of different views.

    Teacher outputs are centred and sharpened with ``teacher_temp``; the student uses ``student_temp``.
    ``centering="center"`` (DINO): subtract an EMA of the batch mean, all-reduced over ranks so every
    rank holds the same centre; the centre is a buffer, saved in checkpoints and restored on resume.
    ``centering="sinkhorn_knopp"`` (SwAV / DINOv2): the teacher batch of all global views is
    equipartitioned by ``sk_iterations`` Sinkhorn-Knopp steps instead; the centre buffer is then left
    untouched (kept so checkpoints have the same keys). Teacher views are the first
    ``len(teacher_out)`` student views (the global crops), so pairs with the same index are skipped.
    """

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
        centering: str = "center", sk_iterations: int = 3,
    ) -> None:
        super().__init__()
        if centering not in ("center", "sinkhorn_knopp"):
            raise ValueError(f"loss.centering: expected 'center' or 'sinkhorn_knopp', got {centering!r}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sk_iterations = sk_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], teacher_temp: float
    ) -> torch.Tensor:
        """``student_out``: one (B, K) tensor per view; ``teacher_out``: one per global view."""
        student_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        teacher_p = self.teacher_probs(teacher_out, teacher_temp)
        total = student_logp[0].new_zeros(())
        n_terms = 0
        for iq, q in enumerate(teacher_p):
            for v, logp in enumerate(student_logp):
                if v == iq:
                    continue  # the student and the teacher look at the same view
                total = total + torch.sum(-q * logp, dim=-1).mean()
                n_terms += 1
        if n_terms == 0:
            raise ValueError("DINO loss needs at least two views")
        if self.centering == "center":
            self.update_center(torch.cat(teacher_out))
        return total / n_terms

    @torch.no_grad()
    def teacher_probs(self, teacher_out: list[torch.Tensor], teacher_temp: float) -> list[torch.Tensor]:
        """The teacher targets, one (B, K) tensor per global view, centred as ``centering`` says."""
        if self.centering == "sinkhorn_knopp":
            probs = sinkhorn_knopp(torch.cat(teacher_out), teacher_temp, self.sk_iterations)
            return list(probs.split([t.shape[0] for t in teacher_out]))
        return [F.softmax((t.float() - self.center) / teacher_temp, dim=-1) for t in teacher_out]

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """centre <- m * centre + (1 - m) * mean over the GLOBAL batch (all ranks) of teacher logits."""
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        # new_full is a device-side fill: unlike torch.tensor([...], device=...) it never blocks the host.
        count = batch_sum.new_full((1, 1), float(teacher_out.shape[0]))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
