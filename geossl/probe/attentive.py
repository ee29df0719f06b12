"""The attentive head of ``geossl probe --head attentive``: a learned query over the frozen last-block tokens.

Recent self-supervised evaluations (V-JEPA, AIM) probe with an *attentive* head rather than a linear one:
one learned query token cross-attends over the encoder's frozen tokens (here the last block's CLS + patch
tokens after the final norm), then LayerNorm + Linear give the class logits
(:class:`geossl.models.landcover.AttentiveHead`). It can weigh the patches of a tile (the river, not the
fields around it) where the linear probe sees fixed poolings only.

The fit: tokens are extracted once for train/val/test (one encoder pass; kept float16 on the CPU, e.g.
65 x 192 x 2 bytes = 25 KB per 64 px EuroSAT tile, ~0.7 GB for all 27,000) and standardised per dimension
with train statistics, once, in place (the statistics become buffers of the head, which applies them to
raw tokens at inference); then AdamW (weight decay on the weight matrices only) with a linear warm-up of
one epoch and a cosine decay, for ``epochs`` epochs. Every learning rate of the sweep
is trained in lockstep from the same seeded initial head on the same seeded batch order (one gather per
step serves them all) and the one with the best final *val* top-1 is kept (ties: the smaller rate); the
test split is scored once, with that head. Seeded: the same inputs and thread count give the same head.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from geossl.choices import ATTENTIVE_EPOCHS, ATTENTIVE_LRS
from geossl.data.patches import PatchDataset
from geossl.models.encoder import Encoder
from geossl.models.landcover import TOKENS_DESCRIPTION, AttentiveHead, default_num_heads, last_block_tokens
from geossl.probe.features import SplitTable, cache_key, check_compatible, table_csv

__all__ = ["AttentiveHead", "DEFAULT_EPOCHS", "DEFAULT_LRS", "DEFAULT_WEIGHT_DECAY", "extract_tokens",
           "fit_attentive_head", "train_attentive"]

DEFAULT_EPOCHS = ATTENTIVE_EPOCHS
DEFAULT_LRS: tuple[float, ...] = ATTENTIVE_LRS
DEFAULT_WEIGHT_DECAY = 0.05
DEFAULT_TRAIN_BATCH = 256


def extract_tokens(encoder: Encoder, dataset: PatchDataset, train_rows: np.ndarray, batch_size: int = 256,
                   workers: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (N_rows, 1 + n_patches, D) float16 on the CPU in table order, *standardised* with the per-dim
    mean (D,) and std (D,) also returned: ``(raw - mean) / std``).

    mean/std are over every token of the ``train_rows`` (float64 sums of the float32 tokens). The store is
    written shifted and scaled by the first batch's statistics, then corrected in place to the train ones:
    float16 rounds relative to standardised values, not to raw ones (a dimension with a large mean and a small
    spread would lose its signal). Masked (nodata) pixels are filled with the band mean first, as the patch
    probe and inference do."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    fill = encoder.mean.view(1, -1, 1, 1)
    is_train = np.zeros(len(dataset), dtype=bool)
    is_train[train_rows] = True
    store: torch.Tensor | None = None
    total = total_sq = None
    count = 0
    # not inference_mode: the store is standardised in place afterwards
    with torch.no_grad(), tqdm(total=len(dataset), desc="attentive tokens", unit="img", leave=False) as bar:
        for batch in loader:
            x = batch["image"].to(device)
            if "mask" in batch:
                x = torch.where(batch["mask"].to(device).unsqueeze(1), x.float(), fill)
            tokens = last_block_tokens(encoder, x).float().cpu()
            idx = batch["index"].numpy()
            if store is None:
                store = torch.empty((len(dataset), *tokens.shape[1:]), dtype=torch.float16)
                total = torch.zeros(tokens.shape[-1], dtype=torch.float64)
                total_sq = torch.zeros_like(total)
                shift = tokens.flatten(0, 1).mean(0)
                scale = tokens.flatten(0, 1).std(0, unbiased=False).clamp_min(1e-6)
            store[torch.from_numpy(idx)] = ((tokens - shift) / scale).half()
            assert total is not None and total_sq is not None  # set with the store, at the first batch
            train = tokens[torch.from_numpy(is_train[idx])].flatten(0, 1).double()
            total += train.sum(0)
            total_sq += train.pow(2).sum(0)
            count += train.shape[0]
            bar.update(len(idx))
    if store is None or total is None or total_sq is None or count == 0:
        raise ValueError("attentive probe: no train patches to take tokens from")
    mean = (total / count).float()
    std = (total_sq / count - (total / count).pow(2)).clamp_min(0).sqrt().float().clamp_min(1e-6)
    gain, offset = scale / std, (shift - mean) / std  # (s * scale + shift - mean) / std
    for start in range(0, store.shape[0], 1024):  # in place, in chunks: no second copy of the store
        chunk = store[start : start + 1024]
        chunk.copy_(chunk.float() * gain + offset)
    return store, mean, std


def _decay_groups(head: AttentiveHead, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on the weight matrices; none on biases, LayerNorm and the query (as ViT recipes do)."""
    decay = [head.attn.in_proj_weight, head.attn.out_proj.weight, head.linear.weight]
    ids = {id(p) for p in decay}
    rest = [p for p in head.parameters() if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def predict_logits(head: AttentiveHead, tokens: torch.Tensor, rows: np.ndarray, batch_size: int = 1024,
                   device: str = "cpu") -> torch.Tensor:
    """Logits (len(rows), K) on the CPU for ``rows`` of the (standardised) token store."""
    out = []
    head.eval()
    with torch.inference_mode():
        for start in range(0, rows.size, batch_size):
            sel = torch.from_numpy(rows[start : start + batch_size])
            out.append(head.forward_standardized(tokens[sel].to(device).float()).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, head.num_classes)


def train_attentive(tokens: torch.Tensor, labels: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                    num_classes: int, mean: torch.Tensor, std: torch.Tensor, *, lrs: tuple[float, ...] | list[float],
                    weight_decay: float = DEFAULT_WEIGHT_DECAY, epochs: int = DEFAULT_EPOCHS,
                    batch_size: int = DEFAULT_TRAIN_BATCH, num_heads: int | None = None, seed: int = 0,
                    device: str = "cpu") -> tuple[AttentiveHead, dict[str, Any]]:
    """Train one head per learning rate (in lockstep, same init and batches), keep the best on val.

    ``tokens`` is the store of :func:`extract_tokens`, standardised with ``mean``/``std`` (which the heads keep
    as buffers). Returns the chosen head (CPU, eval mode) and a report: chosen lr, val top-1, per-lr sweep."""
    if train_rows.size == 0 or val_rows.size == 0:
        raise ValueError("attentive probe: the train and val splits must both be non-empty")
    if epochs < 1:
        raise ValueError(f"attentive probe: epochs must be >= 1, got {epochs}")
    lrs = sorted({float(lr) for lr in lrs})
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"attentive probe: learning rates must be > 0, got {lrs}")
    dim = int(tokens.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init = AttentiveHead(dim, num_classes, num_heads or default_num_heads(dim))
    init.set_standardization(mean, std)
    heads, opts = [], []
    for lr in lrs:
        head = AttentiveHead(dim, num_classes, init.num_heads)
        head.load_state_dict(init.state_dict())
        head = head.to(device).train()
        heads.append(head)
        opts.append(torch.optim.AdamW(_decay_groups(head, weight_decay), lr=lr, betas=(0.9, 0.999)))
    y = torch.from_numpy(np.asarray(labels)).long()
    steps_per_epoch = math.ceil(train_rows.size / batch_size)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    losses = [0.0] * len(lrs)
    val_curves: list[list[float]] = [[] for _ in lrs]
    seconds = [0.0] * len(lrs)
    step = 0
    for _ in range(epochs):
        order = torch.from_numpy(train_rows)[torch.randperm(train_rows.size, generator=gen)]
        losses = [0.0] * len(lrs)
        for start in range(0, order.numel(), batch_size):
            sel = order[start : start + batch_size]
            x, t = tokens[sel].to(device).float(), y[sel].to(device)
            factor = _lr_factor(step, warmup, total)
            for i, (head, opt) in enumerate(zip(heads, opts, strict=True)):
                t0 = time.perf_counter()
                for group in opt.param_groups:
                    group["lr"] = lrs[i] * factor
                loss = F.cross_entropy(head.forward_standardized(x), t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[i] += float(loss.detach()) * sel.numel()
                seconds[i] += time.perf_counter() - t0
            step += 1
        for i, head in enumerate(heads):
            val_curves[i].append(_top1(predict_logits(head, tokens, val_rows, device=device), y[val_rows]))
            head.train()
    sweep = [{"lr": lr, "weight_decay": weight_decay, "train_loss": round(losses[i] / train_rows.size, 5),
              "val_top1": val_curves[i][-1], "val_top1_per_epoch": val_curves[i], "seconds": round(seconds[i], 3)}
             for i, lr in enumerate(lrs)]
    best = max(range(len(lrs)), key=lambda i: (sweep[i]["val_top1"], -lrs[i]))
    head = heads[best].cpu().eval()
    info = {"chosen": {"lr": lrs[best], "weight_decay": weight_decay}, "val_top1": sweep[best]["val_top1"],
            "sweep": sweep}
    return head, info


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return int((logits.argmax(1) == labels.cpu()).sum()) / max(int(labels.numel()), 1)


def fit_attentive_head(encoder: Encoder, table: SplitTable, cache_dir: Path, *, epochs: int = DEFAULT_EPOCHS,
                       lrs: tuple[float, ...] | list[float] = DEFAULT_LRS,
                       weight_decay: float = DEFAULT_WEIGHT_DECAY, batch_size: int = 256, workers: int = 0,
                       seed: int = 0, device: str = "cpu") -> tuple[AttentiveHead, dict[str, Any]]:
    """Extract the tokens, train the sweep (chosen on val), score test. Returns the head (CPU) and the
    ``attentive`` section of metrics.json (plus ``test_logits``, a tensor the caller pops)."""
    start = time.perf_counter()
    dataset = PatchDataset(table_csv(table, cache_dir, cache_key(None, "attentive", table.paths)),
                           classes=table.classes)
    check_compatible(encoder, dataset, "encoder", table.source)
    encoder = encoder.to(device).eval()
    train_rows, val_rows, test_rows = table.indices("train"), table.indices("val"), table.indices("test")
    tokens, mean, std = extract_tokens(encoder, dataset, train_rows, batch_size, workers, device)
    t_fit = time.perf_counter()
    head, info = train_attentive(tokens, table.labels, train_rows, val_rows, len(table.classes), mean, std,
                                 lrs=lrs, weight_decay=weight_decay, epochs=epochs, seed=seed, device=device)
    t_test = time.perf_counter()
    test_logits = predict_logits(head, tokens, test_rows)
    y_test = torch.from_numpy(table.labels[test_rows])
    end = time.perf_counter()
    return head, {
        "test_top1": _top1(test_logits, y_test), "val_top1": info["val_top1"], "chosen": info["chosen"],
        "epochs": epochs, "batch_size": DEFAULT_TRAIN_BATCH, "num_heads": head.num_heads, "queries": 1,
        "tokens": TOKENS_DESCRIPTION, "tokens_per_patch": int(tokens.shape[1]), "token_dim": int(tokens.shape[2]),
        "method": ("one learned query, torch.nn.MultiheadAttention over the frozen tokens (standardised with "
                   "train mean/std), LayerNorm + Linear; AdamW, 1 warm-up epoch + cosine; lr chosen on val"),
        "seed": seed, "sweep": info["sweep"],
        "seconds": round(end - start, 3),
        "seconds_parts": {"tokens": round(t_fit - start, 3), "fit": round(t_test - t_fit, 3),
                          "test": round(end - t_test, 3)},
        "test_logits": test_logits,
    }
