"""KoLeo regulariser against a brute-force numpy reference, and its wiring into the training loss."""

import numpy as np
import pytest
import torch
from dino_helpers import TINY

from geossl.config import ConfigError, load_config
from geossl.dino.module import DINOModule
from geossl.dino.objective.koleo import koleo_loss

STATS = {"bands": ["r", "g", "b"], "mean": [0.0] * 3, "std": [1.0] * 3, "p2": [0.0] * 3, "p98": [1.0] * 3}


def reference_koleo(x, eps=1e-8):
    """Sablayrolles et al. 2019: -mean_i log(min_{j != i} ||x_i - x_j|| + eps) on L2-normalised rows."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    nearest = []
    for i in range(n):
        nearest.append(min(np.linalg.norm(x[i] - x[j]) for j in range(n) if j != i))
    return -np.mean(np.log(np.asarray(nearest) + eps))


@pytest.mark.parametrize(("n", "d"), [(2, 3), (7, 16), (33, 8)])
def test_matches_brute_force_reference(n, d):
    torch.manual_seed(n)
    x = torch.randn(n, d) * 3.0  # not normalised: the loss normalises
    assert koleo_loss(x).item() == pytest.approx(reference_koleo(x.numpy()), rel=1e-5)


def test_spreading_lowers_the_loss_and_duplicates_stay_finite():
    torch.manual_seed(0)
    x = torch.randn(16, 8, requires_grad=True)
    before = koleo_loss(x)
    before.backward()
    with torch.no_grad():
        after = koleo_loss(x - 0.05 * x.grad)
    assert after < before  # gradient descent pushes nearest neighbours apart
    twins = torch.randn(4, 8).repeat(2, 1).requires_grad_(True)  # every sample has an exact duplicate
    loss = koleo_loss(twins)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(twins.grad).all()


def test_runs_in_float32_under_autocast():
    torch.manual_seed(1)
    x = torch.randn(10, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = koleo_loss(x.bfloat16())
    assert inside.dtype == torch.float32
    assert inside.item() == pytest.approx(reference_koleo(x.bfloat16().float().numpy()), rel=1e-5)


def test_config_keys_are_validated():
    with pytest.raises(ConfigError, match="key 'loss.koleo_weight'"):
        load_config(None, ["loss.koleo_weight=-0.1"])
    with pytest.raises(ConfigError, match="key 'loss.koleo_weight'"):
        load_config(None, ["loss.koleo_weight=0.1", "data.batch_size=1"])
    assert load_config().loss.koleo_weight == 0.0  # off by default


def test_wired_on_the_students_global_cls_embeddings():
    """total = DINO + w * (KoLeo(global crop 1) + KoLeo(global crop 2)) on the student's backbone CLS
    embeddings, as DINOv2 sums it over the global crops."""
    cfg = load_config(None, TINY + ["loss.koleo_weight=0.3", "model.drop_path_rate=0.0"])
    module = DINOModule(cfg.to_dict(), 3, STATS["bands"], STATS, dataset_size=64)
    torch.manual_seed(0)
    crops = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(2)]
    terms, _ = module.compute_losses(crops, 0.04)
    with torch.no_grad():
        embeddings = [module.model.student.backbone(c) for c in crops[:2]]
    expected = sum(reference_koleo(e.numpy()) for e in embeddings)
    assert terms["koleo"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["loss"].item() == pytest.approx((terms["dino"] + 0.3 * terms["koleo"]).item(), rel=1e-6)
    assert "ibot" not in terms
