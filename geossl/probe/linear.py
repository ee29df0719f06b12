"""Linear probe: multinomial logistic regression on standardised frozen features, L2 strength swept on val.

We solve the convex problem ``mean CE + wd/2 * ||W||^2`` with full-batch L-BFGS (as DINOv2's
logistic-regression sweep does) instead of SGD over learning rates: no learning rate or epoch count
to tune, the optimum is unique, and reruns give the same head. The sweep runs from strong to weak
regularisation, warm-starting each fit from the previous one, and picks the weight decay with the best
*validation* accuracy; the test split is never seen here.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geossl.choices import PROBE_WEIGHT_DECAYS
from geossl.models.landcover import LinearHead

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = PROBE_WEIGHT_DECAYS


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction correct, computed from integer counts (exact, unlike a float32 mean)."""
    return int((logits.argmax(dim=1).cpu() == labels.cpu()).sum()) / max(int(labels.numel()), 1)


def fit_logistic(
    head: LinearHead,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    max_iter: int = 100,
) -> int:
    """Fit ``head.linear`` in place on features ``x`` (standardised by the head); returns L-BFGS steps taken.

    The bias is not regularised (a class prior should not shrink towards uniform).
    """
    z = (x.float() - head.mean) / head.std
    params = [head.linear.weight, head.linear.bias]
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-5, tolerance_change=1e-9,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head.linear(z), y) + 0.5 * weight_decay * head.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    state = opt.state[params[0]]
    return int(state.get("n_iter", 0))


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    weight_decays: tuple[float, ...] | list[float] = DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 100,
) -> tuple[LinearHead, dict[str, Any]]:
    """Sweep weight decay, choose on val, return the chosen head (on the CPU) and a sweep report.

    Ties on val accuracy go to the stronger regularisation (earlier in the strong-to-weak order).
    """
    if train_x.shape[0] == 0 or val_x.shape[0] == 0:
        raise ValueError("linear probe: the train and val splits must both be non-empty")
    if int(train_y.max()) >= num_classes or int(train_y.min()) < 0:
        raise ValueError(f"linear probe: train labels outside [0, {num_classes - 1}]")
    device = train_x.device
    train_y, val_y = train_y.to(device).long(), val_y.to(device).long()
    order = sorted({float(w) for w in weight_decays}, reverse=True)
    if not order:
        raise ValueError("linear probe: empty weight-decay grid")
    head = LinearHead(train_x.shape[1], num_classes).to(device)
    head.set_standardization(train_x)
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)
    sweep: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_val = -1.0
    for wd in order:
        start = time.perf_counter()
        steps = fit_logistic(head, train_x, train_y, wd, max_iter=max_iter)
        with torch.no_grad():
            train_acc, val_acc = top1(head(train_x), train_y), top1(head(val_x), val_y)
        sweep.append({"weight_decay": wd, "train_top1": train_acc, "val_top1": val_acc,
                      "lbfgs_steps": steps, "seconds": round(time.perf_counter() - start, 3)})
        if val_acc > best_val:
            best_val = val_acc
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    assert best_state is not None
    head.load_state_dict(best_state)
    chosen = max(sweep, key=lambda r: (r["val_top1"], r["weight_decay"]))
    info = {"method": "logistic regression (L-BFGS), features standardised with train mean/std",
            "chosen": {"weight_decay": chosen["weight_decay"]}, "val_top1": chosen["val_top1"], "sweep": sweep}
    return head.cpu().eval(), info


def balanced_indices(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` random examples of every class (all of them when None)."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))
