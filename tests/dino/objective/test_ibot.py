"""iBOT: the masked timm forward, the masked-patch loss against a formula written here, and the wiring."""

import copy

import numpy as np
import pytest
import timm
import torch
from dino_helpers import TINY

from geossl.config import load_config
from geossl.dino.module import DINOModule
from geossl.dino.objective.ibot import IBOTPatchLoss, PatchMasks, select_patches
from geossl.models.backbone import forward_features_masked

STATS = {"bands": ["r", "g", "b"], "mean": [0.0] * 3, "std": [1.0] * 3, "p2": [0.0] * 3, "p98": [1.0] * 3}
IBOT = ["loss.ibot_weight=1.0", "loss.ibot_mask_probability=1.0"]


def tiny_module(extra=()):
    cfg = load_config(None, TINY + list(extra))
    module = DINOModule(cfg.to_dict(), 3, STATS["bands"], STATS, dataset_size=64, value_range=None)
    module.build_schedules(1)
    return module


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    args = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3, "num_classes": 0}
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kwargs}).eval()


# ----------------------------------------------------------------------------- masked forward
@pytest.mark.parametrize(("kwargs", "size"), [({"dynamic_img_size": True}, 32), ({"dynamic_img_size": True}, 16),
                                              ({"dynamic_img_size": False}, 32),
                                              ({"dynamic_img_size": True, "reg_tokens": 2}, 24)])
def test_unmasked_forward_is_timms_forward_features(kwargs, size):
    vit = tiny_vit(**kwargs)
    x = torch.randn(3, 3, size, size)
    n_patches = (size // 8) ** 2
    token = torch.randn(1, 48)
    with torch.no_grad():
        expected = vit.forward_features(x)
        assert torch.equal(forward_features_masked(vit, x), expected)
        assert torch.equal(forward_features_masked(vit, x, torch.zeros(3, n_patches, dtype=torch.bool), token), expected)


def _reference_masked(vit, x, mask, token):
    """Replace the masked patch embeddings by a hook on timm's own patch_embed, one position at a time."""
    def hook(module, inputs, output):
        out = output.clone()
        flat = out.view(out.shape[0], -1, out.shape[-1])  # NHWC or NLC: row-major over the grid either way
        for b, n in mask.nonzero().tolist():
            flat[b, n] = token[0]
        return out

    handle = vit.patch_embed.register_forward_hook(hook)
    try:
        return vit.forward_features(x)
    finally:
        handle.remove()


@pytest.mark.parametrize("dynamic", [True, False])
def test_masked_positions_use_the_mask_token(dynamic):
    vit = tiny_vit(dynamic_img_size=dynamic)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)  # 4 x 4 patches of 8 px
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 6]] = True
    mask[1, 15] = True
    token = torch.randn(1, 48)
    with torch.no_grad():
        ours = forward_features_masked(vit, x, mask, token)
        torch.testing.assert_close(ours, _reference_masked(vit, x, mask, token), rtol=0, atol=1e-6)
        # the pixels of a masked patch no longer matter; those of a visible patch do
        hidden = x.clone()
        hidden[0, :, 8:16, 8:16] += 5.0  # patch (1, 1) = index 5, masked in image 0
        assert torch.equal(forward_features_masked(vit, hidden, mask, token), ours)
        visible = x.clone()
        visible[1, :, 8:16, 8:16] += 5.0  # the same patch, visible in image 1
        assert not torch.allclose(forward_features_masked(vit, visible, mask, token)[1], ours[1])
        assert not torch.allclose(forward_features_masked(vit, x, mask, token + 1.0), ours)


# ----------------------------------------------------------------------------- the loss
def reference_ibot(student, teacher, masks, center, student_temp, teacher_temp, center_momentum):
    """iBOT / DINOv2 on full (n, N, K) outputs: per image, the mean cross-entropy over its masked patches;
    then the mean over ALL n images (an unmasked image contributes 0). Returns (loss, new centre)."""
    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    s, t, m = (np.asarray(a, dtype=np.float64) for a in (student, teacher, masks))
    total = 0.0
    for i in range(len(s)):
        positions = np.flatnonzero(m[i])
        if len(positions) == 0:
            continue
        q = softmax((t[i, positions] - center) / teacher_temp)
        logp = np.log(softmax(s[i, positions] / student_temp))
        total += np.sum(-q * logp, axis=-1).mean()
    masked_teacher = t[m.astype(bool)]
    new_center = center * center_momentum + masked_teacher.mean(axis=0, keepdims=True) * (1 - center_momentum)
    return total / len(s), new_center


@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
def test_loss_and_patch_centre_match_reference(teacher_temp):
    torch.manual_seed(2)
    n, n_patches, k = 5, 9, 16
    student, teacher = torch.randn(n, n_patches, k), torch.randn(n, n_patches, k)
    masks = torch.rand(n, n_patches) < 0.4
    masks[1] = False  # an unmasked image still counts in the mean over images
    masks[3] = True
    loss_fn = IBOTPatchLoss(k, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, k) * 0.2)
    center = loss_fn.center.numpy().copy()
    pm = PatchMasks.from_masks(masks)
    s_sel = select_patches(torch.cat([torch.randn(n, 1, k), student], dim=1), 1, pm.index)  # skip a CLS token
    t_sel = select_patches(teacher, 0, pm.index)
    assert torch.equal(s_sel, student[masks]) and torch.equal(t_sel, teacher[masks])  # row-major order
    loss = loss_fn(s_sel, t_sel, pm.weight, teacher_temp)
    ref_loss, ref_center = reference_ibot(student, teacher, masks, center, 0.1, teacher_temp, 0.9)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(loss_fn.center.numpy(), ref_center, rtol=1e-5, atol=1e-6)


def test_sinkhorn_targets_for_patches_and_no_masked_patch_at_all():
    from test_sinkhorn import reference_sinkhorn

    torch.manual_seed(3)
    s, t = torch.randn(7, 12), torch.randn(7, 12)
    weight = torch.rand(7)
    loss_fn = IBOTPatchLoss(12, centering="sinkhorn_knopp", sk_iterations=3)
    q = reference_sinkhorn(t.numpy(), 0.05, 3)  # B = the masked patches of the batch
    expected = np.sum(np.sum(-q * torch.log_softmax(s.double() / 0.1, -1).numpy(), axis=-1) * weight.numpy())
    assert loss_fn(s, t, weight, 0.05).item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(loss_fn.center, torch.zeros(1, 12))  # Sinkhorn-Knopp leaves the EMA centre alone
    ema = IBOTPatchLoss(12)
    ema.center.fill_(0.5)
    empty = torch.zeros(0, 12, requires_grad=True)
    assert ema(empty, torch.zeros(0, 12), torch.zeros(0), 0.04).item() == 0.0
    assert torch.equal(ema.center, torch.full((1, 12), 0.5))  # no masked patch: the centre stays


# ----------------------------------------------------------------------------- wiring
def _crops(seed=0):
    torch.manual_seed(seed)
    return [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(2)]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_without_ibot_the_step_and_the_checkpoint_keys_are_todays():
    """ibot_weight 0 (the default): no new parameter or buffer, and training_step's loss is bitwise the
    loss of today's step (augment with the step's generator, teacher on globals, student on all, DINO)."""
    module = tiny_module()
    assert not [k for k in module.state_dict() if "mask_token" in k or "ibot" in k]
    reference = copy.deepcopy(module)
    module.optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.0)
    batch = {"image": torch.rand(8, 3, 32, 32)}
    loss = module.training_step(batch, 0)

    seed, generator = reference._seeds(0)
    torch.manual_seed(seed)
    crops = reference.augment(batch["image"], generator=generator)
    with torch.no_grad():
        teacher_out, _ = reference.model.teacher(crops[:2])
    student_out, _ = reference.model.student(crops)
    expected = reference.dino_loss(student_out, teacher_out, reference.schedule_value("teacher_temp", 0))
    assert torch.equal(loss, expected)
    assert torch.equal(module.dino_loss.center, reference.dino_loss.center)


def test_ibot_term_gradients_and_last_layer_freeze():
    module = tiny_module(IBOT + ["loss.ibot_weight=0.5", "head.freeze_last_layer_epochs=1"])
    student, teacher = module.model.student, module.model.teacher
    assert student.ibot_head is not None and student.mask_token.shape == (1, 48)
    masks = module.draw_patch_masks(_crops()[0], seed=0)
    assert masks.masks.shape == (8, 16) and masks.n_masked > 0  # 2 x 4 global crops of 4 x 4 patches
    terms, _ = module.compute_losses(_crops(), 0.04, masks)
    assert terms["loss"].item() == pytest.approx((terms["dino"] + 0.5 * terms["ibot"]).item(), rel=1e-6)
    terms["loss"].backward()
    assert student.mask_token.grad is not None and student.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in student.ibot_head.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    module.configure_gradient_clipping(torch.optim.SGD(module.parameters(), lr=0.1))  # step 0: frozen
    assert student.ibot_head.last_layer.weight_v.grad is None and student.head.last_layer.weight_v.grad is None
    assert student.ibot_head.mlp[0].weight.grad is not None


def test_ibot_loss_in_the_step_matches_the_formula():
    """The step's iBOT term = the reference on the networks' own patch outputs: the student's from the
    masked global crops, the teacher's from the intact ones, each through its patch head."""
    module = tiny_module(IBOT + ["model.drop_path_rate=0.0"])
    crops = _crops(1)
    masks = module.draw_patch_masks(crops[0], seed=3)
    center = module.ibot_loss.center.numpy().copy()
    terms, _ = module.compute_losses(crops, 0.04, masks)
    with torch.no_grad():
        globals_ = torch.cat(crops[:2])
        s_tokens = forward_features_masked(module.model.student.backbone, globals_, masks.masks, module.model.student.mask_token)
        t_tokens = module.model.teacher.backbone.forward_features(globals_)
        student = module.model.student.ibot_head(s_tokens[:, 1:])
        teacher = module.model.teacher.ibot_head(t_tokens[:, 1:])
    ref, _ = reference_ibot(student, teacher, masks.masks, center, 0.1, 0.04, 0.9)
    assert terms["ibot"].item() == pytest.approx(ref, rel=1e-5)


def test_shared_head_and_sinkhorn_variants_build():
    module = tiny_module(IBOT + ["head.ibot_separate_head=false", "loss.centering=sinkhorn_knopp"])
    assert module.model.student.ibot_head is None
    assert module.model.student.patch_head is module.model.student.head
    crops = _crops()
    terms, _ = module.compute_losses(crops, 0.04, module.draw_patch_masks(crops[0], seed=0))
    assert torch.isfinite(terms["loss"]) and torch.equal(module.dino_loss.center, torch.zeros_like(module.dino_loss.center))


def test_exported_backbone_stays_plain_timm():
    module = tiny_module(IBOT)
    backbone = module.teacher_encoder().backbone
    plain = timm.create_model("vit_tiny_patch16_224", **module.model.backbone_kwargs)
    assert backbone.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(backbone.state_dict())  # strict


def test_patch_dropout_is_refused_with_ibot():
    with pytest.raises(ValueError, match="loss.ibot_weight"):
        tiny_module(IBOT + ["model.extra={depth: 2, embed_dim: 48, num_heads: 3, patch_drop_rate: 0.25}"])


@pytest.mark.slow
def test_resume_with_every_dinov2_term_is_bitwise(tmp_path):
    """KoLeo + iBOT + Sinkhorn-Knopp on: SIGTERM at step 2 then resume == 4 steps straight (masks are
    replayed from the step seed; the mask token, patch head and patch centre are in the checkpoint)."""
    from dino_helpers import SignalAt, make_patch_folder, tiny_config

    from geossl.dino.checkpoint import load_checkpoint_file
    from geossl.dino.train import pretrain

    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)  # 2 steps per epoch
    cfg = tiny_config(data, stats, ["optim.epochs=2", "loss.koleo_weight=0.1", "loss.ibot_weight=1.0",
                                    "loss.centering=sinkhorn_knopp"])
    assert pretrain(cfg, tmp_path / "straight")["steps"] == 4
    assert pretrain(cfg, tmp_path / "resumed", callbacks=[SignalAt(2)])["status"] == "interrupted"
    assert pretrain(cfg, tmp_path / "resumed")["status"] == "finished"
    a = load_checkpoint_file(tmp_path / "straight/checkpoints/last.ckpt")["state_dict"]
    b = load_checkpoint_file(tmp_path / "resumed/checkpoints/last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and "model.student.mask_token" in a and "ibot_loss.center" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
