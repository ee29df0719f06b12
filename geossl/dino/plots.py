"""Training curves as a PNG: loss, collapse monitors, learning rate and online k-NN accuracy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from geossl.plotting import save_png  # noqa: E402


def plot_curves(history: list[dict[str, float]], knn_history: list[dict[str, float]], out: Path) -> Path:
    """Four panels over epochs; empty panels say so instead of disappearing."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    epochs = [h["epoch"] for h in history]
    panels = [
        ("DINO loss", "loss", None),
        ("teacher embedding std (collapse -> 0)", "teacher_std", None),
        ("teacher entropy", "teacher_entropy", None),
        ("learning rate", "lr", None),
    ]
    for ax, (title, key, _) in zip(axes[:3], panels[:3], strict=True):
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax = axes[3]
    if knn_history:
        ax.plot([h["epoch"] for h in knn_history], [100 * h["knn_top1"] for h in knn_history], "o-")
        ax.set_title("online k-NN top-1 (%)")
    else:
        ax.plot(epochs, [h.get("lr", float("nan")) for h in history])
        ax.set_title("learning rate (no k-NN set configured)")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, out, dpi=110)
