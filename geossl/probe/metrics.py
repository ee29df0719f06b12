"""Classification metrics for probe reports: confusion matrix, per-class precision/recall/F1."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from geossl.io import atomic_write_text


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: rows are true classes, columns predicted classes."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion matrix: {y_true.shape[0]} labels but {y_pred.shape[0]} predictions")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def per_class_report(cm: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Precision/recall/F1/support per class plus accuracy and macro averages (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    per_class = {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
    }


def write_confusion_csv(path: Path, cm: np.ndarray, classes: list[str]) -> None:
    """Rows = true class, columns = predicted class; the first column names the true class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true\\predicted", *classes])
    for c, row in zip(classes, cm, strict=True):
        writer.writerow([c, *(int(v) for v in row)])
    atomic_write_text(path, buf.getvalue())
