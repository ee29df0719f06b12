"""Seams in class maps: plain-mean vs Hann blending of overlapping windows, on the shared real scenes.

Seam statistic (:func:`seam_stats`). Take every pair of 4-adjacent map cells that are both valid (not
nodata 255). A pair is a *border* pair when the boundary between its two cells lies on a window border
of the tile lattice, i.e. at a pixel offset ``(c + 1) * stride`` that is a multiple of ``tile`` (the
borders of the windows starting at 0, tile, 2 tile, ..., which every run with ``tile % stride == 0``
classifies); every other pair is an *inside* pair. The change rate of a set of pairs is the fraction
whose two cells have different classes. ``seam_ratio = border rate / inside rate``: 1 means class changes
do not prefer window borders (no visible seams), above 1 means they do. ``change_rate`` (all pairs) says
how fragmented the map is.

Note: with overlapping windows every cell boundary is the border of *some* window (one window stops
voting and another starts), so with plain mean blending the ratio is expected near 1 on regular grids;
Hann weighting smooths each window's vote to almost nothing at its border, which lowers the change rate
at every boundary. With ``tile = 2 * stride`` the two blends are identical (every cell centre sits at
1/4 or 3/4 of a window, where the Hann weights are equal): use ``stride <= tile / 3`` to compare.

    .venv/bin/python bench/seams.py                      # NAIP (bands 1,2,3) and S2-like (--rescale)
    .venv/bin/python bench/seams.py --crop 384 --quick   # a 384 px crop of each: about a minute on 2 cores
    .venv/bin/python bench/seams.py --model runs/probe/model

The LAST stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NODATA = 255


def seam_stats(classes: np.ndarray, row_borders: np.ndarray, col_borders: np.ndarray) -> dict[str, float | int | None]:
    """Change rates of border and inside pairs of a (H, W) class map (see the module docstring).

    ``row_borders`` (H-1,) / ``col_borders`` (W-1,) say whether the boundary after map row / column ``i``
    is a window border. Rates are None when a set of pairs is empty.
    """
    classes = np.asarray(classes)
    h, w = classes.shape
    if row_borders.shape != (max(h - 1, 0),) or col_borders.shape != (max(w - 1, 0),):
        raise ValueError(f"borders {row_borders.shape}/{col_borders.shape} do not fit a {h}x{w} map")
    counts = {"border": [0, 0], "inside": [0, 0]}  # [changes, pairs]
    for a, b, border in ((classes[:, :-1], classes[:, 1:], np.broadcast_to(col_borders[None], (h, w - 1))),
                         (classes[:-1], classes[1:], np.broadcast_to(row_borders[:, None], (h - 1, w)))):
        ok = (a != NODATA) & (b != NODATA)
        change = a != b
        for name, sel in (("border", ok & border), ("inside", ok & ~border)):
            counts[name][0] += int((change & sel).sum())
            counts[name][1] += int(sel.sum())

    def rate(name: str) -> float | None:
        changes, pairs = counts[name]
        return changes / pairs if pairs else None

    rb, ri = rate("border"), rate("inside")
    total = counts["border"][1] + counts["inside"][1]
    return {"border_pairs": counts["border"][1], "inside_pairs": counts["inside"][1], "border_rate": rb,
            "inside_rate": ri, "seam_ratio": rb / ri if rb is not None and ri else None,
            "change_rate": (counts["border"][0] + counts["inside"][0]) / total if total else None}


def lattice_borders(n_cells: int, stride: int, tile: int) -> np.ndarray:
    """(n_cells - 1,) bool: the boundary after cell ``i`` lies on the tile lattice (pixel multiple of tile)."""
    return ((np.arange(1, n_cells) * stride) % tile) == 0


def crop_scene(src_path: Path, out: Path, size: int) -> Path:
    """The top-left ``size`` px of a scene as a GeoTIFF (same CRS/transform, nodata, dtype)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        win = Window(0, 0, min(size, src.width), min(size, src.height))
        profile = dict(src.profile, width=int(win.width), height=int(win.height),
                       transform=src.window_transform(win), driver="GTiff", tiled=False)
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=win))
    return out


def measure(model, scene: Path, out_dir: Path, tile: int, stride: int, **options: object) -> list[dict]:
    """Classify ``scene`` once per blend and return one row of figures per blend."""
    import rasterio

    from geossl.predict.scene import classify_scene

    rows = []
    for blend in ("mean", "hann"):
        start = time.perf_counter()
        res = classify_scene(model, str(scene), out_dir / blend, tile_size=tile, stride=stride, blend=blend,
                             preview=False, geojson=False, stac=False, progress=False, resample=False,
                             overwrite=True, **options)  # type: ignore[arg-type]
        with rasterio.open(res.class_map) as m:
            cls = m.read(1)
        stats = seam_stats(cls, lattice_borders(cls.shape[0], stride, tile), lattice_borders(cls.shape[1], stride, tile))
        rows.append({"scene": scene.name, "blend": blend, "tile": tile, "stride": stride, "cells": int(cls.size),
                     "windows": res.windows, "seconds": round(time.perf_counter() - start, 1), **stats})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="land-cover model folder (default: a tiny random RGB model)")
    parser.add_argument("--data", default=None, help="data root (default: geossl.settings.data_root())")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--crop", type=int, default=None, help="use the top-left CROP px of each scene")
    parser.add_argument("--quick", action="store_true", help="NAIP only")
    args = parser.parse_args(argv)

    from bench.synthetic import make_tiny_model
    from geossl.models.landcover import load_landcover_model
    from geossl.settings import data_root

    scenes = Path(args.data) if args.data else data_root() / "scenes"
    scenes = scenes if scenes.name == "scenes" else scenes / "scenes"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model_dir = Path(args.model) if args.model else make_tiny_model(
            tmp / "model", img_size=args.tile, p2=[30.0, 40.0, 45.0], p98=[160.0, 150.0, 140.0])
        model = load_landcover_model(model_dir)
        jobs = [("naip_5m_north_dakota_2019.tif", {"bands": [1, 2, 3]})]
        if not args.quick:
            jobs.append(("s2_like_10m_netherlands_cog.tif", {"bands": [3, 2, 1], "rescale": "percentile"}))
        rows = []
        for name, options in jobs:
            scene = scenes / name
            if args.crop:
                scene = crop_scene(scene, tmp / name, args.crop)
            rows += measure(model, scene, tmp / "out" / name, args.tile, args.stride, **options)
    print(f"{'scene':34s} {'blend':5s} {'cells':>6s} {'border':>7s} {'inside':>7s} {'ratio':>6s} {'changes':>7s} {'s':>6s}")
    for r in rows:
        fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
        print(f"{r['scene']:34s} {r['blend']:5s} {r['cells']:6d} {fmt(r['border_rate']):>7s} "
              f"{fmt(r['inside_rate']):>7s} {fmt(r['seam_ratio'])} {fmt(r['change_rate']):>7s} {r['seconds']:6.1f}")
    print(json.dumps({"bench": "seams", "model": args.model or "tiny-random", "crop": args.crop, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
