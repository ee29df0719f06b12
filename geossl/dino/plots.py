"""Training curves as a PNG: loss, collapse monitors, learning rate and online k-NN accuracy."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

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


def plot_health(history: list[dict[str, float]], health_history: list[dict[str, float]], log_k: float,
                warnings: list[str], out: Path) -> Path:
    """``health.png``: the label-free signals of :mod:`geossl.dino.health` over epochs, with their reference
    lines (ln K for the entropies and the loss, the frozen threshold), and the run's health warnings."""
    from geossl.dino.health import FROZEN_WEIGHT_CHANGE, RANKME_COLLAPSED

    fig, axes = plt.subplots(2, 3, figsize=(16, 7.5))
    epochs = [h["epoch"] for h in history]
    probe_epochs = [h["epoch"] for h in health_history]

    def series(ax: plt.Axes, xs: list[float], rows: list[dict[str, float]], key: str, **kwargs: Any) -> None:
        ax.plot(xs, [h.get(key, float("nan")) for h in rows], **kwargs)

    ax = axes[0, 0]
    for key, label in (("teacher_entropy", "teacher (per tile)"), ("marginal_entropy", "batch mean (marginal)"),
                       ("loss_dino" if any("loss_dino" in h for h in history) else "loss", "DINO loss")):
        series(ax, epochs, history, key, lw=1.2, label=label)
    ax.axhline(log_k, color="k", ls="--", lw=0.8, label=f"ln K = {log_k:.2f} (uniform)")
    ax.set_title("teacher entropies (nats): marginal -> 0 = collapse")
    ax = axes[0, 1]
    series(ax, epochs, history, "kl", lw=1.2)
    ax.set_title("KL(teacher || student), global crops")
    ax = axes[0, 2]
    series(ax, probe_epochs, health_history, "rankme", marker="o", ms=3)
    ax.axhline(RANKME_COLLAPSED, color="r", ls=":", lw=0.8, label="collapse")
    ax.set_title("RankMe of teacher CLS (probe tiles)")
    ax = axes[1, 0]
    series(ax, probe_epochs, health_history, "cka_init", marker="o", ms=3)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("linear CKA vs the step-0 network (1 = unchanged)")
    ax = axes[1, 1]
    groups = list(dict.fromkeys(k for h in health_history for k in h if k.startswith("weight_change/")))  # stem first
    colors = plt.cm.viridis([i / max(1, len(groups) - 1) for i in range(len(groups))])
    for key, color in zip(groups, colors, strict=True):
        series(ax, probe_epochs, health_history, key, lw=0.9, color=color, label=key.split("/", 1)[1])
    series(ax, probe_epochs, health_history, "weight_change", lw=2.2, color="k", label="whole backbone")
    ax.axhline(FROZEN_WEIGHT_CHANGE, color="r", ls=":", lw=0.8, label="frozen")
    ax.set_title("relative weight change ||W - W0|| / ||W0||")
    for ax in axes.flat[:5]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if ax is axes[1, 1] else 1)
    ax = axes[1, 2]
    ax.axis("off")
    text = "\n\n".join(textwrap.fill(w, 70) for w in warnings) if warnings else "no health warnings"
    ax.text(0, 1, text, va="top", ha="left", fontsize=7.5, color="r" if warnings else "g", transform=ax.transAxes)
    ax.set_title("health warnings")
    fig.tight_layout()
    return save_png(fig, out, dpi=100)
