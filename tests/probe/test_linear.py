"""Linear probe: learns separable data, selects on val (never test), metrics match hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geossl.probe import cli as probe_cli
from geossl.probe.linear import DEFAULT_WEIGHT_DECAYS, balanced_indices, fit_linear_probe, top1
from geossl.probe.metrics import confusion_matrix, per_class_report


def blobs(n_per_class: list[int], dim: int = 16, seed: int = 0, spread: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around well-separated centres (fixed centres, so calls with other seeds share them)."""
    centres = torch.randn(len(n_per_class), dim, generator=torch.Generator().manual_seed(123)) * 4 + 10
    g = torch.Generator().manual_seed(seed)
    xs = [centres[c] + spread * torch.randn(n, dim, generator=g) for c, n in enumerate(n_per_class)]
    ys = [torch.full((n,), c) for c, n in enumerate(n_per_class)]
    return torch.cat(xs), torch.cat(ys)


def test_learns_separable_blobs() -> None:
    x, y = blobs([60, 60, 60, 60], seed=0)
    xv, yv = blobs([20, 20, 20, 20], seed=1)
    xt, yt = blobs([50, 50, 50, 50], seed=2)
    head, info = fit_linear_probe(x, y, xv, yv, num_classes=4)
    assert top1(head(xt), yt) >= 0.99
    assert info["val_top1"] >= 0.99
    assert [r["weight_decay"] for r in info["sweep"]] == sorted(DEFAULT_WEIGHT_DECAYS, reverse=True)
    # Standardisation lives in the head: train features have mean ~0 / std ~1 after it.
    z = (x - head.mean) / head.std
    assert torch.allclose(z.mean(0), torch.zeros(16), atol=1e-4) and torch.allclose(z.std(0, unbiased=False), torch.ones(16), atol=1e-3)


def test_sweep_chooses_on_val_not_test() -> None:
    # Train: class 0 is the majority. Val labels are SWAPPED, so the good (weakly regularised) head
    # scores 0 % on val while an over-regularised head that always says "class 0" scores 50 %.
    # A sweep that peeks at test would pick the weak decay (100 % on test); one that uses val must
    # pick the strong decay, and the head it returns is then worse on test.
    x, y = blobs([60, 40], seed=0)
    xv, yv = blobs([20, 20], seed=1)
    xt, yt = blobs([50, 50], seed=2)
    grid = [1e-4, 1e3]
    head, info = fit_linear_probe(x, y, xv, 1 - yv, num_classes=2, weight_decays=grid)
    assert info["chosen"]["weight_decay"] == 1e3
    by_wd = {r["weight_decay"]: r["val_top1"] for r in info["sweep"]}
    assert by_wd[1e-4] == 0.0 and by_wd[1e3] == 0.5
    good, _ = fit_linear_probe(x, y, xv, yv, num_classes=2, weight_decays=[1e-4])
    assert top1(good(xt), yt) == 1.0
    assert top1(head(xt), yt) == 0.5


def test_bad_inputs() -> None:
    x, y = blobs([5, 5])
    with pytest.raises(ValueError, match="non-empty"):
        fit_linear_probe(x, y, x[:0], y[:0], num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        fit_linear_probe(x, y + 5, x, y, num_classes=2)


def test_balanced_indices() -> None:
    labels = np.array([0] * 30 + [1] * 7 + [2] * 12)
    idx = balanced_indices(labels, 5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 5, 5]
    assert not np.array_equal(idx, balanced_indices(labels, 5, seed=1))
    assert np.array_equal(idx, balanced_indices(labels, 5, seed=0))
    assert balanced_indices(labels, None, seed=0).size == labels.size


def test_confusion_and_per_class_report() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    rep = per_class_report(cm, ["a", "b", "c", "d"])
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert rep["per_class"]["b"]["precision"] == 0.5 and rep["per_class"]["c"]["precision"] == 0.5
    assert rep["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_cli_parses_label_budgets() -> None:
    # the CLI's choices and defaults are geossl.choices' constants (tests/test_choices.py)
    assert probe_cli.parse_budgets("5, 10,all") == [5, 10, None]
