"""What a fine-tune reports: test metrics of the exported model (read back from disk, as ``classify`` reads
it), the confusion matrix in the probe's format, the training curves, and the one-line summary."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from geossl.data.patches import PatchDataset
from geossl.models.landcover import load_landcover_model
from geossl.plotting import save_png
from geossl.probe.features import SplitTable
from geossl.probe.metrics import confusion_matrix, per_class_report, write_confusion_csv
from geossl.probe.plots import plot_confusion


@torch.no_grad()
def evaluate_model(model_dir: Path, out: Path, table: SplitTable, batch_size: int = 256) -> dict[str, Any]:
    """Test top-1, macro-F1 and per-class figures of the saved model folder; writes confusion.csv/.png."""
    model = load_landcover_model(model_dir)
    test = PatchDataset(out / "splits.csv", split="test", classes=table.classes)
    y_true, y_pred = [], []
    for batch in DataLoader(test, batch_size=batch_size):
        x = batch["image"].float()
        if "mask" in batch:
            x = torch.where(batch["mask"].unsqueeze(1), x, model.encoder.mean.expand_as(x))
        y_pred.append(model(x).argmax(-1).numpy())
        y_true.append(batch["label"].numpy())
    truth, pred = np.concatenate(y_true), np.concatenate(y_pred)
    cm = confusion_matrix(truth, pred, len(table.classes))
    report = per_class_report(cm, table.classes)
    top1 = float((truth == pred).mean())
    write_confusion_csv(out / "confusion.csv", cm, table.classes)
    plot_confusion(out / "confusion.png", cm, table.classes, f"fine-tuned, test top-1 {top1:.1%} (n={len(truth)})")
    return {"top1": top1, "macro_f1": report["macro_f1"], "split": "test", "test_count": int(len(truth)),
            "per_class": report["per_class"], "classes": table.classes, "model_dir": str(model_dir)}


def plot_finetune_curves(metrics_csv: Path, val_history: list[dict[str, float]], path: Path) -> None:
    """Training loss (smoothed) and val top-1 against steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [], []
    if metrics_csv.is_file():
        with open(metrics_csv, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("loss"):
                    steps.append(int(row["step"]))
                    losses.append(float(row["loss"]))
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(steps, losses, lw=1)
    ax_loss.set(xlabel="step", ylabel="train loss (soft targets)", title="training loss")
    if val_history:
        ax_val.plot([h["step"] for h in val_history], [100 * h["val_top1"] for h in val_history], "o-")
    ax_val.set(xlabel="step", ylabel="val top-1 (%)", title="validation")
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def summary_line(metrics: dict[str, Any]) -> str:
    """``geossl finetune (full, from ENC): test top-1 x % (macro-F1 y) on n patches; baselines ...``."""
    base = metrics.get("baselines") or {}
    parts = [f"{name.replace('-', ' ')} {b['top1']:.1%}" for name, b in base.items()]
    best = max((b["top1"] for b in base.values()), default=None)
    gain = f"; {100 * (metrics['top1'] - best):+.1f} points over the best baseline" if best is not None else ""
    baselines = f"; baselines: {', '.join(parts)}{gain}" if parts else ""
    return (f"geossl finetune ({metrics['mode']}, {metrics['steps']} steps, {metrics['train_seconds']:.0f} s): test "
            f"top-1 {metrics['top1']:.1%} (macro-F1 {metrics['macro_f1']:.3f}) on {metrics['test_count']} patches"
            f"{baselines}; model -> {metrics['model_dir']}")
