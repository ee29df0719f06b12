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


def test_head_batchnorm_matches_formula_and_uses_batch_statistics_in_eval_mode():
    """head.use_bn: Linear -> BN (biased batch variance, eps 1e-5) -> GELU per hidden layer, also for the
    eval-mode teacher (no running buffers that the EMA would not average)."""
    from geossl.models.head import DINOHead

    torch.manual_seed(0)
    head = DINOHead(8, 16, hidden_dim=12, bottleneck_dim=6, n_layers=3, use_bn=True).eval()
    with torch.no_grad():
        for m in head.mlp:
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(10, 8)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    norms = [m for m in head.mlp if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2 and all(n.running_mean is None for n in norms)
    h = x
    for i, lin in enumerate(linears):
        h = h @ lin.weight.T + lin.bias
        if i < 2:
            mean, var = h.mean(0), h.var(0, unbiased=False)
            h = (h - mean) / torch.sqrt(var + 1e-5) * norms[i].weight + norms[i].bias
            h = 0.5 * h * (1 + torch.erf(h / 2**0.5))
    h = h / h.norm(dim=1, keepdim=True)
    w = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), h @ w.T, rtol=1e-5, atol=1e-5)


def test_head_batchnorm_spreads_outputs_that_share_a_common_component():
    """Why the option exists: embeddings = one large shared vector + small differences (a random-init
    backbone) give a near-uniform centred teacher without BN and a sharper one with it."""
    from geossl.models.head import DINOHead

    torch.manual_seed(0)
    x = 10 * torch.randn(1, 32) + 0.1 * torch.randn(256, 32)

    def entropy(use_bn: bool) -> float:
        torch.manual_seed(1)
        head = DINOHead(32, 512, hidden_dim=64, bottleneck_dim=16, use_bn=use_bn).eval()
        with torch.no_grad():
            logits = head(x)
        p = torch.softmax((logits - logits.mean(0)) / 0.04, dim=1)
        return float(-(p * p.log()).sum(1).mean())

    ln_k = float(torch.log(torch.tensor(512.0)))
    assert entropy(False) > ln_k - 0.05
    assert entropy(True) < ln_k - 1.0
