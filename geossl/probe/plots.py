"""Probe figures (matplotlib Agg, so they render on headless machines and in CI), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from geossl.plotting import save_png


def _save(fig: Any, path: Path) -> None:
    save_png(fig, path, dpi=120, bbox_inches="tight")


def plot_confusion(path: Path, cm: np.ndarray, classes: list[str], title: str) -> None:
    """Row-normalised colours (recall per class) with raw counts printed, so small classes stay readable."""
    k = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = max(4.0, 0.55 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    _save(fig, path)


def plot_label_efficiency(path: Path, report: dict[str, Any], title: str) -> None:
    """Test top-1 vs labelled examples per class, mean ± std over seeds, one line per encoder and probe."""
    budgets = report["budgets"]
    x = np.array([b if b != "all" else report["all_per_class"] for b in budgets], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (name, curves), color in zip(report["curves"].items(), ("tab:blue", "tab:orange", "tab:green"), strict=False):
        for probe, style in (("linear", "-"), ("knn", "--")):
            mean = 100 * np.array(curves[probe]["mean"])
            std = 100 * np.array(curves[probe]["std"])
            ax.errorbar(x, mean, yerr=std, fmt=style + "o", color=color, capsize=3, ms=4,
                        label=f"{name} ({'linear' if probe == 'linear' else 'k-NN'})")
    ax.axhline(100 / report["num_classes"], color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(x, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labelled training examples per class")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
