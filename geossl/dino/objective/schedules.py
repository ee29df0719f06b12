"""Per-step schedules, precomputed like the original DINO so that a resumed run indexes the same values."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warmup from ``start_warmup_value`` to ``base_value``, then a half cosine to ``final_value``.

    Same formula as DINO's ``cosine_scheduler`` (lr, weight decay and teacher momentum all use it):
    ``final + 0.5 (base - final) (1 + cos(pi * i / n))`` for the i-th of the n post-warmup steps.
    """
    if total_steps < 1:
        raise ValueError("a schedule needs at least one step")
    warmup_steps = int(min(max(warmup_steps, 0), total_steps))
    warmup = np.linspace(start_warmup_value, base_value, warmup_steps, endpoint=False)
    n = total_steps - warmup_steps
    iters = np.arange(n)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(n, 1)))
    return np.concatenate([warmup, cosine]).astype(np.float64)


def linear_warmup_constant(start_value: float, final_value: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Teacher temperature: linear from ``start_value`` to ``final_value`` over ``warmup_steps``, then constant.

    The original steps this once per epoch; per step gives the same values at epoch boundaries
    (up to the linspace endpoint convention) without jumps.
    """
    warmup_steps = int(min(max(warmup_steps, 0), total_steps))
    warmup = np.linspace(start_value, final_value, warmup_steps, endpoint=False)
    return np.concatenate([warmup, np.full(total_steps - warmup_steps, final_value)]).astype(np.float64)
