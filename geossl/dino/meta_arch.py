"""Student and teacher networks and how the teacher follows the student (DINOv2's ssl_meta_arch, small)."""

from __future__ import annotations

import torch
import torch.nn as nn

from geossl.config import Config
from geossl.models.backbone import backbone_kwargs, create_backbone
from geossl.models.head import DINOHead


class BackboneWithHead(nn.Module):
    """ViT + DINO head; runs crops of one resolution per call so mixed sizes never pad."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return per-crop head outputs and the backbone CLS embeddings of the first resolution group."""
        outputs: list[torch.Tensor] = []
        first_embeddings: torch.Tensor | None = None
        # Group consecutive crops of equal size into one forward pass (globals together, locals together).
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            batch = torch.cat(crops[start:end])
            embeddings = self.backbone(batch)
            if first_embeddings is None:
                first_embeddings = embeddings
            outputs.extend(self.head(embeddings).chunk(end - start))
            start = end
        assert first_embeddings is not None
        return outputs, first_embeddings


class StudentTeacher(nn.Module):
    """The student learns; the teacher is a deep copy of it, receives no gradients and tracks it by EMA."""

    def __init__(self, cfg: Config, in_chans: int) -> None:
        super().__init__()
        kwargs = backbone_kwargs(in_chans, cfg.augment.global_size, cfg.model.patch_size, cfg.model.extra)
        self.backbone_kwargs = kwargs
        student_backbone = create_backbone(cfg.model.arch, kwargs, drop_path_rate=cfg.model.drop_path_rate)
        embed_dim = int(student_backbone.num_features)
        self.embed_dim = embed_dim

        def make_head() -> DINOHead:
            return DINOHead(
                embed_dim, cfg.head.out_dim, cfg.head.hidden_dim, cfg.head.bottleneck_dim,
                cfg.head.n_layers, cfg.head.norm_last_layer,
            )

        self.student = BackboneWithHead(student_backbone, make_head())
        # The teacher has the student's architecture without drop-path, and starts as an exact copy.
        teacher_backbone = create_backbone(cfg.model.arch, kwargs, drop_path_rate=0.0)
        self.teacher = BackboneWithHead(teacher_backbone, make_head())
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
        teacher_params = list(self.teacher.parameters())
        student_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)

    def cancel_last_layer_gradients(self) -> None:
        """Drop the gradients of the STUDENT head's last layer (DINO freezes it during the first epoch)."""
        for p in self.student.head.last_layer.parameters():
            p.grad = None
