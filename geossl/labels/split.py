"""Train/val/test for chips cut from geodata: random by label group, from a ``split`` column, or spatial.

Neighbouring chips are alike (spatial autocorrelation): chips of one polygon, or of one field and the
next, in train and test inflate accuracy. So the unit of every split here is a *group* (a polygon, a
point, a label-raster chip), never a chip, and ``spatial`` assigns whole square blocks of
``block_size`` metres. Blocks are laid out in one UTM zone estimated from all labels (geopandas'
``estimate_utm_crs``): metres everywhere, no block straddling zone boundaries of the scenes' own
CRSs. Within each class (a block's majority class), blocks are dealt out to the split furthest below
its target share of chips, in a seeded random order, so every class reaches every split whenever its
blocks allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyproj import Transformer

from geossl.data.splits import SPLIT_NAMES, stratified_split


@dataclass
class SplitResult:
    splits: np.ndarray  # per chip: "train" / "val" / "test" / "" (left out)
    blocks: np.ndarray | None  # per chip: block index (spatial only)
    report: dict[str, Any]


def resolve_mode(mode: str, has_column: bool, source: str) -> str:
    """``auto`` is the labels' own ``split`` column when there is one, else a random stratified split."""
    if mode == "auto":
        return "column" if has_column else "random"
    if mode == "column" and not has_column:
        raise ValueError(f"{source}: --split column: the labels have no 'split' column")
    return mode


def random_split(labels: Sequence[str] | np.ndarray, groups: np.ndarray, fractions: Sequence[float],
                 seed: int) -> np.ndarray:
    """Stratified by class over groups (each group's label is its first chip's)."""
    uniq, first = np.unique(groups, return_index=True)
    group_split = stratified_split(np.asarray(labels, dtype=object)[first].astype(str), fractions, seed)
    return group_split[np.searchsorted(uniq, groups)]


def utm_blocks(lonlat: np.ndarray, block_size: float) -> tuple[np.ndarray, str]:
    """Integer (bx, by) block coordinates of each lon/lat point, and the UTM CRS they were taken in."""
    import geopandas as gpd

    points = gpd.GeoSeries(gpd.points_from_xy(lonlat[:, 0], lonlat[:, 1]), crs="EPSG:4326")
    utm = points.estimate_utm_crs()
    x, y = Transformer.from_crs("EPSG:4326", utm, always_xy=True).transform(lonlat[:, 0], lonlat[:, 1])
    blocks = np.column_stack([np.floor(np.asarray(x) / block_size), np.floor(np.asarray(y) / block_size)])
    return blocks.astype(np.int64), utm.to_string()


def deal_blocks(block_of_chip: np.ndarray, labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per block: whole blocks, per majority class, largest deficit first."""
    n_blocks = int(block_of_chip.max()) + 1
    classes, label_idx = np.unique(labels, return_inverse=True)
    counts = np.zeros((n_blocks, len(classes)), dtype=np.int64)
    np.add.at(counts, (block_of_chip, label_idx), 1)
    majority, size = counts.argmax(axis=1), counts.sum(axis=1)
    target = np.asarray(fractions, dtype=np.float64)
    out = np.empty(n_blocks, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in range(len(classes)):
        members = np.flatnonzero(majority == c)
        assigned, total = np.zeros(3), 0
        for b in members[rng.permutation(members.size)]:
            total += size[b]
            choice = int(np.argmax(target * total - assigned))
            out[b] = choice
            assigned[choice] += size[b]
    return out


def assign_splits(
    labels: Sequence[str], groups: np.ndarray, group_lonlat: np.ndarray, column: Sequence[str], mode: str,
    block_size: float, fractions: Sequence[float], seed: int,
) -> SplitResult:
    """Per-chip splits in ``mode`` (already resolved: random | column | spatial) and what was done."""
    labels_arr = np.asarray(labels, dtype=object).astype(str)
    groups = np.asarray(groups)
    report: dict[str, Any] = {"mode": mode, "groups": int(np.unique(groups).size)}
    blocks = None
    if mode == "column":
        splits = np.asarray(column, dtype=object).astype(str)
        report["left_out"] = int((splits == "").sum())
    elif mode == "random":
        splits = random_split(labels_arr, groups, fractions, seed)
        report["fractions"] = list(fractions)
    else:
        coords, crs = utm_blocks(np.asarray(group_lonlat, dtype=np.float64), block_size)
        _, blocks = np.unique(coords, axis=0, return_inverse=True)
        blocks = blocks.ravel()
        per_block = deal_blocks(blocks, labels_arr, fractions, seed)
        splits = np.asarray(SPLIT_NAMES, dtype=object)[per_block[blocks]].astype(str)
        report.update({"block_size_m": block_size, "crs": crs, "fractions": list(fractions),
                       "blocks": {s: int(np.unique(blocks[splits == s]).size) for s in SPLIT_NAMES}})
    report["chips"] = {s: int((splits == s).sum()) for s in SPLIT_NAMES}
    return SplitResult(splits, blocks, report)


def check_classes_in_every_split(labels: Sequence[str], splits: np.ndarray, mode: str, source: str) -> None:
    """A head is trained on train, chosen on val and scored on test: every class needs all three."""
    labels_arr = np.asarray(labels, dtype=object).astype(str)
    for cls in sorted(set(labels_arr.tolist())):
        got = {s: int(((labels_arr == cls) & (splits == s)).sum()) for s in SPLIT_NAMES}
        if min(got.values()) == 0:
            hint = {"spatial": "; use a smaller --block-size, or more labels of that class",
                    "column": "; fix the labels' split column",
                    "random": "; a class needs about 6 or more labelled points or polygons for a 70/10/20 split"}[mode]
            raise ValueError(f"{source}: class {cls!r} has chips {got} after the {mode} split{hint}")
