"""Time series (issue #26): co-location retrieval across dates, and the change score against a forest-loss mask.

    python bench/temporal.py --encoder demo=runs/demo/pretrain/encoder --encoder temporal=runs/temporal/encoder

(a) **Retrieval**: the NAIP stack (9 dates) cut into windows on its first date's grid (``geossl embed --stacks``'s
reader); for every other date, each window's embedding at that date queries the first date's windows and
top-1 is the share whose nearest neighbour (cosine) is the same ground. Reported per encoder, for the same
architecture at random init, and for band statistics (the probe's 35 numbers per window, standardised), with
``--held-out`` naming the date a temporal encoder never saw (its figure is printed apart).
(b) **Change**: on Landsat Pucallpa, first vs last date: the per-patch change score of ``geossl change`` against
a forest-loss mask from NDVI (NIR band 2, red band 3: forest before, NDVI above ``--forest-ndvi``, and a
drop of at least ``--loss-drop``; a patch is loss when half its pixels are), as ROC AUC, beside the plain
band difference (mean absolute difference of the bands per patch). The encoder reads ``--landsat-bands``.

Writes OUT/temporal_bench.json and ends with one JSON line. The metrics (top-1 of a retrieval, ROC AUC by
ranks) are tested against brute-force references in tests/bench/test_temporal_bench.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.settings import data_root  # noqa: E402


def retrieval_top1(query: np.ndarray, gallery: np.ndarray) -> float:
    """Share of rows ``i`` of ``query`` whose most cosine-similar row of ``gallery`` is row ``i``."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.argmax(q @ g.T, axis=1) == np.arange(len(q))))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score of a positive > score of a negative), ties half."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes: {n_pos} positive, {n_neg} negative")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-9)


def stack_windows(uris: list[str], meta: Any, bands: list[int] | None, tile: int,
                  max_windows: int | None = None, resample: bool | None = False) -> dict[str, Any]:
    """Raw windows of a stack on its first date's grid: {date: (windows, C, T, T)} over the windows valid
    on every date (so row i is one place on all dates); at most ``max_windows``, evenly spaced. Native
    pixels by default (``resample=False``: 5 m NAIP gives four times the places of the encoder's 10 m)."""
    from geossl.data.stacks import scene_dates
    from geossl.predict.embed import stack_items

    dates = scene_dates(uris)
    order = sorted(range(len(uris)), key=lambda k: dates[k])  # type: ignore[arg-type, return-value]
    uris, dates = [uris[k] for k in order], [dates[k] for k in order]
    rows: dict[tuple[float, float], dict[str, np.ndarray]] = {}
    for item in stack_items(uris, dates, 0, meta, bands, tile, tile, resample, 0.99, check_stats=False):
        rows.setdefault((item.window[0], item.window[1]), {})[item.date.date().isoformat()] = item.image
    names = [d.date().isoformat() for d in dates]
    complete = [w for w, by_date in sorted(rows.items()) if len(by_date) == len(names)]
    if max_windows is not None and len(complete) > max_windows:
        complete = [complete[k] for k in np.linspace(0, len(complete) - 1, max_windows).round().astype(int)]
    return {name: np.stack([rows[w][name] for w in complete]) for name in names}


def features(name: str, windows: np.ndarray, encoder: Any) -> np.ndarray:
    import torch

    from geossl.probe.baselines import band_statistics

    x = torch.from_numpy(windows).float()
    if encoder is None:
        return band_statistics(x).numpy()
    with torch.no_grad():
        return torch.cat([encoder.features(x[i:i + 64], "cls") for i in range(0, len(x), 64)]).numpy()


def retrieval(encoders: dict[str, str], bands: list[int] | None, held_out: str | None,
              max_windows: int | None = None) -> dict[str, Any]:
    from geossl.models.encoder import load_encoder

    naip = sorted(str(p) for p in (data_root() / "timeseries" / "naip_north_dakota").glob("*.tif"))
    first = load_encoder(next(iter(encoders.values())))
    by_date = stack_windows(naip, first.meta, bands, first.meta.img_size, max_windows)
    dates = list(by_date)
    models: dict[str, Any] = {name: load_encoder(path) for name, path in encoders.items()}
    models["random init"] = load_encoder(next(iter(encoders.values())), random_init=True)
    models["band statistics"] = None
    out: dict[str, Any] = {"windows": len(by_date[dates[0]]), "gallery_date": dates[0], "results": {}}
    for name, model in models.items():
        feats = {d: features(name, by_date[d], model) for d in dates}
        if model is None:  # band statistics: standardised over all dates together
            joint = standardised(np.concatenate(list(feats.values())))
            feats = dict(zip(dates, np.split(joint, len(dates)), strict=True))
        per_date = {d: retrieval_top1(feats[d], feats[dates[0]]) for d in dates[1:]}
        seen = [v for d, v in per_date.items() if d != held_out]
        out["results"][name] = {"per_date": per_date, "mean": float(np.mean(seen)),
                                "held_out": per_date.get(held_out) if held_out else None}
        print(f"retrieval {name:>16}: mean top-1 {np.mean(seen):.3f} over {len(seen)} dates"
              + (f", held-out {held_out}: {per_date[held_out]:.3f}" if held_out in per_date else ""), flush=True)
    return out


def ndvi(path: str, nir: int, red: int) -> tuple[np.ndarray, Any, Any]:
    import rasterio

    with rasterio.open(path) as src:
        n, r = src.read(nir).astype(np.float64), src.read(red).astype(np.float64)
        return (n - r) / np.maximum(n + r, 1e-9), src.transform, src.crs


def onto(values: np.ndarray, transform: Any, crs: Any, grid: tuple[Any, Any, tuple[int, int]],
         resampling: str) -> np.ndarray:
    """``values`` (H, W) warped onto ``grid`` = (transform, crs, (height, width)) by rasterio."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    out = np.full(grid[2], np.nan)
    reproject(values.astype(np.float64), out, src_transform=transform, src_crs=crs, dst_transform=grid[0],
              dst_crs=grid[1], resampling=Resampling[resampling], src_nodata=np.nan, dst_nodata=np.nan)
    return out


def change_auc(encoders: dict[str, str], bands: list[int], out_dir: Path, forest_ndvi: float,
               loss_drop: float) -> dict[str, Any]:
    """First vs last Landsat date: each encoder's per-patch change score and the plain band difference,
    against the NDVI forest-loss mask on the score's grid (see the module docstring)."""
    import rasterio

    from geossl.models.encoder import load_encoder
    from geossl.predict.change import change_scene

    series = sorted(str(p) for p in (data_root() / "timeseries" / "landsat_pucallpa").glob("*.tif"))
    before, after = series[0], series[-1]
    models = {name: load_encoder(path) for name, path in encoders.items()}
    models["random init"] = load_encoder(next(iter(encoders.values())), random_init=True)
    scores: dict[str, np.ndarray] = {}
    grid = None
    for name, model in models.items():
        result = change_scene(model, before, after, out_dir / name.replace(" ", "_"), bands=bands, resample=False,
                              preview=False, stac=False, overwrite=True, check_stats=False, progress=False)
        with rasterio.open(result.outputs["score"]) as src:
            scores[name] = src.read(1).astype(np.float64)
            grid = (src.transform, src.crs, (src.height, src.width))
    assert grid is not None
    nd_before, t_before, crs = ndvi(before, 2, 3)
    nd_after_own, t_after, crs_after = ndvi(after, 2, 3)
    nd_after = onto(nd_after_own, t_after, crs_after, (t_before, crs, nd_before.shape), "bilinear")
    loss = ((nd_before > forest_ndvi) & (nd_before - nd_after >= loss_drop)).astype(np.float64)
    loss[np.isnan(nd_after)] = np.nan
    loss_share = onto(loss, t_before, crs, grid, "average")
    with rasterio.open(before) as a, rasterio.open(after) as b:
        raw_before = a.read().astype(np.float64)
        raw_after = np.stack([onto(band, b.transform, b.crs, (a.transform, a.crs, a.shape), "bilinear")
                              for band in b.read().astype(np.float64)])
        difference = onto(np.abs(raw_before - raw_after).mean(0), a.transform, a.crs, grid, "average")
    scores["band difference"] = difference
    cells = np.isfinite(loss_share) & np.all([np.isfinite(v) for v in scores.values()], axis=0)
    positive = loss_share[cells] >= 0.5
    out: dict[str, Any] = {"before": Path(before).name, "after": Path(after).name, "cells": int(cells.sum()),
                           "loss_cells": int(positive.sum()), "results": {}}
    for name, score in scores.items():
        out["results"][name] = roc_auc(score[cells], positive)
        print(f"change {name:>16}: ROC AUC {out['results'][name]:.3f} ({int(positive.sum())} of {int(cells.sum())} "
              "patches lost forest)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", action="append", required=True, metavar="NAME=FOLDER")
    p.add_argument("--bands", default="1,2,3", help="NAIP bands the encoders read (default the RGB ones)")
    p.add_argument("--held-out", default=None, help="ISO date of the NAIP date a temporal encoder never saw")
    p.add_argument("--landsat-bands", default="2,3,4", help="Landsat bands the encoders read (NIR, red, green)")
    p.add_argument("--forest-ndvi", type=float, default=0.3)
    p.add_argument("--loss-drop", type=float, default=0.2)
    p.add_argument("--skip", choices=["retrieval", "change"], default=None)
    p.add_argument("--max-windows", type=int, default=None, help="retrieval over at most this many places")
    p.add_argument("--out", type=Path, default=Path("runs/temporal_bench"))
    args = p.parse_args()
    encoders = dict(e.split("=", 1) for e in args.encoder)
    start = time.perf_counter()
    bands = [int(b) for b in args.bands.split(",")] if args.bands else None
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    if args.skip != "retrieval":
        result["retrieval"] = retrieval(encoders, bands, args.held_out, args.max_windows)
    if args.skip != "change":
        result["change"] = change_auc(encoders, [int(b) for b in args.landsat_bands.split(",")], args.out,
                                      args.forest_ndvi, args.loss_drop)
    result["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "temporal_bench.json").write_text(json.dumps(result, indent=2))
    line: dict[str, Any] = {"bench": "temporal"}
    if "retrieval" in result:
        line["retrieval_top1"] = {name: round(r["mean"], 4) for name, r in result["retrieval"]["results"].items()}
    if "change" in result:
        line["change_auc"] = {name: round(v, 4) for name, v in result["change"]["results"].items()}
    print(json.dumps({**line, "seconds": result["seconds"]}))


if __name__ == "__main__":
    main()
