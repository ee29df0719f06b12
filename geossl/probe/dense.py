"""The dense (per-patch) head of ``geossl probe --dense``: a linear head on the last block's patch tokens.

A labelled patch has one label, but the ViT gives one token per ``patch_size`` px square of it. Each
token of a training patch takes its patch's label (weak supervision: a token on a road crossing a
"Forest" patch is still called Forest), and the head is fitted with the very machinery of the patch probe
(:func:`geossl.probe.linear.fit_linear_probe`: standardised features, L-BFGS, weight decay chosen on val),
so ``geossl classify --dense`` can map at patch resolution from the same labels.

Cost bounds: train and val keep at most ``tokens_per_patch`` tokens per patch, drawn without replacement
by a generator seeded with ``(seed, row index)``: the same tokens whatever the batch size or worker count,
and memory grows with the number of patches, not with their token count. The test split is scored
afterwards in one streaming pass over *all* its tokens (no subsampling, nothing kept but counts): each
token is compared with its patch's label. That figure is a fair, reproducible proxy, not per-pixel
ground truth: tokens that truly belong to another class than their patch count as errors. Token features
are not cached (unlike the patch probe's): ``--dense`` costs one more encoder pass over the table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossl.choices import PROBE_DENSE_TOKENS
from geossl.data.patches import PatchDataset
from geossl.models.encoder import Encoder
from geossl.models.landcover import LinearHead
from geossl.probe.features import SplitTable, cache_key, check_compatible, table_csv
from geossl.probe.linear import DEFAULT_WEIGHT_DECAYS, fit_linear_probe

DEFAULT_TOKENS_PER_PATCH = PROBE_DENSE_TOKENS
TOKENS_DESCRIPTION = "last block patch tokens after the final norm; each token labelled with its patch's label"


def token_choice(n_tokens: int, per_patch: int | None, seed: int, row: int) -> np.ndarray:
    """Sorted token indices kept for table row ``row``: all of them, or ``per_patch`` drawn by (seed, row)."""
    if per_patch is None or per_patch >= n_tokens:
        return np.arange(n_tokens)
    return np.sort(np.random.default_rng([seed, row]).choice(n_tokens, size=per_patch, replace=False))


def iter_patch_tokens(encoder: Encoder, dataset: PatchDataset, rows: np.ndarray, batch_size: int, workers: int,
                      device: str) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(table row indices (B,), patch tokens (B, N, D) float32 on the CPU) for the given rows, batched.

    Masked (nodata) pixels are filled with the band mean first, as the patch probe and inference do."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, rows.tolist()), batch_size=batch_size,
                                         shuffle=False, num_workers=workers)
    fill = encoder.mean.view(1, -1, 1, 1)
    with torch.inference_mode():
        for batch in loader:
            x = batch["image"].to(device)
            if "mask" in batch:
                x = torch.where(batch["mask"].to(device).unsqueeze(1), x.float(), fill)
            yield batch["index"].numpy(), encoder.patch_grid(x).flatten(1, 2).float().cpu()


def sample_tokens(encoder: Encoder, dataset: PatchDataset, table: SplitTable, rows: np.ndarray,
                  per_patch: int | None, seed: int, batch_size: int = 256, workers: int = 0,
                  device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (M, D), labels (M,), table row of each token (M,)): the kept tokens of ``rows``, in row order."""
    feats, labels, owners = [], [], []
    for idx, tokens in iter_patch_tokens(encoder, dataset, rows, batch_size, workers, device):
        for i, row in enumerate(idx):
            keep = torch.from_numpy(token_choice(tokens.shape[1], per_patch, seed, int(row)))
            feats.append(tokens[i, keep])
            labels.append(torch.full((keep.numel(),), int(table.labels[row]), dtype=torch.long))
            owners.append(torch.full((keep.numel(),), int(row), dtype=torch.long))
    if not feats:
        raise ValueError(f"{table.source}: no patches to take tokens from")
    return torch.cat(feats), torch.cat(labels), torch.cat(owners)


def score_tokens(encoder: Encoder, head: LinearHead, dataset: PatchDataset, table: SplitTable, rows: np.ndarray,
                 batch_size: int = 256, workers: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Every token of ``rows`` against its patch's label, streamed (only counts are kept).

    Also the patch-level accuracy of a majority vote of the patch's tokens: what the dense head says about
    a whole patch, comparable with the patch probe's top-1."""
    head = head.to(device)
    correct = total = vote_correct = 0
    for idx, tokens in iter_patch_tokens(encoder, dataset, rows, batch_size, workers, device):
        with torch.inference_mode():
            pred = head(tokens.flatten(0, 1).to(device)).argmax(1).view(tokens.shape[0], -1).cpu()
        truth = torch.from_numpy(table.labels[idx]).view(-1, 1)
        correct += int((pred == truth).sum())
        total += int(pred.numel())
        votes = torch.nn.functional.one_hot(pred, head.num_classes).sum(1).argmax(1)
        vote_correct += int((votes == truth.view(-1)).sum())
    head.cpu()
    return {"top1": correct / max(total, 1), "tokens": total, "patches": int(rows.size),
            "patch_vote_top1": vote_correct / max(int(rows.size), 1)}


def fit_dense_head(encoder: Encoder, table: SplitTable, cache_dir: Path, *, tokens_per_patch: int | None,
                   seed: int = 0, weight_decays: tuple[float, ...] | list[float] = DEFAULT_WEIGHT_DECAYS,
                   max_iter: int = 100, batch_size: int = 256, workers: int = 0,
                   device: str = "cpu") -> tuple[LinearHead, dict[str, Any]]:
    """Fit the per-patch head on train tokens (weight decay chosen on val tokens), score all test tokens.

    Returns the head (CPU) and the ``dense`` section of metrics.json. See the module docstring."""
    if tokens_per_patch is not None and tokens_per_patch < 1:
        raise ValueError(f"--dense-tokens must be >= 1, got {tokens_per_patch}")
    start = time.perf_counter()
    dataset = PatchDataset(table_csv(table, cache_dir, cache_key(None, "dense", table.paths)), classes=table.classes)
    check_compatible(encoder, dataset, "encoder", table.source)
    encoder = encoder.to(device).eval()
    common: dict[str, Any] = dict(batch_size=batch_size, workers=workers, device=device)
    train_x, train_y, _ = sample_tokens(encoder, dataset, table, table.indices("train"), tokens_per_patch, seed,
                                        **common)
    val_x, val_y, _ = sample_tokens(encoder, dataset, table, table.indices("val"), tokens_per_patch, seed, **common)
    head, info = fit_linear_probe(train_x.to(device), train_y, val_x.to(device), val_y, len(table.classes),
                                  weight_decays, max_iter)
    test = score_tokens(encoder, head, dataset, table, table.indices("test"), **common)
    return head, {
        "test_top1": test["top1"], "val_top1": info["val_top1"],
        "weight_decay": info["chosen"]["weight_decay"], "test_patch_vote_top1": test["patch_vote_top1"],
        "tokens": TOKENS_DESCRIPTION, "feature_dim": int(train_x.shape[1]),
        "tokens_per_patch": tokens_per_patch, "seed": seed,
        "train_tokens": int(train_x.shape[0]), "val_tokens": int(val_x.shape[0]), "test_tokens": test["tokens"],
        "scoring": ("test_top1: every token of every test patch vs its patch's label (no subsampling); val_top1: "
                    f"the subsampled val tokens ({tokens_per_patch or 'all'} per patch) the weight decay was "
                    "chosen on; test_patch_vote_top1: majority vote of a test patch's tokens vs its label"),
        "linear": {k: v for k, v in info.items() if k != "val_top1"},
        "seconds": round(time.perf_counter() - start, 3),
    }
