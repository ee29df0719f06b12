"""``geossl embed``: one embedding per tile (tile files, or grid windows of scenes) -> (Geo)Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from geossl.argtypes import positive_int
from geossl.choices import FEATURE_RECIPES, INPUT_MODES
from geossl.data.raster import parse_band_indices
from geossl.devices import pick_device
from geossl.models.encoder import load_encoder
from geossl.predict.embed import embed_inputs
from geossl.predict.tiles import image_inputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True,
                        help="encoder folder (model.safetensors + geossl.json); a probe's model folder works too")
    parser.add_argument("--input", required=True, nargs="+", help="tiles or scenes: files, folders, globs, s3://...")
    parser.add_argument("--out", required=True,
                        help="output .parquet file (GeoParquet when georeferenced), or a folder for many scenes: one "
                             "GeoParquet per scene as a dataset partitioned by scene, with a run manifest")
    parser.add_argument("--recipe", choices=FEATURE_RECIPES, default="cls",
                        help="cls: final CLS token; cls_last4 / cls_avgpool: the probe feature recipes")
    parser.add_argument("--mode", choices=INPUT_MODES, default="auto",
                        help="scenes are cut into a grid of windows; auto: files larger than a tile are scenes")
    parser.add_argument("--tile-size", type=positive_int, default=None, help="window size for scenes (default: img_size)")
    parser.add_argument("--stride", type=positive_int, default=None, help="window step for scenes (default: tile size)")
    parser.add_argument("--bands", default=None, help="1-based bands to feed the encoder, in order, e.g. 1,2,3")
    parser.add_argument("--resample", action=argparse.BooleanOptionalAction, default=None,
                        help="resample scenes to the encoder's gsd (default: automatic when possible)")
    parser.add_argument("--min-valid", type=float, default=0.5, help="skip scene windows with fewer valid pixels")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-check-stats", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--stacks", action="store_true",
                        help="scenes of one ground on several dates: one row per window and date, on the grid of "
                             "the stack's first date (columns date and stack)")
    parser.add_argument("--dates", default=None,
                        help="uri,date CSV of acquisition dates (default: TIFFTAG_DATETIME, else the file name)")


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    encoder = load_encoder(Path(args.encoder), device=device)
    if not str(args.out).endswith(".parquet"):  # a folder: one GeoParquet per scene, with a run manifest
        from geossl.predict.embed_folder import embed_folder

        return embed_folder(args, encoder, image_inputs(args.input), parse_band_indices(args.bands, "--bands"))
    result = embed_inputs(
        encoder, image_inputs(args.input), args.out, recipe=args.recipe, mode=args.mode, tile_size=args.tile_size,
        stride=args.stride, bands=parse_band_indices(args.bands, "--bands"), resample=args.resample, min_valid=args.min_valid,
        batch_size=args.batch_size, overwrite=args.overwrite, check_stats=not args.no_check_stats,
        progress=not args.quiet, stacks=args.stacks, dates_csv=args.dates,
    )
    print(result.summary())
    return 0
