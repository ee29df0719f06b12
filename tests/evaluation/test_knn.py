"""The weighted k-NN against an independent brute-force formula (loops, no torch ops beyond exp)."""

from __future__ import annotations

import math

import pytest
import torch

from geossl.evaluation.knn import knn_predict, knn_top1


def brute_force(train: list[list[float]], labels: list[int], query: list[list[float]], c: int, k: int, t: float):
    """DINO vote written from the definition: cosine sims, k best (ties -> lower index), sum exp(sim/T)."""
    def norm(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    tr = [norm(v) for v in train]
    out = []
    for q in query:
        qn = norm(q)
        sims = [(sum(a * b for a, b in zip(qn, v, strict=True)), i) for i, v in enumerate(tr)]
        sims.sort(key=lambda s: (-s[0], s[1]))
        scores = [0.0] * c
        for s, i in sims[: min(k, len(tr))]:
            scores[labels[i]] += math.exp(s / t)
        out.append(scores)
    return out


@pytest.mark.parametrize("k", [1, 5, 20, 500])  # 500 > n_train: must clip, not crash
def test_knn_matches_brute_force(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    train = torch.randn(60, 7, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    query = torch.randn(25, 7, generator=g)
    got = knn_predict(train, labels, query, num_classes=4, k=k, temperature=0.07, batch_size=8)
    want = torch.tensor(brute_force(train.tolist(), labels.tolist(), query.tolist(), 4, k, 0.07))
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-3)


def test_knn_ties_break_to_lower_index_and_scale_is_ignored() -> None:
    # Index 0 and 1 are the same direction (different lengths: cosine ignores scale) with different
    # labels; with k=1 the tie must resolve to index 0, as the brute force does.
    train = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([2, 1, 0])
    query = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
    got = knn_predict(train, labels, query, num_classes=3, k=1, temperature=0.07)
    want = torch.tensor(brute_force(train.tolist(), labels.tolist(), query.tolist(), 3, 1, 0.07))
    torch.testing.assert_close(got, want.float())
    assert got[0].argmax() == 2 and got[0, 1] == 0
    # k=2: both tied neighbours vote with the same weight exp(1/T).
    got2 = knn_predict(train, labels, query, num_classes=3, k=2, temperature=0.07)
    assert torch.isclose(got2[0, 1], got2[0, 2]) and torch.isclose(got2[0, 2], torch.tensor(math.exp(1 / 0.07)))


def test_knn_top1_few_train_images_and_perfect_clusters() -> None:
    # Three train images, k=20 (the original crashed here); queries are noisy copies.
    train = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    query = torch.eye(3) + 0.05
    assert knn_top1(train, labels, query, torch.tensor([0, 1, 2]), num_classes=3) == 1.0
    assert knn_top1(train, labels, query, torch.tensor([1, 2, 0]), num_classes=3) == 0.0


def test_knn_bad_inputs() -> None:
    with pytest.raises(ValueError, match="train set is empty"):
        knn_predict(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.randn(2, 4), 3)
    with pytest.raises(ValueError, match="outside"):
        knn_predict(torch.randn(3, 4), torch.tensor([0, 1, 5]), torch.randn(2, 4), 3)
    with pytest.raises(ValueError, match="do not match"):
        knn_predict(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(2, 5), 3)
    with pytest.raises(ValueError, match="no query"):
        knn_top1(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.zeros(0, 4), torch.zeros(0), 3)
