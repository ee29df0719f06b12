"""``geossl stats``: per-band statistics of scenes or patches -> stats.json (what training and inference normalise with)."""

from __future__ import annotations

import argparse
from pathlib import Path

from geossl.argtypes import fraction
from geossl.data.raster import parse_band_indices
from geossl.data.stats import compute_stats
from geossl.io import check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True,
                        help="scenes (files, folders, globs, s3:// prefixes) or one patch folder/CSV")
    parser.add_argument("--out", required=True, help="where to write the statistics JSON")
    parser.add_argument("--bands", default=None, help="1-based band numbers, comma-separated (default: all)")
    parser.add_argument("--tiles", type=int, default=256, help="random tiles (scenes) or patches to sample")
    parser.add_argument("--tile-size", type=int, default=64, help="tile size in pixels (scenes)")
    parser.add_argument("--kind", choices=["auto", "scenes", "patches"], default="auto",
                        help="what --input holds (auto: patches for a CSV or class folders, else scenes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bad-fraction", type=fraction, default=0.01,
                        help="share of sampled patch files that may be unreadable or not match the others "
                             "(skipped and listed in the JSON) before stats stops (default 0.01)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    if args.tiles < 1 or args.tile_size < 1:
        raise ValueError("--tiles and --tile-size must be >= 1")
    bands = parse_band_indices(args.bands, "--bands")
    # a config's data.stats may name the file: a resumed run must not see other numbers. Before sampling.
    check_outputs([Path(args.out)], args.overwrite)
    source = args.input if len(args.input) > 1 else args.input[0]
    stats = compute_stats(source, kind=args.kind, bands=bands, n_tiles=args.tiles,
                          tile_size=args.tile_size, seed=args.seed, max_bad_fraction=args.max_bad_fraction,
                          bad_fraction_setting="--max-bad-fraction")
    stats.save(args.out)

    def fmt(values: list[float]) -> str:
        return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"

    print(f"stats: {stats.count} bands ({stats.dtype}) from {len(stats.sources)} source(s), "
          f"{stats.n_pixels:,} valid pixels"
          + (f", {len(stats.skipped_files)} bad file(s) skipped" if stats.skipped_files else "")
          + f"; mean {fmt(stats.mean)} std {fmt(stats.std)} -> {args.out}")
    return 0
