"""``geossl change``: per-patch change between two dates (or along a series) -> score COG, preview, STAC;
with a land-cover model also the from-to class map and the transition table in hectares.

As for classify, everything that can be checked before inference is: the options, the encoder or model
(a model needs a dense head), the inputs and the dates of a series, and every output of every pair
(existing ones are refused without --overwrite), so a mistake costs seconds. The --out folder is locked
while the command writes there.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

from geossl.argtypes import positive_int
from geossl.choices import BLENDS
from geossl.data.raster import parse_band_indices
from geossl.data.uris import expand_inputs
from geossl.devices import pick_device
from geossl.io import RunLock, atomic_path, check_outputs
from geossl.models.encoder import load_encoder
from geossl.predict.common import ensure_out_dir

SERIES_CSV = "change_series.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--encoder", help="encoder folder (model.safetensors + geossl.json): the score map only")
    which.add_argument("--model", help="land-cover model folder with a dense head (`geossl probe --dense`): "
                                       "also the from-to class map and the transition table in hectares")
    parser.add_argument("--before", help="the earlier scene; the maps are on its grid")
    parser.add_argument("--after", help="the later scene, read onto the before scene's grid")
    parser.add_argument("--series", help="folder or glob of one place on many dates, ordered by the date in the "
                                         "file names (_20090818 or 1985): each date against the first")
    parser.add_argument("--consecutive", action="store_true", help="--series: each date against the one before")
    parser.add_argument("--all-pairs", action="store_true",
                        help="--series: every earlier date against every later one (n(n-1)/2 pairs)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tile-size", type=positive_int, default=None,
                        help="window size in pixels, a multiple of the patch size (default: the encoder's img_size)")
    parser.add_argument("--stride", type=positive_int, default=None,
                        help="window step, a multiple of the patch size at most the tile (default: the tile)")
    parser.add_argument("--bands", default=None, help="1-based bands of both scenes to feed the encoder, e.g. 1,2,3")
    parser.add_argument("--resample", action=argparse.BooleanOptionalAction, default=None,
                        help="resample the before scene to the encoder's gsd (default: as classify)")
    parser.add_argument("--min-valid", type=float, default=0.5,
                        help="fraction of a patch's pixels valid on both dates it needs; else nodata")
    parser.add_argument("--blend", choices=BLENDS, default="mean",
                        help="combine overlapping windows (stride < tile) as classify does")
    parser.add_argument("--no-preview", action="store_true", help="skip the *_change_preview.png")
    parser.add_argument("--no-stac", action="store_true", help="skip the *_change.stac.json STAC Item")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="window pairs per batch")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-check-stats", action="store_true",
                        help="run even when the scenes' values look unlike the encoder's training statistics")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def plan_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(before, after) URIs from --before/--after or --series; one-line errors for what does not fit."""
    from geossl.predict.change_outputs import series_pairs, series_scenes

    if args.series and (args.before or args.after):
        raise ValueError("give either --series or --before and --after, not both")
    if args.series:
        return series_pairs([uri for uri, _ in series_scenes(args.series)], args.consecutive, args.all_pairs)
    if args.consecutive or args.all_pairs:
        raise ValueError("--consecutive and --all-pairs pair the dates of a --series; with --before and --after "
                         "there is one pair")
    if not (args.before and args.after):
        raise ValueError("give --before and --after (two scenes), or --series FOLDER_OR_GLOB")
    return [(_one_scene(args.before, "--before"), _one_scene(args.after, "--after"))]


def _one_scene(item: str, option: str) -> str:
    found = expand_inputs([item])
    if len(found) != 1:
        raise ValueError(f"{option} {item}: matches {len(found)} rasters; give one scene")
    return found[0]


def run(args: argparse.Namespace) -> int:
    from geossl.predict.change import window_sizes

    start = time.perf_counter()
    pairs = plan_pairs(args)
    device = pick_device(args.device)
    encoder = _load(args, device)
    meta = encoder.meta
    tile, stride = window_sizes(meta.patch_size, meta.img_size, args.tile_size, args.stride, args.min_valid,
                                args.blend)
    if args.model:
        from geossl.predict.dense import check_dense

        check_dense(encoder, tile, stride, args.model)
    out_dir = ensure_out_dir(args.out)
    with RunLock(out_dir, "geossl change", "--out"):
        return _change_into(args, encoder, pairs, out_dir, start, str(device))


def _load(args: argparse.Namespace, device: Any) -> Any:
    if args.model:
        from geossl.models.landcover import load_landcover_model

        return load_landcover_model(Path(args.model), device=device)

    return load_encoder(Path(args.encoder), device=device)


def _change_into(args: argparse.Namespace, encoder: Any, pairs: list[tuple[str, str]], out_dir: Path,
                 start: float, device: str) -> int:
    """Refuse existing outputs of any pair unless --overwrite, then score every pair (folder locked)."""
    from geossl.predict.change import change_outputs, change_scene

    planned = [p for before, after in pairs for p in change_outputs(
        out_dir, before, after, bool(args.model), not args.no_preview, not args.no_stac).values() if p]
    if len(set(planned)) != len(planned):
        raise ValueError(f"two pairs would write the same files in {out_dir} (scenes with the same file name); "
                         "run them into separate --out folders")
    series_csv = out_dir / SERIES_CSV if args.series else None
    check_outputs(planned + ([series_csv] if series_csv else []), args.overwrite)
    results = []
    for before, after in pairs:
        result = change_scene(
            encoder, before, after, out_dir, tile_size=args.tile_size, stride=args.stride,
            bands=parse_band_indices(args.bands, "--bands"), resample=args.resample, batch_size=args.batch_size,
            min_valid=args.min_valid, blend=args.blend, preview=not args.no_preview, stac=not args.no_stac,
            overwrite=args.overwrite, check_stats=not args.no_check_stats, progress=not args.quiet,
            model_path=args.model or args.encoder,
        )
        results.append(result)
        print(result.summary(), flush=True)
    if series_csv is not None:
        _write_series(series_csv, results)
    seconds = time.perf_counter() - start
    print(f"change: {len(results)} pair(s), {sum(r.windows for r in results)} window pairs in {seconds:.1f} s "
          f"on {device} -> {out_dir}", file=sys.stdout)
    return 0


def _write_series(path: Path, results: list[Any]) -> None:
    """One row per pair of a series: the dates, the mean score and valid area, and the score map."""
    from geossl.predict.change import scene_date

    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["before", "after", "before_date", "after_date", "mean_score", "valid_area_ha", "score_map"])
        for r in results:
            dates = [scene_date(s) for s in (r.before, r.after)]
            writer.writerow([r.before, r.after, *[d.date().isoformat() if d else "" for d in dates],
                             f"{r.mean_score:.6f}" if r.valid_cells else "", f"{r.valid_area_ha:.4f}",
                             r.outputs["score"].name])
