"""``geossl embed --out FOLDER``: many scenes, one GeoParquet each, as a Hive-partitioned dataset, with the run
manifest of ``geossl classify``.

``FOLDER/embeddings/scene=<stem>/part-0.parquet`` holds one scene's windows (the rows of a one-scene ``embed``);
``geopandas.read_parquet(FOLDER/embeddings)`` (or ``pyarrow.dataset``) reads all of them as one table with a
``scene`` column from the folder names. ``FOLDER/manifest.jsonl`` is :mod:`geossl.predict.manifest`'s: a rerun
skips scenes that are done and current (same input, encoder hash and options), retries failed ones and redoes
changed ones; names come from :func:`geossl.predict.common.unique_stems` (scenes of one file name in different
folders stay apart, and keep their names across runs). A scene that cannot be embedded is recorded with its
one-line reason and the others go on (exit status 1); a stop (Ctrl-C, SIGTERM) leaves no partial file under a
final name and the scene ``started``, redone by the next run.

Why not one file: a file per scene is what makes an archive run resumable and parallel (a rerun or a second
machine writes only its scenes), and what a SageMaker Processing shard uploads; the Hive layout is what
pyarrow, DuckDB, Spark and geopandas read as one dataset without a merge step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from geossl.io import RunLock
from geossl.models.landcover import model_hash
from geossl.predict.common import ensure_out_dir
from geossl.predict.embed import embed_inputs
from geossl.predict.stac import href_of
from geossl.predict.tiles import split_inputs

DATASET_DIR = "embeddings"


def scene_part(out_dir: Path, stem: str) -> Path:
    """Where one scene's rows go: a Hive partition ``scene=<stem>``."""
    return out_dir / DATASET_DIR / f"scene={stem}" / "part-0.parquet"


def embed_folder(args: argparse.Namespace, encoder: Any, uris: list[str], bands: list[int] | None) -> int:
    """Embed every scene of ``uris`` into its own partition of ``args.out`` (see the module docstring)."""
    start = time.perf_counter()
    if args.stacks:
        raise ValueError(f"--out {args.out}: --stacks writes one .parquet file (rows of every date together); "
                         "give a .parquet file name")
    tile = args.tile_size or encoder.meta.img_size
    scenes, tiles = split_inputs(uris, "scene" if args.mode == "auto" else args.mode, tile,
                                 args.tile_size is not None or args.stride is not None, unreadable_as_scenes=True)
    if tiles or not scenes:
        raise ValueError(f"--out {args.out}: a folder holds one GeoParquet per scene, but "
                         f"{(tiles or uris or ['the input'])[0]} is not a scene: embed tiles into one .parquet file")
    out_dir = ensure_out_dir(args.out)
    with RunLock(out_dir, "geossl embed", "--out"):
        counts = _embed_scenes(args, encoder, scenes, bands, tile, out_dir)
    done, skipped, failed, rows = counts
    print(f"embed: {len(scenes)} scene(s): {done} done, {skipped} skipped as current, {failed} failed "
          f"(manifest.jsonl), {rows} rows in {time.perf_counter() - start:.1f} s -> {out_dir / DATASET_DIR}")
    return 1 if failed else 0


def _embed_scenes(args: argparse.Namespace, encoder: Any, scenes: list[str], bands: list[int] | None, tile: int,
                  out_dir: Path) -> tuple[int, int, int, int]:
    """(done, skipped as current, failed, rows written) after embedding the scenes that are not current."""
    from geossl.predict.manifest import SCENE_ERRORS, Manifest, one_line_reason, plan_scenes, scene_record
    from geossl.predict.workers import sigterm_as_interrupt

    options = {"tile_size": tile, "stride": args.stride or tile, "bands": bands, "resample": args.resample,
               "min_valid": args.min_valid, "recipe": args.recipe}
    model = {"path": href_of(args.encoder), "hash": model_hash(args.encoder)}
    manifest = Manifest(out_dir)
    plans = plan_scenes(manifest, scenes, lambda uri, stem: {"embeddings": scene_part(out_dir, stem)},
                        model["hash"], options, args.overwrite)
    todo = [plan for plan in plans if not plan.current]
    done = failed = rows = 0
    with sigterm_as_interrupt():  # a stop passes every finally: no partial file is left under a final name
        for plan in todo:
            manifest.append(scene_record(plan, "started", model, options))
            try:
                result = embed_inputs(
                    encoder, [plan.uri], scene_part(out_dir, plan.stem), recipe=args.recipe, mode="scene",
                    tile_size=args.tile_size, stride=args.stride, bands=bands, resample=args.resample,
                    min_valid=args.min_valid, batch_size=args.batch_size, overwrite=plan.replace,
                    check_stats=not args.no_check_stats, progress=not args.quiet, dataset_part=True)
            except SCENE_ERRORS as exc:
                reason = one_line_reason(exc, plan.uri)
                manifest.append(scene_record(plan, "failed", model, options, reason))
                print(f"geossl embed: error: {reason}", file=sys.stderr, flush=True)
                failed += 1
                continue
            manifest.append(scene_record(plan, "done", model, options, rows=result.rows,
                                         seconds=round(result.seconds, 3)))
            print(result.summary(), flush=True)
            done += 1
            rows += result.rows
    return done, len(plans) - len(todo), failed, rows
