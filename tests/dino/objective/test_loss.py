"""DINO loss and centring against an independent transcription of the original formula (main_dino.py)."""

import math

import numpy as np
import pytest
import torch

from geossl.dino.objective.loss import DINOLoss


def reference_dino_loss(student, teacher, center, student_temp, teacher_temp, center_momentum):
    """Straight from the paper/original code, in numpy: returns (loss, new centre)."""
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    s = [np.asarray(v, dtype=np.float64) for v in student]
    t = [np.asarray(v, dtype=np.float64) for v in teacher]
    c = np.asarray(center, dtype=np.float64)
    total, n = 0.0, 0
    for iq, tq in enumerate(t):
        q = softmax((tq - c) / teacher_temp)
        for v, sv in enumerate(s):
            if v == iq:
                continue
            logp = np.log(softmax(sv / student_temp))
            total += np.mean(np.sum(-q * logp, axis=-1))
            n += 1
    new_center = c * center_momentum + np.concatenate(t).mean(axis=0, keepdims=True) * (1 - center_momentum)
    return total / n, new_center


@pytest.mark.parametrize("n_local", [0, 1, 6])
@pytest.mark.parametrize("teacher_temp", [0.04, 0.055, 0.07])
def test_loss_and_centre_match_reference(n_local, teacher_temp):
    torch.manual_seed(n_local)
    out_dim, batch = 32, 5
    loss_fn = DINOLoss(out_dim, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, out_dim) * 0.3)
    center_before = loss_fn.center.clone().numpy()
    student = [torch.randn(batch, out_dim) for _ in range(2 + n_local)]
    teacher = [torch.randn(batch, out_dim) for _ in range(2)]
    loss = loss_fn(student, teacher, teacher_temp)
    ref_loss, ref_center = reference_dino_loss(
        [s.numpy() for s in student], [t.numpy() for t in teacher], center_before, 0.1, teacher_temp, 0.9
    )
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(loss_fn.center.numpy(), ref_center, rtol=1e-5, atol=1e-6)


def test_same_view_pairs_are_skipped():
    """With 2 global views there are exactly two cross terms, H(t1, s2) and H(t2, s1), averaged."""
    out_dim = 8
    torch.manual_seed(1)
    g1, g2 = torch.randn(4, out_dim), torch.randn(4, out_dim)
    loss = DINOLoss(out_dim)([g1, g2], [g1, g2], 0.04)

    def cross_entropy(t, s):
        q = torch.softmax(t / 0.04, dim=-1)
        return torch.sum(-q * torch.log_softmax(s / 0.1, dim=-1), dim=-1).mean()

    expected = (cross_entropy(g1, g2) + cross_entropy(g2, g1)) / 2
    with_same_view = (cross_entropy(g1, g1) + cross_entropy(g1, g2) + cross_entropy(g2, g1) + cross_entropy(g2, g2)) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() != pytest.approx(with_same_view.item(), rel=1e-3)


def test_loss_is_ln_k_for_uniform_outputs():
    """With constant logits (a freshly initialised head is close to this), the loss is exactly ln K."""
    out_dim = 4096
    loss_fn = DINOLoss(out_dim)
    views = [torch.zeros(3, out_dim) for _ in range(4)]
    assert loss_fn(views, views[:2], 0.04).item() == pytest.approx(math.log(out_dim), rel=1e-6)


def test_loss_is_near_ln_k_at_initialisation():
    """A real initial student/teacher (shared weights, last layer trunc-normal 0.02) starts near ln K."""
    from geossl.config import load_config
    from geossl.dino.meta_arch import StudentTeacher

    cfg = load_config(None, ["model.arch=vit_tiny_patch16_224", "model.extra={depth: 2}", "augment.global_size=32",
                             "head.out_dim=1024", "head.hidden_dim=64", "head.bottleneck_dim=32"])
    torch.manual_seed(0)
    model = StudentTeacher(cfg, in_chans=4)
    crops = [torch.randn(8, 4, 32, 32) for _ in range(2)] + [torch.randn(8, 4, 16, 16) for _ in range(2)]
    with torch.no_grad():
        teacher, _ = model.teacher(crops[:2])
        student, _ = model.student(crops)
    loss = DINOLoss(1024)(student, teacher, 0.04)
    assert abs(loss.item() - math.log(1024)) < 0.05 * math.log(1024)


def test_gradient_flows_to_student_only():
    loss_fn = DINOLoss(16)
    student = [torch.randn(2, 16, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 16, requires_grad=True) for _ in range(2)]
    loss_fn(student, teacher, 0.04).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)
