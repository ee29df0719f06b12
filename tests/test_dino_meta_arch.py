"""Student/teacher mechanics against formulas written here: copy, no gradients, EMA, freeze, clipping."""

import torch
from dino_helpers import TINY

from geossl.config import load_config
from geossl.dino.module import DINOModule
from geossl.models.head import WeightNormLinear

STATS = {"bands": ["r", "g", "b"], "mean": [0.0] * 3, "std": [1.0] * 3, "p2": [0.0] * 3, "p98": [1.0] * 3}


def tiny_module(extra=()):
    cfg = load_config(None, TINY + list(extra))
    module = DINOModule(cfg.to_dict(), 3, STATS["bands"], STATS, dataset_size=64, value_range=None)
    module.build_schedules(1)
    return module


def test_teacher_is_an_independent_copy_without_gradients():
    model = tiny_module().model
    for (ns, ps), (nt, pt) in zip(model.student.named_parameters(), model.teacher.named_parameters(), strict=True):
        assert ns == nt and torch.equal(ps, pt)
        assert ps.data_ptr() != pt.data_ptr(), f"{ns}: teacher shares storage with the student"
        assert not pt.requires_grad
    with torch.no_grad():
        next(model.student.parameters()).add_(1.0)
    assert not torch.equal(next(model.student.parameters()), next(model.teacher.parameters()))
    model.train()
    assert not model.teacher.training and model.student.training
    # the teacher has no drop-path; the student has
    assert all(type(b.drop_path1).__name__ == "Identity" for b in model.teacher.backbone.blocks)
    assert any(type(b.drop_path1).__name__ == "DropPath" for b in model.student.backbone.blocks)


def test_ema_update_matches_formula():
    model = tiny_module().model
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    before_t = [p.clone() for p in model.teacher.parameters()]
    student = [p.clone() for p in model.student.parameters()]
    model.update_teacher(0.9)
    for t0, s, t1 in zip(before_t, student, model.teacher.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)


def _backward(module):
    crops = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(2)]
    with torch.no_grad():
        teacher_out, _ = module.model.teacher(crops[:2])
    student_out, _ = module.model.student(crops)
    module.dino_loss(student_out, teacher_out, 0.04).backward()


def test_last_layer_freeze_hits_the_student_only():
    module = tiny_module(["head.freeze_last_layer_epochs=1"])
    _backward(module)
    last = module.model.student.head.last_layer
    assert last.weight_v.grad is not None
    module.configure_gradient_clipping(torch.optim.SGD(module.parameters(), lr=0.1))  # step 0: first epoch
    assert last.weight_v.grad is None and last.weight_g.grad is None
    assert all(p.grad is not None for p in module.model.student.head.mlp.parameters())
    assert all(p.grad is None for p in module.model.teacher.parameters())

    # after the freeze period the last layer keeps its gradient
    module2 = tiny_module(["head.freeze_last_layer_epochs=0"])
    _backward(module2)
    module2.configure_gradient_clipping(torch.optim.SGD(module2.parameters(), lr=0.1))
    assert module2.model.student.head.last_layer.weight_v.grad is not None


def test_per_parameter_clipping_matches_original():
    module = tiny_module(["optim.clip_grad=0.05", "head.freeze_last_layer_epochs=0"])
    _backward(module)
    grads = {n: p.grad.clone() for n, p in module.model.student.named_parameters() if p.grad is not None}
    module.configure_gradient_clipping(torch.optim.SGD(module.parameters(), lr=0.1))
    clipped = 0
    for name, p in module.model.student.named_parameters():
        if name not in grads:
            continue
        g = grads[name]
        coef = 0.05 / (g.norm(2) + 1e-6)  # main_dino.py utils.clip_gradients
        expected = g * coef if coef < 1 else g
        clipped += int(coef < 1)
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-8)
    assert clipped > 0


def test_weight_norm_layer_keys_and_formula():
    layer = WeightNormLinear(8, 5, norm_fixed=True)
    assert set(dict(layer.named_parameters())) == {"weight_v", "weight_g"}
    assert not layer.weight_g.requires_grad
    w = layer.weight_g * layer.weight_v / layer.weight_v.norm(dim=1, keepdim=True)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x @ w.T)
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(5))
