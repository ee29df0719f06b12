"""Fine-tuning's numerical pieces against formulas written here: layer-wise learning rates, the schedule,
soft-target loss, the dihedral group, the resized crop, mixup/cutmix, and LoRA merged into the weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.synthetic import make_tiny_encoder
from geossl.finetune.augment import (
    crop_boxes,
    dihedral,
    mix_batch,
    resized_crop,
    soft_targets,
    step_generator,
)
from geossl.finetune.module import lr_at
from geossl.finetune.network import (
    ClassifierNet,
    apply_mode,
    merged_backbone,
    param_groups,
    trainable_encoder,
)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc", 3, img_size=32, patch_size=8, depth=3)


def _net(encoder_dir, mode="full", **kw) -> ClassifierNet:
    net = ClassifierNet(trainable_encoder(str(encoder_dir), 0.0, seed=0), 5, "cls_avgpool")
    apply_mode(net, mode, **kw)
    return net


def test_layer_wise_learning_rates_follow_the_reference_formula(encoder_dir):
    net, lr, decay, depth = _net(encoder_dir), 1e-3, 0.6, 3
    lr_of, wd_of = {}, {}
    for group in param_groups(net, lr, weight_decay=0.05, layer_decay=decay):
        for p in group["params"]:
            lr_of[id(p)], wd_of[id(p)] = group["lr"], group["weight_decay"]

    def expected(name: str) -> float:  # timm's convention: the last block and the final norm at the full rate
        if name.startswith("encoder.backbone.blocks."):
            return lr * decay ** (depth - 1 - int(name.split(".")[3]))
        if name.startswith(("encoder.backbone.patch_embed", "encoder.backbone.cls_token", "encoder.backbone.pos_embed")):
            return lr * decay**depth
        return lr  # final norm, head

    named = list(net.named_parameters())
    assert len(lr_of) == len(named)  # every trainable weight is in exactly one group
    for name, p in named:
        assert lr_of[id(p)] == pytest.approx(expected(name), rel=1e-12), name
        no_decay = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        assert wd_of[id(p)] == (0.0 if no_decay else 0.05), name


def test_last_n_trains_only_the_last_blocks_norm_and_head(encoder_dir):
    net = _net(encoder_dir, "last_n", last_n=1)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("encoder.backbone.blocks.2.", "encoder.backbone.norm.", "head."))
                             for n in trainable)
    grouped = {id(p) for g in param_groups(net, 1e-3, 0.05, 0.75) for p in g["params"]}
    assert grouped == {id(p) for n, p in net.named_parameters() if p.requires_grad}


def test_lora_merged_weights_equal_the_unmerged_forward(encoder_dir):
    net = _net(encoder_dir, "lora", lora_rank=4, lora_alpha=8.0)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero: give the adapters something to merge
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    net.eval()
    x = torch.rand(2, 3, 32, 32) * 255
    unmerged = net.encoder.backbone(net.encoder.normalize(x))
    merged = merged_backbone(net)
    assert "lora" not in " ".join(merged.state_dict().keys())
    assert torch.allclose(merged(net.encoder.normalize(x)), unmerged, atol=1e-5)
    # the merged qkv of block 0 is W + (alpha / r) B A, written out by hand
    base = net.encoder.backbone.get_base_model().blocks[0].attn.qkv
    w, a, b = base.base_layer.weight, base.lora_A["default"].weight, base.lora_B["default"].weight
    assert torch.allclose(merged.blocks[0].attn.qkv.weight, w + (8.0 / 4) * b @ a, atol=1e-6)
    # training keeps its adapters (the merge works on a copy)
    assert any("lora_A" in n for n, _ in net.named_parameters())


def test_schedule_is_linear_warmup_then_cosine():
    total, warm, peak, floor = 100, 10, 2e-3, 1e-5
    for step in (0, 5, 10, 37, 99, 100, 150):
        if step < warm:
            ref = peak * step / warm
        else:
            t = min(1.0, (step - warm) / (total - warm))
            ref = floor + (peak - floor) * (1 + math.cos(math.pi * t)) / 2
        assert lr_at(step, total, warm, peak, floor) == pytest.approx(ref, rel=1e-12)


def test_soft_targets_with_smoothing_equal_pytorch_label_smoothing():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 7), torch.randint(0, 7, (16,))
    soft = soft_targets(labels, 7, 0.1)
    ours = torch.sum(-soft * F.log_softmax(logits, -1), -1).mean()
    assert torch.allclose(ours, F.cross_entropy(logits, labels, label_smoothing=0.1), atol=1e-6)
    assert torch.allclose(soft.sum(-1), torch.ones(16))


def test_dihedral_applies_each_group_element():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4).repeat(8, 1, 1, 1)
    out = dihedral(x, torch.arange(8))
    img = x[0]
    for k in range(8):
        ref = torch.rot90(img, k % 4, dims=(1, 2))
        if k >= 4:
            ref = torch.flip(ref, dims=(2,))
        assert torch.equal(out[k], ref), k
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8  # eight distinct images


def test_resized_crop_reference():
    ramp = torch.arange(8, dtype=torch.float32).view(1, 1, 1, 8).expand(1, 3, 8, 8).contiguous()
    whole = resized_crop(ramp, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    assert torch.allclose(whole, ramp, atol=1e-5)  # the whole tile is the identity
    half = resized_crop(ramp, torch.tensor([[0.0, 0.0, 4.0, 8.0]]))  # left half stretched 2x: x_out -> x_out / 2
    ref = (torch.arange(8, dtype=torch.float32) + 0.5) / 2 - 0.5  # pixel centres mapped back, bilinear
    assert torch.allclose(half[0, 0, 0, 1:-1], ref[1:-1], atol=1e-5)
    g = step_generator(0, 3)
    boxes = crop_boxes(500, 64, 64, (0.25, 0.5), (0.75, 4 / 3), g)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 64**2
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64 + 1e-4).all()
    assert area.min() >= 0.25 - 1e-4 and area.max() <= 0.5 + 1e-4
    assert torch.equal(boxes, crop_boxes(500, 64, 64, (0.25, 0.5), (0.75, 4 / 3), step_generator(0, 3)))


def test_mixup_and_cutmix_targets_weigh_what_the_pixels_show():
    x = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mixed, targets = mix_batch(x, t, 0.0, 1.0, seed=4)  # cutmix only
    share_from_partner = mixed[0].mean().item()  # sample 0 is zeros, its partner (sample 1) ones
    assert targets[0, 1].item() == pytest.approx(share_from_partner, abs=1e-6)
    mixed, targets = mix_batch(x, t, 0.4, 0.0, seed=4)  # mixup only
    assert targets[0, 1].item() == pytest.approx(mixed[0, 0, 0, 0].item(), abs=1e-6)
    assert torch.allclose(targets.sum(-1), torch.ones(2))
    same, same_t = mix_batch(x, t, 0.0, 0.0, seed=4)
    assert same is x and same_t is t
