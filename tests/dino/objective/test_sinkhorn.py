"""Sinkhorn-Knopp teacher centring against an independent numpy transcription of SwAV/DINOv2's iterations."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geossl.config import ConfigError, load_config
from geossl.dino.objective.loss import DINOLoss
from geossl.dino.objective.sinkhorn import sinkhorn_knopp


def reference_sinkhorn(logits, temperature, n_iterations):
    """DINOv2 ``sinkhorn_knopp_teacher`` on one process, float64, no max shift."""
    q = np.exp(np.asarray(logits, dtype=np.float64) / temperature).T  # K x B
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    q *= b
    return q.T


@pytest.mark.parametrize("n_iterations", [1, 3, 7])
@pytest.mark.parametrize(("batch", "k", "temp"), [(16, 64, 0.04), (40, 8, 0.1), (5, 300, 0.07)])
def test_matches_reference(n_iterations, batch, k, temp):
    torch.manual_seed(batch + k)
    logits = torch.randn(batch, k) * 0.5
    ours = sinkhorn_knopp(logits, temp, n_iterations)
    np.testing.assert_allclose(ours.numpy(), reference_sinkhorn(logits.numpy(), temp, n_iterations), rtol=2e-4, atol=1e-7)


def test_rows_are_distributions_and_prototypes_are_equipartitioned():
    """After the final (column) step every sample's targets sum to 1; each prototype gets about B/K."""
    torch.manual_seed(0)
    batch, k = 64, 16
    logits = torch.nn.functional.normalize(torch.randn(batch, 8), dim=-1) @ torch.nn.functional.normalize(
        torch.randn(k, 8), dim=-1).T  # cosines, as the weight-normalised head gives
    q = sinkhorn_knopp(logits, 0.1, 3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch), rtol=0, atol=1e-5)
    per_prototype = q.sum(dim=0)
    np.testing.assert_allclose(per_prototype.numpy(), batch / k, rtol=0.35)  # 3 steps: B/K-ish (0.82-1.29 here)
    softmax_spread = torch.softmax(logits / 0.1, dim=-1).sum(dim=0).std()
    assert per_prototype.std() < 0.4 * softmax_spread  # far more balanced than the plain softmax
    converged = sinkhorn_knopp(logits, 0.1, 200).sum(dim=0)
    np.testing.assert_allclose(converged.numpy(), batch / k, rtol=1e-4)


def test_extreme_logits_stay_finite():
    """Log-domain iterations: logits / T far beyond exp's float32 range neither overflow (DINOv2's form
    would give inf / inf) nor underflow a sample far below the others to 0 / 0; a constant shift of all
    logits changes nothing but rounding."""
    torch.manual_seed(1)
    logits = torch.randn(12, 20) * 5
    shifted = sinkhorn_knopp(logits + 100.0, 0.04, 3)
    assert torch.isfinite(shifted).all()
    torch.testing.assert_close(shifted, sinkhorn_knopp(logits, 0.04, 3), rtol=1e-3, atol=1e-6)
    logits[3] -= 1000.0  # one sample scores far below every other on every prototype
    q = sinkhorn_knopp(logits, 0.04, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))
    assert sinkhorn_knopp(torch.zeros(0, 20), 0.04, 3).shape == (0, 20)


def test_dino_loss_with_sinkhorn_targets_leaves_the_centre_alone():
    torch.manual_seed(2)
    k, batch = 32, 6
    loss_fn = DINOLoss(k, centering="sinkhorn_knopp", sk_iterations=3)
    student = [torch.randn(batch, k) for _ in range(4)]
    teacher = [torch.randn(batch, k) for _ in range(2)]
    loss = loss_fn(student, teacher, 0.05)
    q = reference_sinkhorn(torch.cat(teacher).numpy(), 0.05, 3)  # both global views form one batch of 2B
    qs = [q[:batch], q[batch:]]
    total, n = 0.0, 0
    for iq in range(2):
        for v, s in enumerate(student):
            if v == iq:
                continue
            logp = torch.log_softmax(s.double() / 0.1, dim=-1).numpy()
            total += np.mean(np.sum(-qs[iq] * logp, axis=-1))
            n += 1
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert torch.equal(loss_fn.center, torch.zeros(1, k))


def test_centering_key_is_validated():
    with pytest.raises(ConfigError, match="key 'loss.centering'"):
        load_config(None, ["loss.centering=sinkhorn"])
    with pytest.raises(ConfigError, match="key 'loss.sk_iterations'"):
        load_config(None, ["loss.centering=sinkhorn_knopp", "loss.sk_iterations=0"])
    assert load_config(None, ["loss.centering=sinkhorn_knopp"]).loss.sk_iterations == 3


def _sk_worker(rank: int, world: int, port: int, parts: list, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.save(sinkhorn_knopp(parts[rank], 0.07, 3), Path(result_dir) / f"q{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes (~4-5 s): in make test, not the fast lane
def test_sums_run_over_all_ranks(tmp_path):
    """Ranks with different numbers of rows (iBOT's masked patches; one with none) get the rows of the
    single-process result on the concatenated batch: B is the global count, every sum all-reduced."""
    from dino_helpers import free_port

    torch.manual_seed(3)
    parts = [torch.randn(5, 10) * 0.5, torch.randn(9, 10) * 0.5 + 0.3, torch.zeros(0, 10)]
    mp.spawn(_sk_worker, args=(3, free_port(), parts, str(tmp_path)), nprocs=3, join=True)
    expected = reference_sinkhorn(torch.cat(parts).numpy(), 0.07, 3)
    ours = torch.cat([torch.load(tmp_path / f"q{r}.pt", weights_only=True) for r in range(3)])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=2e-4, atol=1e-7)
