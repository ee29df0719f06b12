"""Student and teacher networks and how the teacher follows the student (DINOv2's ssl_meta_arch, small)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from geossl.config import Config
from geossl.dino.objective import select_patches
from geossl.models.backbone import backbone_kwargs, check_maskable, create_backbone, forward_features_masked
from geossl.models.head import DINOHead


@dataclass
class ViewOutputs:
    """What one network returns for a list of crops."""

    head: list[torch.Tensor]  # per crop, (B, K) DINO head outputs of the CLS embeddings
    first_embeddings: torch.Tensor  # backbone CLS embeddings of the first group (the global crops)
    patch_head: torch.Tensor | None = None  # (M, K) patch-head outputs at the requested patch positions


def _groups(crops: list[torch.Tensor], split_at: int | None) -> list[tuple[int, int]]:
    """Runs of consecutive crops of one size (globals together, locals together), never across ``split_at``."""
    groups, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
            if end == split_at:
                break
        groups.append((start, end))
        start = end
    return groups


class BackboneWithHead(nn.Module):
    """ViT + DINO head; runs crops of one resolution per call so mixed sizes never pad.

    With iBOT (Zhou et al. 2022) it also holds the learned ``mask_token`` (outside the timm backbone, so
    the exported backbone's state dict stays plain timm) and optionally a separate patch head
    (``ibot_head``; DINOv2's default). Without iBOT neither exists and the state dict is unchanged.
    """

    def __init__(
        self, backbone: nn.Module, head: DINOHead, ibot_head: DINOHead | None = None, mask_token: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.ibot_head = ibot_head
        # Zeros, as DINOv2; (1, D) like DINOv2, so the DINO weight-decay rule treats it as cls_token.
        width = int(cast(int, backbone.num_features))  # a timm model's plain int attribute
        self.mask_token = nn.Parameter(torch.zeros(1, width)) if mask_token else None

    @property
    def patch_head(self) -> DINOHead:
        """The head for iBOT patch tokens: its own, or the DINO head when shared (iBOT's choice)."""
        return self.ibot_head if self.ibot_head is not None else self.head

    def forward(self, crops: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return per-crop head outputs and the backbone CLS embeddings of the first resolution group."""
        out = self.forward_views(crops)
        return out.head, out.first_embeddings

    def forward_views(
        self, crops: list[torch.Tensor], n_global: int | None = None, masks: torch.Tensor | None = None,
        patch_index: torch.Tensor | None = None,
    ) -> ViewOutputs:
        """Head outputs per crop; the first ``n_global`` crops form their own group.

        With ``patch_index`` (flat indices into the global crops' patch tokens, see
        :class:`geossl.dino.objective.ibot.PatchMasks`) the global group runs through the masked forward
        (``masks`` (n_global * B, n_patches) replaced by the mask token; None = unmasked, the teacher)
        and the patch head is applied to the selected patch tokens only, which is all iBOT needs.
        """
        outputs: list[torch.Tensor] = []
        first_embeddings: torch.Tensor | None = None
        patch_out: torch.Tensor | None = None
        for start, end in _groups(crops, n_global):
            batch = torch.cat(crops[start:end])
            if start == 0 and patch_index is not None:
                vit = cast(VisionTransformer, self.backbone)  # iBOT: check_maskable refused other backbones
                tokens = forward_features_masked(vit, batch, masks, self.mask_token)
                embeddings = vit.forward_head(tokens)
                patches = select_patches(tokens, vit.num_prefix_tokens, patch_index)
                patch_out = self.patch_head(patches)
            else:
                embeddings = self.backbone(batch)
            if first_embeddings is None:
                first_embeddings = embeddings
            outputs.extend(self.head(embeddings).chunk(end - start))
        assert first_embeddings is not None
        return ViewOutputs(outputs, first_embeddings, patch_out)


class StudentTeacher(nn.Module):
    """The student learns; the teacher is a deep copy of it, receives no gradients and tracks it by EMA."""

    def __init__(self, cfg: Config, in_chans: int) -> None:
        super().__init__()
        kwargs = backbone_kwargs(in_chans, cfg.augment.global_size, cfg.model.patch_size, cfg.model.extra)
        self.backbone_kwargs = kwargs
        student_backbone = create_backbone(cfg.model.arch, kwargs, drop_path_rate=cfg.model.drop_path_rate)
        embed_dim = int(cast(int, student_backbone.num_features))
        self.embed_dim = embed_dim

        def make_head() -> DINOHead:
            return DINOHead(
                embed_dim, cfg.head.out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim,
                cfg.head.n_layers, cfg.head.norm_last_layer, cfg.head.use_bn,
            )

        ibot = cfg.loss.ibot_weight > 0
        if ibot:
            check_maskable(student_backbone)
        separate = ibot and cfg.head.ibot_separate_head

        def make_network(backbone: nn.Module) -> BackboneWithHead:
            return BackboneWithHead(backbone, make_head(), make_head() if separate else None, mask_token=ibot)

        self.student = make_network(student_backbone)
        # The teacher has the student's architecture without drop-path, and starts as an exact copy.
        self.teacher = make_network(create_backbone(cfg.model.arch, kwargs, drop_path_rate=0.0))
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> StudentTeacher:
        super().train(mode)
        self.teacher.eval()  # the teacher is always in eval mode
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, one fused foreach op over all parameters."""
        teacher_params: list[torch.Tensor] = list(self.teacher.parameters())
        student_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)

    def cancel_last_layer_gradients(self) -> None:
        """Drop the gradients of the STUDENT heads' last layers (DINO freezes them during the first epoch;
        DINOv2 freezes the iBOT head's too)."""
        heads = [self.student.head] + ([self.student.ibot_head] if self.student.ibot_head is not None else [])
        for head in heads:
            for p in head.last_layer.parameters():
                p.grad = None
