"""DINO loss: cross-entropy between the centred (EMA centre or Sinkhorn-Knopp), sharpened teacher and the
student, over view pairs."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from geossl.dino.objective.sinkhorn import sinkhorn_knopp


class TeacherCentering(nn.Module):
    """How teacher outputs become targets, shared by the DINO (CLS) and iBOT (patch) losses.

    ``centering="center"`` (DINO, iBOT): subtract an EMA of the batch-mean teacher output, all-reduced
    over ranks so every rank holds the same centre, then sharpen by the teacher temperature; the centre
    is a buffer, saved in checkpoints and restored on resume. ``"sinkhorn_knopp"`` (SwAV, DINOv2):
    equipartition the teacher batch with ``sk_iterations`` Sinkhorn-Knopp steps instead; the centre
    buffer is then left untouched (kept so checkpoints have the same keys).
    """

    center: torch.Tensor  # buffer registered in __init__

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

    @torch.no_grad()
    def targets(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(N, K) teacher logits -> (N, K) target distributions."""
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_out, teacher_temp, self.sk_iterations)
        return F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """centre <- m * centre + (1 - m) * mean over the GLOBAL batch (all ranks) of teacher logits.

        A batch with no rows on any rank (an iBOT step without a masked patch) leaves the centre as it is.
        """
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        # new_full is a device-side fill: unlike torch.tensor([...], device=...) it never blocks the host.
        count = batch_sum.new_full((1, 1), float(teacher_out.shape[0]))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        updated = self.center * self.center_momentum + batch_sum / count.clamp(min=1) * (1 - self.center_momentum)
        self.center.copy_(torch.where(count > 0, updated, self.center))


class DINOLoss(TeacherCentering):
    """Cross-entropy H(P_t, P_s) averaged over all (teacher view, student view) pairs of different views.

    Teacher outputs are centred (see :class:`TeacherCentering`) and sharpened with ``teacher_temp``; the
    student uses ``student_temp``. Teacher views are the first
    ``len(teacher_out)`` student views (the global crops), so pairs with the same index are skipped.
    """

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
        probs = self.targets(torch.cat(teacher_out), teacher_temp)
        return list(probs.split([t.shape[0] for t in teacher_out]))
