"""Weighted k-NN classifier on frozen features, as in the DINO evaluation protocol.

Features are L2-normalised, similarity is cosine, the top-k train neighbours of each query vote for
their class with weight ``exp(sim / T)``. ``k`` is clipped to the train size: the original code
crashed when a small labelled set had fewer than ``k`` images. Ties in similarity are broken in
favour of the lower train index (stable sort), so results are reproducible across runs and devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int) -> None:
    if train_features.ndim != 2:
        raise ValueError(f"k-NN: train features must be (N, D), got shape {tuple(train_features.shape)}")
    if train_features.shape[0] == 0:
        raise ValueError("k-NN: the train set is empty")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"k-NN: {train_features.shape[0]} train features but labels of shape {tuple(train_labels.shape)}"
        )
    if num_classes < 1:
        raise ValueError(f"k-NN: num_classes must be >= 1, got {num_classes}")
    lo, hi = int(train_labels.min()), int(train_labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"k-NN: train labels span [{lo}, {hi}], outside [0, {num_classes - 1}]")


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Vote scores (Q, num_classes): sum over the top-k neighbours of ``exp(cos_sim / T)`` per class.

    Queries are processed in batches of ``batch_size`` so the (Q, N) similarity matrix never has to fit
    in memory at once. Runs on the device of ``train_features``.
    """
    _check(train_features, train_labels, num_classes)
    if k < 1:
        raise ValueError(f"k-NN: k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"k-NN: temperature must be > 0, got {temperature}")
    if query_features.ndim != 2 or query_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"k-NN: query features of shape {tuple(query_features.shape)} do not match "
            f"train features of dimension {train_features.shape[1]}"
        )
    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(device=device, dtype=torch.long)
    k_eff = min(int(k), train.shape[0])
    out = torch.zeros(query_features.shape[0], num_classes, dtype=torch.float32, device=device)
    for start in range(0, query_features.shape[0], max(1, int(batch_size))):
        q = F.normalize(query_features[start : start + batch_size].to(device).float(), dim=1)
        sim = q @ train.T  # (B, N) cosine similarities
        # A stable descending sort (not topk) so equal similarities resolve to the lower train index.
        top_sim, top_idx = torch.sort(sim, dim=1, descending=True, stable=True)
        top_sim, top_idx = top_sim[:, :k_eff], top_idx[:, :k_eff]
        weights = torch.exp(top_sim / temperature)
        out[start : start + q.shape[0]].scatter_add_(1, labels[top_idx], weights)
    return out


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of the weighted k-NN vote; equal scores go to the lower class."""
    if query_features.shape[0] == 0:
        raise ValueError("k-NN: no query features to evaluate")
    if query_labels.shape != (query_features.shape[0],):
        raise ValueError(
            f"k-NN: {query_features.shape[0]} query features but labels of shape {tuple(query_labels.shape)}"
        )
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k=k, temperature=temperature)
    pred = scores.argmax(dim=1).cpu()
    return int((pred == query_labels.cpu().long()).sum()) / int(query_labels.numel())
