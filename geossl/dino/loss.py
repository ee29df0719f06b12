"""DINO loss: cross-entropy between the centred, sharpened teacher and the student, over view pairs."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class DINOLoss(nn.Module):
    """Cross-entropy H(P_t, P_s) averaged over all (teacher view, student view) pairs of different views.

    Teacher outputs are centred (EMA of the batch mean, all-reduced over ranks so every rank holds the
    same centre) and sharpened with ``teacher_temp``; the student uses ``student_temp``. Teacher views
    are the first ``len(teacher_out)`` student views (the global crops), so pairs with the same index
    are skipped. The centre is a buffer: it is saved in checkpoints and restored on resume.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], teacher_temp: float
    ) -> torch.Tensor:
        """``student_out``: one (B, K) tensor per view; ``teacher_out``: one per global view."""
        student_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        teacher_p = [F.softmax((t.float() - self.center) / teacher_temp, dim=-1).detach() for t in teacher_out]
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
        self.update_center(torch.cat(teacher_out))
        return total / n_terms

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
