"""``geossl classify``: tiles -> predictions.csv/.geojson; scenes -> class-map COG, GeoJSON, preview.

Each input file is a *scene* (sliding window, map) or a *tile* (one prediction). ``--mode auto``
decides per file: a scene when it is larger than one tile or when --tile-size/--stride were given.
Everything that can be checked before inference is (model, output folder, existing outputs, file
names), so a mistake costs seconds, not the first scene's hour. Scenes are recorded in the folder's
``manifest.jsonl`` (:mod:`geossl.predict.manifest`): a rerun skips the current ones, one scene failing is
recorded and the others go on (exit 1), and same-named scenes from different folders get distinct names.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyproj import CRS
from pyproj.exceptions import CRSError
from tqdm.auto import tqdm

from geossl.argtypes import positive_int
from geossl.choices import BLENDS, INPUT_MODES, PROBS_DTYPES, RESCALES
from geossl.data.raster import parse_band_indices
from geossl.devices import pick_device
from geossl.io import RunLock, check_outputs
from geossl.models.landcover import load_landcover_model, model_hash
from geossl.predict.common import ensure_out_dir
from geossl.predict.scene import check_scene_options, scene_outputs
from geossl.predict.stac import href_of
from geossl.predict.tiles import CSV_NAME, GEOJSON_NAME, classify_tiles, image_inputs, split_inputs
from geossl.scene.rescale import check_rescale

if TYPE_CHECKING:
    from geossl.predict.manifest import Manifest, ScenePlan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="land-cover model folder written by `geossl probe` (<out>/model)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="scene(s) or tile(s): files, folders, globs, s3://bucket/prefix")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--mode", choices=INPUT_MODES, default="auto",
                        help="treat inputs as scenes (maps) or tiles (one prediction each); auto: by size")
    parser.add_argument("--tile-size", type=positive_int, default=None, help="window size in pixels (default: the model's img_size)")
    parser.add_argument("--stride", type=positive_int, default=None, help="window step = map pixel size (default: tile size)")
    parser.add_argument("--bands", default=None, help="1-based bands of the input to feed the model, in order, e.g. 1,2,3")
    parser.add_argument("--resample", action=argparse.BooleanOptionalAction, default=None,
                        help="resample scenes to the model's gsd (default: when the model has a gsd and the "
                             "scene's CRS is in metres)")
    parser.add_argument("--min-valid", type=float, default=0.5,
                        help="fraction of valid pixels a map cell needs; else nodata (255)")
    parser.add_argument("--probs", action="store_true", help="also write <scene>_probs.tif (one band per class)")
    parser.add_argument("--probs-dtype", choices=PROBS_DTYPES, default="float32",
                        help="probabilities as float32 (NaN nodata) or uint8 = round(p * 254), 255 nodata (4x smaller)")
    parser.add_argument("--blend", choices=BLENDS, default="mean",
                        help="combine overlapping windows (stride < tile) by a plain mean or a Hann-weighted mean "
                             "that trusts window centres more than borders")
    parser.add_argument("--tta", action="store_true",
                        help="average each window over its 8 flips/rotations (8x the inference)")
    parser.add_argument("--rescale", choices=RESCALES, default="none",
                        help="percentile: map each band's 2nd/98th percentiles onto the model's (scenes in other units)")
    parser.add_argument("--dense", action="store_true",
                        help="scenes: one map pixel per ViT patch (patch size x pixel size, e.g. 80 m for patch 8 "
                             "at 10 m) from the dense head of `geossl probe --dense`; --stride a multiple of the "
                             "patch size <= the tile (default: the tile); no tiles GeoJSON")
    parser.add_argument("--no-stac", action="store_true",
                        help="skip the <scene>_classes.stac.json STAC Items (and so the folder's collection.json)")
    parser.add_argument("--mosaic", action="store_true",
                        help="also write mosaic.tif: every class map of the folder in one CRS, as one COG "
                             "(classes.vrt, collection.json and areas.csv are written after every run)")
    parser.add_argument("--mosaic-crs", default=None,
                        help="CRS of the mosaic, e.g. EPSG:32614 (default: the CRS most maps are in)")
    parser.add_argument("--no-preview", action="store_true", help="skip <scene>_preview.png")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="map scenes on N processes, each with an equal share of the cores and its own copy "
                             "of the model (one progress bar over scenes); 1 = in this process")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per process (default: all cores in one process, an equal share per worker)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (not needed to redo a scene whose input or model changed: "
                             "the folder's manifest.jsonl shows its outputs are this run's to replace)")
    parser.add_argument("--no-check-stats", action="store_true",
                        help="run even when the input's values look unlike the model's training statistics")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def scenes_only_options(args: argparse.Namespace) -> str:
    """The scene-only options given (tiles are classified one prediction per file)."""
    given = [("--blend hann", args.blend != "mean"), ("--tta", args.tta), ("--rescale", args.rescale != "none"),
             ("--dense", getattr(args, "dense", False))]
    return ", ".join(name for name, on in given if on)


def check_mosaic_crs(text: str) -> None:
    """Refuse a --mosaic-crs PROJ cannot read, in one line and before any work (pyproj, not rasterio, whose
    GDAL prints its own "ERROR 1: PROJ ..." line to stderr first)."""
    try:
        CRS.from_user_input(text)
    except CRSError as exc:
        raise ValueError(f"--mosaic-crs {text}: not a CRS ({exc})") from None


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    device = pick_device(args.device)
    model = load_landcover_model(Path(args.model), device=device)
    if scenes_only_options(args) and args.mode == "tiles":
        raise ValueError(f"{scenes_only_options(args)} apply to scene maps, not --mode tiles")
    if args.mosaic_crs is not None:
        check_mosaic_crs(args.mosaic_crs)
        args.mosaic = True  # a mosaic CRS asks for a mosaic
    if args.rescale == "percentile":
        check_rescale(args.rescale, model.meta)  # a model without p2/p98: fail before any output
    if args.dense:
        from geossl.predict.dense import check_dense

        tile_px = args.tile_size or model.meta.img_size
        check_dense(model, tile_px, args.stride or tile_px, args.model)
    out_dir = ensure_out_dir(args.out)
    # One classify per folder at a time: two runs (say, with different models) would both pass the
    # existing-output check and then replace each other's maps.
    with RunLock(out_dir, "geossl classify", "--out"):
        return _classify_into(args, model, str(device), out_dir, start)


def _classify_into(args: argparse.Namespace, model: Any, device: str, out_dir: Path, start: float) -> int:
    """Plan the outputs (skip current scenes, refuse outputs that are not this run's to replace unless
    --overwrite: :mod:`geossl.predict.manifest`), classify tiles and scenes (folder locked); 1 when a scene failed."""
    from geossl.predict.manifest import MANIFEST_NAME, Manifest, pixel_options, plan_scenes

    bands = parse_band_indices(args.bands, "--bands")
    uris = image_inputs(args.input)
    tile = args.tile_size or model.meta.img_size
    scenes, tiles = split_inputs(uris, args.mode, tile, args.tile_size is not None or args.stride is not None,
                                 unreadable_as_scenes=True)
    if args.dense and tiles:
        raise ValueError(f"--dense maps scenes, but {tiles[0]} ({len(tiles)} input(s)) is classified as a tile "
                         "(no larger than one window): pass --mode scene or leave out --dense")
    if tiles:
        check_outputs([out_dir / CSV_NAME, out_dir / GEOJSON_NAME], args.overwrite)
    manifest, plans = Manifest(out_dir), []
    ctx: dict[str, Any] = {"bands": bands, "device": device}
    if scenes:
        ctx["model"] = {"path": href_of(args.model), "hash": model_hash(args.model)}
        tile, stride = check_scene_options(model, args.tile_size, args.stride, args.min_valid, args.blend,
                                           args.probs_dtype, args.dense, args.model)
        ctx["options"] = pixel_options(
            tile_size=tile, stride=stride, bands=bands, resample=args.resample, min_valid=args.min_valid,
            blend=args.blend, tta=args.tta, rescale=args.rescale, dense=args.dense, probs=args.probs,
            probs_dtype=args.probs_dtype)

        def outputs_of(uri: str, stem: str) -> dict[str, Path | None]:
            return scene_outputs(out_dir, uri, args.probs, not args.dense, not args.no_preview, not args.no_stac, stem)

        plans = plan_scenes(manifest, scenes, outputs_of, ctx["model"]["hash"], ctx["options"], args.overwrite)

    parts = []
    if tiles:
        result = classify_tiles(model, tiles, out_dir, bands=bands, batch_size=args.batch_size,
                                overwrite=args.overwrite, check_stats=not args.no_check_stats, progress=not args.quiet)
        print(result.summary(), flush=True)
        parts.append(f"{len(tiles)} tile file(s)")
    failed = 0
    if scenes:
        done, skipped, failed, n_windows = _map_scenes(args, model, out_dir, plans, manifest, ctx)
        parts.insert(0, f"{len(scenes)} scene(s): {done} done, {skipped} skipped as current, {failed} failed "
                        f"({MANIFEST_NAME}), {n_windows} windows")
    if scenes:
        from geossl.predict.collection import write_products

        products = write_products(out_dir, manifest.latest, model, args.model, dense=args.dense, mosaic=args.mosaic,
                                  mosaic_crs=args.mosaic_crs)
        print(f"classify: folder products: {products}", flush=True)
    seconds = time.perf_counter() - start
    print(f"classify: {' and '.join(parts)} in {seconds:.1f} s on {device} -> {out_dir}", file=sys.stdout)
    return 1 if failed else 0


def _scene_options(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`geossl.predict.scene.classify_scene` every scene of the run shares."""
    return {"tile_size": args.tile_size, "stride": args.stride, "bands": ctx["bands"], "resample": args.resample,
            "batch_size": args.batch_size, "min_valid": args.min_valid, "probs": args.probs,
            "preview": not args.no_preview, "check_stats": not args.no_check_stats, "progress": not args.quiet,
            "blend": args.blend, "tta": args.tta, "probs_dtype": args.probs_dtype, "rescale": args.rescale,
            "stac": not args.no_stac, "model_path": args.model, "dense": args.dense}


def _map_scenes(args: argparse.Namespace, model: Any, out_dir: Path, plans: list[ScenePlan], manifest: Manifest,
                ctx: dict[str, Any]) -> tuple[int, int, int, int]:
    """Map every scene that is not current, in this process or on ``--workers`` processes
    (:mod:`geossl.predict.workers`), recording each attempt in the manifest: a scene that fails
    (unreadable, truncated, wrong bands, a read error midway) is recorded with its one-line reason and the
    others go on; its outputs are never left half-written (:class:`geossl.predict.maps.COGStripWriter`
    writes beside the final name and renames). Returns (done, skipped as current, failed, windows)."""
    from geossl.predict.manifest import scene_record
    from geossl.predict.workers import SceneOutcome, classify_in_workers, classify_one, sigterm_as_interrupt

    todo = [plan for plan in plans if not plan.current]
    by_key = {plan.key: plan for plan in todo}
    counts = {"done": 0, "failed": 0, "windows": 0}
    options = _scene_options(args, ctx)

    def started(key: str) -> None:
        # "started" first: after a crash or kill the manifest still shows these outputs are this scene's
        manifest.append(scene_record(by_key[key], "started", ctx["model"], ctx["options"]))

    def finished(key: str, outcome: SceneOutcome) -> None:
        plan = by_key[key]
        if outcome.status == "failed":
            manifest.append(scene_record(plan, "failed", ctx["model"], ctx["options"], outcome.reason))
            print(f"geossl classify: error: {outcome.reason}", file=sys.stderr, flush=True)
            counts["failed"] += 1
            return
        manifest.append(scene_record(plan, "done", ctx["model"], ctx["options"], windows=outcome.windows,
                                     seconds=round(outcome.seconds, 3)))
        counts["done"] += 1
        counts["windows"] += outcome.windows
        print(outcome.summary, flush=True)

    if args.workers > 1 and len(todo) > 1:
        jobs = [(plan.key, plan.uri, plan.stem, plan.replace) for plan in todo]
        bar = _scene_bar(len(todo), args.quiet)
        for key, outcome in classify_in_workers(jobs, out_dir, options, args.model, ctx["device"], args.workers,
                                                started, args.threads):
            finished(key, outcome)
            bar.update(1)
        bar.close()
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        with sigterm_as_interrupt():  # a stop removes the scene's temporary outputs on its way out
            for plan in todo:
                started(plan.key)
                try:
                    outcome = classify_one(model, plan.uri, out_dir, plan.stem, plan.replace, options)
                except KeyboardInterrupt:  # a stop: the scene stays "started" (redone next run), as with workers
                    raise
                except BaseException as exc:  # a bug: recorded, then not swallowed
                    from geossl.predict.manifest import one_line_reason

                    manifest.append(scene_record(plan, "failed", ctx["model"], ctx["options"],
                                                 one_line_reason(exc, plan.uri)))
                    raise
                finished(plan.key, outcome)
    return counts["done"], len(plans) - len(todo), counts["failed"], counts["windows"]


def _scene_bar(total: int, quiet: bool) -> Any:
    """One progress bar over scenes (the workers draw none of their own)."""
    return tqdm(total=total, desc="scenes", unit="scene", disable=quiet)
