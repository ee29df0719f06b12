"""The DINO projection head (Caron et al. 2021, section 3.1 and appendix)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation ``W = g * v / ||v||`` (row-wise).

    Written out instead of ``nn.utils.weight_norm``/``parametrizations.weight_norm`` because those
    renamed checkpoint keys between PyTorch versions (a trap that broke DINO ports); here the keys are
    always ``weight_v`` and ``weight_g``.
    """

    def __init__(self, in_features: int, out_features: int, norm_fixed: bool) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        # g = 1 makes W rows unit-norm; with ``norm_fixed`` g is frozen (DINO's norm_last_layer=True).
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not norm_fixed)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (d -> hidden -> hidden -> bottleneck, GELU), L2-normalise, weight-normalised Linear(bottleneck, K).

    ``use_bn`` puts BatchNorm after each hidden layer (the original code's ``use_bn_in_head``, its
    default for convnets). At random init every image's CLS embedding shares one large common
    component, so without it the head's outputs differ little between images and the centred teacher
    starts (and, in a short run, stays) near uniform; batch statistics take that component out.

    ``out_dim`` is K, the number of prototypes; the default recipe uses 3 layers, hidden 2048,
    bottleneck 256.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
        norm_last_layer: bool = False,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("head.n_layers must be >= 1")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                if use_bn:
                    # Batch statistics always (no running buffers): the teacher runs in eval mode and its
                    # parameters are an EMA, so running statistics would be neither tracked nor averaged.
                    layers.append(nn.BatchNorm1d(dims[i + 1], track_running_stats=False))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm_fixed=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)
