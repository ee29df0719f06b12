"""KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search"; DINOv2).

The Kozachenko-Leonenko entropy estimator grows when every embedding's nearest neighbour is far away.
Maximising it (minimising ``-mean log d_nn``) spreads the L2-normalised CLS embeddings over the
sphere, which DINOv2 found to help retrieval and k-NN features at no cost to the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``-mean_i log(||x_i - x_nn(i)|| + eps)`` over the L2-normalised rows of ``embeddings`` (B, D).

    The nearest neighbour excludes the sample itself (the diagonal of the similarity matrix is set
    below any cosine), and is searched within this batch only (per rank, as DINOv2). Computed in float32
    outside autocast: the log of small distances is where bf16 would lose everything. The distance
    carries ``eps`` inside the norm as ``nn.PairwiseDistance`` (DINOv2), so duplicates get a finite
    gradient.
    """
    if embeddings.shape[0] < 2:
        raise ValueError("KoLeo needs at least two samples per batch")
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = F.normalize(embeddings.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():  # only which neighbour: an argmax has no gradient anyway
            similarity = x @ x.t()
            similarity.fill_diagonal_(-2.0)  # cosines are >= -1, so a sample never picks itself
            neighbour = similarity.argmax(dim=1)
        distances = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)
        return -torch.log(distances + eps).mean()
