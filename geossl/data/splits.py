"""Labelled patch tables: reading ``path,label[,split]`` CSVs, seeded stratified splits, class-balanced
subsets, and the check that no file sits in two splits. Shared by pretraining, statistics and probes."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> np.ndarray:
    """Assign "train"/"val"/"test" so every class keeps the given fractions; deterministic in ``seed``.

    Per class, counts are rounded with the largest-remainder rule so they add up exactly.
    """
    labels = np.asarray(labels)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"stratified_split: fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype="<U5")
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        exact = np.asarray(fractions, dtype=np.float64) * len(members)
        counts = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - counts), kind="stable")[: len(members) - counts.sum()]:
            counts[k] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for name, start, stop in zip(SPLIT_NAMES, bounds[:-1], bounds[1:], strict=True):
            out[members[start:stop]] = name
    return out


def balanced_subset(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``limit`` items, as even across classes as the class sizes allow."""
    labels = np.asarray(labels)
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rank[members] = rng.permutation(len(members))
    class_order = rng.permutation(int(labels.max()) + 1)
    # Round-robin: every class's 1st pick, then every class's 2nd pick, ...
    order = np.lexsort((class_order[labels], rank))
    return np.sort(order[:limit])


def read_label_csv(csv_path: Path) -> tuple[list[str], list[str], list[str] | None]:
    """Rows of a ``path,label[,split]`` CSV, with errors naming the file."""
    try:
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise ValueError(f"{csv_path}: expected a header with columns path,label[,split]; got {fields}")
            reader.fieldnames = fields
            rows = list(reader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{csv_path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{csv_path}: not a readable CSV ({exc})") from None
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    paths = [(r["path"] or "").strip() for r in rows]
    labels = [(r["label"] or "").strip() for r in rows]
    for line, (p, lab) in enumerate(zip(paths, labels, strict=True), start=2):
        if not p or not lab:
            raise ValueError(f"{csv_path}: line {line}: empty path or label")
    splits = [(r.get("split") or "").strip() for r in rows] if "split" in fields else None
    if splits is not None:
        check_split_leaks([os.path.normpath(p) for p in paths], splits, csv_path)
    return paths, labels, splits


def check_split_leaks(paths: list[str] | list[Path], splits: list[str], source: str | Path) -> None:
    """Refuse a file listed in two different splits: it would leak test (or val) data into training.

    ``splits`` may hold numpy strings (a split column read into an array): each is made a plain ``str``
    first, so the message says ``'train'``, not ``np.str_('train')``."""
    first: dict[str, str] = {}
    for path, split in zip(map(str, paths), map(str, splits), strict=True):
        if not split:  # a row without a split is left out, never evaluated
            continue
        seen = first.setdefault(path, split)
        if seen != split:
            raise ValueError(f"{source}: {path} is in both the {seen!r} and the {split!r} split "
                             "(a file in two splits leaks evaluation data into training); list it once")
