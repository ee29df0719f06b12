"""Prepare what bench/gpu_suite.sh needs on the GPU host, inside the ignored folder ``.carry/``.

Only the working tree and up to 64 MiB of named ignored folders travel to the GPU host (no data
root, no package registry), so this copies, here:

``.carry/eurosat-rgb/``: whole EuroSAT RGB JPEGs in their class folders with a ``splits.csv``: the
FULL test split (5,400, so test figures compare with the published ones), a class-balanced part of
val (the probe picks its weight decay there) and as much of train as fits the byte budget (``--max-mb``,
actual file bytes, splits.csv included).

No wheels by default: the host's image already holds matplotlib, tensorboard, tifffile and PIL (see
the device notes), and ``geossl pretrain``/``probe`` on JPEG patches need no rasterio/GDAL. Should a
package be missing after all, put wheels in ``.carry/wheels/`` (the device notes' ``pip download``
line) and carry that too: the suite installs whatever it finds there.

    .venv/bin/python bench/prepare_gpu_carry.py                      # -> .carry/eurosat-rgb (~47 MB)
    .venv/bin/python bench/prepare_gpu_carry.py --out /tmp/c --train 200 --val 50 --test 100

Carry ``.carry/eurosat-rgb`` (and ``.carry/wheels`` if you made it). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.data.splits import balanced_subset  # noqa: E402
from geossl.settings import data_root  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CARRY_LIMIT = 64 * 2**20  # what travels to the device: working tree and carried paths together


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def budget_prefix(sizes: np.ndarray, labels: np.ndarray, budget: int, cap: int | None, seed: int) -> np.ndarray:
    """Indices of the largest class-balanced subset whose files fit ``budget`` bytes (at most ``cap`` items).

    ``balanced_subset(labels, n)`` grows by one item per class in turn, so its byte total rises with
    ``n``: a bisection finds the largest ``n`` that fits.
    """
    lo, hi = 0, min(len(labels), cap if cap is not None else len(labels))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sizes[balanced_subset(labels, mid, seed)].sum() <= budget:
            lo = mid
        else:
            hi = mid - 1
    return balanced_subset(labels, lo, seed) if lo else np.empty(0, dtype=np.int64)


def copy_eurosat(src: Path, out: Path, max_bytes: int, n_train: int | None, n_val: int, n_test: int | None,
                 seed: int) -> dict[str, int]:
    """Copy test (all or ``n_test``), ``n_val`` of val, then train up to ``max_bytes`` into ``out``.

    The budget counts what lands in ``out``: image files, their splits.csv lines and the licence.
    """
    rows = list(csv.DictReader(open(src / "splits.csv", newline="")))
    if out.exists():
        shutil.rmtree(out)  # a stale, larger copy would make the measured size a lie
    header = "path,label,split\n"
    licence = src / "LICENSE.txt"
    used = len(header) + (licence.stat().st_size if licence.is_file() else 0)
    chosen: dict[str, list[dict[str, str]]] = {}
    for split, cap in (("test", n_test), ("val", n_val), ("train", n_train)):
        part = [r for r in rows if r["split"] == split]
        classes = sorted({r["label"] for r in part})
        labels = np.array([classes.index(r["label"]) for r in part])
        sizes = np.array([(src / r["path"]).stat().st_size + len(_line(r)) for r in part])
        keep = budget_prefix(sizes, labels, max_bytes - used, cap, seed)
        if split != "train" and len(keep) < min(cap or len(part), len(part)):
            raise SystemExit(f"prepare: --max-mb {max_bytes / 1e6:g} cannot hold the {split} split; raise it")
        chosen[split] = [part[i] for i in keep]
        used += int(sizes[keep].sum())
    for split_rows in chosen.values():
        for r in split_rows:
            target = out / r["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / r["path"], target)
    lines = [_line(r) for split in ("train", "val", "test") for r in chosen[split]]
    (out / "splits.csv").write_text(header + "".join(lines))
    if licence.is_file():
        shutil.copyfile(licence, out / "LICENSE.txt")
    return {split: len(split_rows) for split, split_rows in chosen.items()}


def _line(row: dict[str, str]) -> str:
    return f"{row['path']},{row['label']},{row['split']}\n"  # EuroSAT names hold no commas or quotes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".carry", help="carry folder (default .carry/)")
    ap.add_argument("--source", type=Path, default=None, help="EuroSAT RGB folder (default <data root>/eurosat-rgb)")
    ap.add_argument("--max-mb", type=float, default=48.0, help="data budget in MB (1e6 bytes) of actual files")
    ap.add_argument("--train", type=int, default=None, help="at most this many train images (default: fill)")
    ap.add_argument("--val", type=int, default=1000, help="val images, class-balanced (default 1000)")
    ap.add_argument("--test", type=int, default=None, help="test images (default: the full split)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    src = args.source or data_root() / "eurosat-rgb"
    counts = copy_eurosat(src, args.out / "eurosat-rgb", int(args.max_mb * 1e6), args.train, args.val, args.test,
                          args.seed)
    data_bytes = folder_bytes(args.out / "eurosat-rgb")
    wheels = args.out / "wheels"
    wheel_bytes = folder_bytes(wheels) if wheels.is_dir() else 0
    total = data_bytes + wheel_bytes
    print(f"eurosat-rgb: {counts} images, {data_bytes / 1e6:.1f} MB of files; wheels {wheel_bytes / 1e6:.1f} MB; "
          f"carried total {total / 2**20:.1f} MiB (limit 64 MiB with the working tree)", file=sys.stderr)
    ok = total <= CARRY_LIMIT
    if not ok:
        print("prepare: the carried folders exceed 64 MiB: lower --max-mb", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "counts": counts, "data_bytes": data_bytes, "wheel_bytes": wheel_bytes,
                      "total_bytes": total, "total_mib": round(total / 2**20, 2), "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
