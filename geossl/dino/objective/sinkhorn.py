"""Sinkhorn-Knopp centring of teacher outputs (SwAV, Caron et al. 2020; DINOv2, Oquab et al. 2023).

Instead of subtracting an EMA centre, the teacher's batch of scores is turned into a soft assignment
whose prototypes are used equally (each gets ~B/K of the mass) and whose rows are distributions. This
prevents collapse onto a few prototypes without a centre that lags behind the teacher, which DINOv2
found to work better (its ``sinkhorn_knopp_teacher`` with 3 iterations).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def _row_logsumexp(log_q: torch.Tensor) -> torch.Tensor:
    """(K, 1) log of each prototype's total mass over the GLOBAL batch (a stable all-reduced logsumexp)."""
    if log_q.shape[1]:
        peak = log_q.amax(dim=1, keepdim=True)
    else:  # this rank holds no samples
        peak = log_q.new_full((log_q.shape[0], 1), float("-inf"))
    peak = _all_reduce(peak, dist.ReduceOp.MAX)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return peak + torch.log(_all_reduce(torch.exp(log_q - peak).sum(dim=1, keepdim=True)))


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, n_iterations: int = 3) -> torch.Tensor:
    """Teacher targets (B, K) whose rows sum to 1 and whose columns sum to about B / K.

    ``logits``: (B_rank, K) teacher scores of this rank; every sum runs over the GLOBAL batch (all ranks
    when ``torch.distributed`` is initialised), so B is the all-reduced row count; ranks may hold
    different numbers of rows (iBOT's masked patches), even none. The iterations are DINOv2's
    ``sinkhorn_knopp_teacher``: ``Q = exp(logits / T)``, then ``n_iterations`` times make each
    prototype's mass 1/K and each sample's mass 1/B; finally multiply by B so rows are distributions.

    Computed in the log domain: the same iterations, but ``exp`` of scores / 0.04 can neither overflow
    (DINOv2's form fails once a logit exceeds ~3.5 at T = 0.04) nor underflow a whole sample to 0/0.
    DINOv2's initial scaling to total mass 1 is a constant that the first prototype step removes, so
    it is left out.
    """
    if n_iterations < 1:
        raise ValueError("loss.sk_iterations must be >= 1")
    log_q = (logits.float() / temperature).t()  # (K, B), the paper's notation
    log_k = math.log(log_q.shape[0])
    log_b = torch.log(_all_reduce(log_q.new_full((), float(log_q.shape[1]))))  # B: samples over all ranks
    for _ in range(n_iterations):
        log_q = log_q - _row_logsumexp(log_q) - log_k  # each prototype: mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b  # each sample: mass 1/B
    return torch.exp(log_q + log_b).t()
