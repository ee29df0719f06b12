"""``geossl chips``: cut valid chips from any number of scenes into LitData shards for pretraining.

    geossl chips --scenes s3://archive/s2/ --out chips/ --count 200000 --tile-size 64 --workers 8 \\
        --index scenes.parquet --upload s3://bucket/chips/

then pretrain with ``data.kind: shards`` and ``data.paths: [chips/]`` (or the ``s3://`` prefix).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from geossl.data.raster import parse_band_indices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", nargs="+", required=True,
                        help="scenes: files, folders, globs, s3:// prefixes (any count; band counts must agree or "
                             "--bands chosen)")
    parser.add_argument("--out", required=True, help="local output folder (LitData chunks + geossl_chips.json)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--count", type=int, help="random chips: this many, drawn like pretraining's random tiles "
                                                "(scenes in proportion to their area, seeded)")
    mode.add_argument("--grid", action="store_true", help="every whole window of a grid over each scene")
    parser.add_argument("--stride", type=int, default=None, help="grid step in pixels (default: the tile size)")
    parser.add_argument("--tile-size", type=int, default=64, help="chip size in pixels (default 64)")
    parser.add_argument("--bands", default=None, help="1-based bands to keep, e.g. 4,3,2 (default: all)")
    parser.add_argument("--min-valid", type=float, default=0.9,
                        help="share of valid pixels a chip needs (random chips are redrawn, grid chips dropped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                        help="processes cutting chips (default: all cores but one)")
    parser.add_argument("--chunk-mb", type=int, default=64, help="LitData chunk size in MB (default 64)")
    parser.add_argument("--part-size", type=int, default=20_000,
                        help="chips per resumable part: an interrupted run redoes at most one part per worker")
    parser.add_argument("--index", default=None,
                        help="scene index GeoParquet: built on first use, reused while current (start-up then "
                             "opens no scene)")
    parser.add_argument("--max-open", type=int, default=64, help="scene files open at once per process")
    parser.add_argument("--upload", default=None, metavar="S3_URI", help="then upload the chips to this s3:// prefix")
    parser.add_argument("--overwrite", action="store_true", help="replace chips already in --out")


def run(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    for name in ("tile_size", "chunk_mb", "part_size", "max_open"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.stride is not None and args.stride < 1:
        raise ValueError(f"--stride must be >= 1, got {args.stride}")
    if not 0.0 <= args.min_valid <= 1.0:
        raise ValueError(f"--min-valid must lie in [0, 1], got {args.min_valid}")
    if args.upload and not args.upload.startswith("s3://"):
        raise ValueError(f"--upload: expected an s3:// prefix, got {args.upload!r}")
    from geossl.data.shards import ChipPlan, cut_shards
    from geossl.data.uris import expand_inputs
    from geossl.io import RunLock

    start = time.perf_counter()
    plan = ChipPlan(scenes=expand_inputs(args.scenes), tile_size=args.tile_size,
                    mode="grid" if args.grid else "random", count=args.count, stride=args.stride,
                    bands=parse_band_indices(args.bands, "--bands"), min_valid_fraction=args.min_valid, seed=args.seed,
                    part_size=args.part_size)
    # one writer per --out: two runs would cut the same parts and replace each other's chunks
    with RunLock(Path(args.out), what="geossl chips", option="--out"):
        meta = _already_cut(Path(args.out), plan) if args.upload and not args.overwrite else None
        if meta is None:
            meta = cut_shards(plan, args.out, workers=args.workers, chunk_bytes=f"{args.chunk_mb}MB",
                             max_open=args.max_open, index=args.index, overwrite=args.overwrite,
                             progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
        where = args.out
        if args.upload:
            _upload(args.out, args.upload)
            where = f"{args.out} and {args.upload}"
    if meta.get("already_cut"):
        print(f"chips: {meta['count']} chips already cut in {args.out}, uploaded to {args.upload}; {seconds:.1f} s")
        return 0
    resumed = f", {meta['resumed_parts']} part(s) reused" if meta["resumed_parts"] else ""
    if meta.get("recut_chunks"):
        resumed += f", {meta['recut_chunks']} damaged chunk(s) cut again"
    print(f"chips: {meta['count']} chips of {meta['tile_size']} px, {meta['band_count']} bands {meta['dtype']}, "
          f"from {len(meta['scenes'])} scene(s) in {len(meta['chunk_sizes'])} chunk(s){resumed} -> {where}; "
          f"{seconds:.1f} s ({meta['count'] / max(seconds, 1e-9):.0f} chips/s)")
    return 0


def _already_cut(out: Path, plan: Any) -> dict[str, Any] | None:
    """The description of chips this plan already cut into ``out`` (a rerun after a failed upload then
    only uploads), or None: nothing finished there, or chips of another plan (cut_shards refuses those)."""
    from geossl.data.shards import META_FILE, read_shard_meta

    if not (out / META_FILE).is_file():
        return None
    meta = read_shard_meta(str(out))
    return {**meta, "already_cut": True} if meta.get("plan") == asdict(plan) else None


def _upload(out: str, prefix: str) -> None:
    """Upload the chips; a failure keeps them and says that a rerun of the same command only uploads."""
    from geossl.data.s3 import upload_dir

    try:
        upload_dir(out, prefix)
    except OSError as exc:
        raise OSError(f"--upload: {exc}; the chips in {out} are kept and a rerun of this command only "
                      "uploads them") from None
