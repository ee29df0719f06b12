"""Labelled split tables and frozen-feature extraction with an on-disk cache.

Probes re-run often (a sweep, a label-efficiency curve, a random-init baseline), while extracting
features is by far the slowest step. Features of the whole table are cached under a key that hashes
the encoder weights, its ``geossl.json``, the feature recipe and the list of files, so a changed
encoder can never be probed with stale features, and an unchanged one is never extracted twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from geossl.data.patches import PatchDataset
from geossl.data.splits import SPLIT_NAMES, check_split_leaks, read_label_csv, stratified_split
from geossl.evaluation.features import extract_features
from geossl.io import atomic_path, atomic_write_text
from geossl.models.encoder import META_FILE, WEIGHTS_FILE, Encoder

SPLITS_FILE = "splits.csv"


@dataclass
class SplitTable:
    """Every labelled file of a probe, its class index and its split ("train", "val" or "test")."""

    paths: list[Path]  # absolute
    labels: np.ndarray  # int64 class indices
    splits: np.ndarray  # "train" / "val" / "test"
    classes: list[str]
    source: str  # the file or folder the table came from (for messages and metrics.json)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for split in SPLIT_NAMES:
            idx = self.indices(split)
            per_class = np.bincount(self.labels[idx], minlength=len(self.classes))
            out[split] = {"total": int(idx.size), **{c: int(n) for c, n in zip(self.classes, per_class, strict=True)}}
        return out

    def write_csv(self, path: Path) -> None:
        """The split actually used (absolute paths), so a probe can be repeated exactly with --splits."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        for p, lab, s in zip(self.paths, self.labels, self.splits, strict=True):
            writer.writerow([str(p), self.classes[int(lab)], str(s)])
        atomic_write_text(path, buf.getvalue())


def _read_split_csv(csv_path: Path, base: Path) -> tuple[list[Path], list[str], list[str]]:
    """Rows of a ``path,label,split`` CSV; relative paths are resolved against ``base``."""
    raw_paths, raw_labels, raw_splits = read_label_csv(csv_path)
    if raw_splits is None:
        raise ValueError(f"{csv_path}: expected columns path,label,split; there is no split column")
    paths, labels, splits = [], [], []
    for line, (p, lab, s) in enumerate(zip(raw_paths, raw_labels, raw_splits, strict=True), start=2):
        if s not in (*SPLIT_NAMES, ""):  # an empty split leaves the row out (e.g. pretraining-only images)
            raise ValueError(f"{csv_path}: line {line}: unknown split {s!r} (expected one of {list(SPLIT_NAMES)})")
        if s:
            paths.append(Path(p) if Path(p).is_absolute() else base / p)
            labels.append(lab)
            splits.append(s)
    return paths, labels, splits


def _header(csv_path: Path) -> list[str]:
    with open(csv_path, newline="") as fh:
        return [f.strip() for f in next(csv.reader(fh), [])]


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def load_split_table(data: str | Path, splits: str | Path | None = None, seed: int = 0) -> SplitTable:
    """Resolve which file is in which split, validating everything before any feature is extracted.

    Order: ``splits`` (a ``path,label,split`` CSV; relative paths against ``data`` when it is a folder),
    then ``data/splits.csv``, then a seeded stratified split of ``data`` (``labels.csv`` or class
    folders, or ``data`` itself as a ``path,label`` CSV).
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such data folder or CSV")
    csv_path: Path | None = Path(splits) if splits is not None else None
    if csv_path is None and data.is_dir() and (data / SPLITS_FILE).is_file():
        csv_path = data / SPLITS_FILE
    elif csv_path is None and data.is_file() and "split" in _header(data):
        csv_path = data
    stratified = csv_path is None
    if csv_path is not None:
        base = data if (data.is_dir() and splits is not None) else csv_path.parent
        paths, names, split_list = _read_split_csv(csv_path, base)
        source = str(csv_path)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise FileNotFoundError(f"{csv_path}: {len(missing)} of {len(paths)} listed files do not exist: {shown}")
    else:
        ds = PatchDataset(data)  # labels.csv, class folders or a path,label CSV; validates files exist
        paths, names = list(ds.paths), [ds.classes[int(i)] for i in ds.labels]
        split_list = list(stratified_split(ds.labels, seed=seed))
        source = str(data)
    folders = _class_folders(data)
    classes = sorted(set(names))
    if set(folders) & set(classes):  # a class-folder layout: a label outside it is a typo, not a class
        unknown = sorted(set(classes) - set(folders))
        if unknown:
            raise ValueError(f"{source}: unknown class(es) {unknown[:5]}: not among the class folders {folders}")
    index = {c: k for k, c in enumerate(classes)}
    table = SplitTable(
        paths=[Path(p).absolute() for p in paths],  # a relative --data must not be re-read from the cache folder
        labels=np.array([index[n] for n in names], dtype=np.int64),
        splits=np.asarray(split_list),
        classes=classes,
        source=source,
    )
    check_split_leaks(table.paths, table.splits.tolist(), source)  # plain str: messages quote 'train'
    _check_counts(table, stratified)
    return table


def _check_counts(table: SplitTable, stratified: bool) -> None:
    """Every split non-empty and every class present in each: a probe cannot be trained or judged otherwise.

    For a stratified split, a too-small class is the cause of any empty split, so it is named first.
    """
    if len(table.classes) < 2:  # every class is in every split (below): one class overall is one in train
        named = f"one class ({table.classes[0]!r})" if table.classes else "no class"
        raise ValueError(f"{table.source}: {named} in the train split; a probe needs at least 2 classes (with one, "
                         "every prediction is right and top-1 reads 100 %)")
    counts = table.counts()
    for split in SPLIT_NAMES if not stratified else ():
        if counts[split]["total"] == 0:
            raise ValueError(f"{table.source}: split {split!r} is empty (need train, val and test rows)")
    for c in table.classes:
        got = {s: counts[s][c] for s in SPLIT_NAMES}
        if min(got.values()) == 0:
            total = sum(got.values())
            raise ValueError(
                f"{table.source}: class {c!r} has {total} example(s), too few for the split "
                f"(needs at least 1 in each of train/val/test; got {got}"
                + ("; a seeded 70/10/20 split needs 6 or more per class)" if stratified else ")")
            )


def check_compatible(encoder: Encoder, dataset: PatchDataset, encoder_name: str, data_name: str) -> None:
    """Fail before extraction when the data cannot feed this encoder, saying what each side has."""
    meta = encoder.meta
    if dataset.band_count != meta.in_chans:
        raise ValueError(
            f"encoder {encoder_name} expects {meta.in_chans} bands {meta.bands}, but the data {data_name} has "
            f"{dataset.band_count} band(s) ({dataset.dtype}) in {dataset.paths[0]}"
        )


def check_recipe(encoder: Encoder, recipe: str) -> None:
    encoder.feature_dim(recipe)  # raises ValueError naming the valid recipes


def _hash_into(digest: hashlib._Hash, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder file missing")
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def cache_key(encoder_dir: Path | None, recipe: str, paths: list[Path]) -> str:
    """Hash of weights + geossl.json (when an encoder computes the features) + recipe + file list (with
    sizes and mtimes, so edited files count)."""
    digest = hashlib.sha256()
    if encoder_dir is not None:
        for name in (WEIGHTS_FILE, META_FILE):
            _hash_into(digest, encoder_dir / name)
    digest.update(f"\0recipe={recipe}\0".encode())
    for p in paths:
        st = p.stat()
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cached_features(
    encoder: Encoder,
    encoder_dir: Path,
    table: SplitTable,
    recipe: str,
    cache_dir: Path,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "features",
) -> tuple[torch.Tensor, dict[str, object]]:
    """Features of every row of ``table``, from ``cache_dir`` when the key matches, else extracted + stored."""

    def extract(dataset: PatchDataset) -> torch.Tensor:
        check_compatible(encoder, dataset, str(encoder_dir), table.source)
        check_recipe(encoder, recipe)
        return extract_features(encoder, dataset, recipe, batch_size, num_workers, device, desc)

    return cached_table_features(cache_key(encoder_dir, recipe, table.paths), table, cache_dir, recipe, extract)


def cached_table_features(
    key: str,
    table: SplitTable,
    cache_dir: Path,
    recipe: str,
    compute: Callable[[PatchDataset], torch.Tensor],
) -> tuple[torch.Tensor, dict[str, object]]:
    """The one feature cache: ``compute`` over the table's files runs only when no entry matches ``key``."""
    start = time.perf_counter()
    path = Path(cache_dir) / f"features-{key}.safetensors"
    if path.is_file():
        try:
            feats = safetensors.torch.load_file(str(path))["features"]
            if feats.shape[0] == len(table.paths):
                return feats, {"hit": True, "path": str(path), "seconds": time.perf_counter() - start}
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            pass
    dataset = PatchDataset(table_csv(table, Path(cache_dir), key), classes=table.classes)
    feats = compute(dataset)
    with atomic_path(path, suffix=".safetensors") as tmp:
        safetensors.torch.save_file({"features": feats.contiguous()}, str(tmp), metadata={"recipe": recipe})
    return feats, {"hit": False, "path": str(path), "seconds": time.perf_counter() - start}


def table_csv(table: SplitTable, cache_dir: Path, key: str) -> Path:
    """The table as a CSV (absolute paths) that PatchDataset reads in order, without a split column:
    ``cache_dir/files-<key>.csv``, written atomically; the file list of every probe that reads the patches
    (frozen features here, the attentive and dense heads in :mod:`geossl.probe.attentive`, :mod:`~geossl.probe.dense`)."""
    path = cache_dir / f"files-{key}.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    for p, lab in zip(table.paths, table.labels, strict=True):
        writer.writerow([str(p), table.classes[int(lab)]])
    atomic_write_text(path, buf.getvalue())
    return path
