"""Random tiles per second per core: geossl RandomTileDataset vs torchgeo RasterDataset + RandomPatchSampler.

Both read the same real scenes in one run, single process (num_workers=0), one thread, pinned to one
core where the OS allows. Prints one line per (scene, tile size), then as the LAST line one JSON
object with the figures and speed-ups. Goal: >= 10x torchgeo per core.

    .venv/bin/python bench/tiles.py            # full counts (~20 s)
    .venv/bin/python bench/tiles.py --quick    # tiny counts, for tests (a few seconds)
    .venv/bin/python bench/tiles.py --many 1500   # an archive of 1,500 scene files: per-scene handles vs
                                                  # the LRU pool vs shards (local and S3), start-up with an index
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("GDAL_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from geossl.data.scene_index import scene_info  # noqa: E402
from geossl.data.scenes import RandomTileDataset  # noqa: E402
from geossl.data.uris import expand_inputs  # noqa: E402
from geossl.settings import data_root  # noqa: E402

GOAL_SPEEDUP = 10.0


def pin_to_one_core() -> int | None:
    """Pin this process to one CPU so "per core" means one core; returns it (None where unsupported)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu


def time_geossl(scene: str, size: int, n: int, seed: int) -> float:
    dataset = RandomTileDataset(scene, tile_size=size, length=n + 1, min_valid_fraction=0.0, seed=seed)
    dataset[n]  # open the file handle outside the timed loop (torchgeo's is opened in its warm-up too)
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - start)


def time_torchgeo(scene: str, size: int, n: int, seed: int) -> float:
    from torchgeo.samplers import RandomPatchSampler

    from geossl.data.torchgeo_compat import torchgeo_raster_dataset

    dataset = torchgeo_raster_dataset(scene)
    sampler = RandomPatchSampler(dataset, size=size, length=n + 1, generator=seed)
    queries = iter(sampler)
    dataset[next(queries)]  # warm-up: file handle cache, VRT
    start = time.perf_counter()
    for query in queries:
        dataset[query]
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=[str(data_root() / "scenes")],
                        help="scene files/folders/globs/s3 URIs (default: the real scenes)")
    parser.add_argument("--sizes", default="64,224", help="tile sizes in pixels, comma-separated")
    parser.add_argument("--n", type=int, default=3000, help="tiles timed per scene and size, geossl")
    parser.add_argument("--n-torchgeo", type=int, default=300, help="tiles timed per scene and size, torchgeo")
    parser.add_argument("--quick", action="store_true", help="tiny counts (a few seconds), for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--many", type=int, default=0, metavar="N",
                        help="many-scenes mode: N scene files (bench/archive_tiles.py)")
    parser.add_argument("--many-tiles", type=int, default=3000, help="many-scenes mode: tiles timed after the first")
    parser.add_argument("--many-chips", type=int, default=5000, help="many-scenes mode: shard chips cut and read")
    args = parser.parse_args(argv)
    if args.many:
        return many_scenes(args)
    if args.quick:
        args.n, args.n_torchgeo = 100, 10
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cpu = pin_to_one_core()
    sizes = [int(s) for s in args.sizes.split(",")]

    results, skipped = [], []
    for uri in expand_inputs(args.scenes):
        info = scene_info(uri)
        name = Path(uri).name
        for size in sizes:
            if info.width < size or info.height < size:
                skipped.append({"scene": name, "tile_size": size, "why": f"scene is {info.width}x{info.height} px"})
                print(f"{name} {size}px: skipped (scene is {info.width}x{info.height} px)")
                continue
            ours = time_geossl(uri, size, args.n, args.seed)
            theirs = time_torchgeo(uri, size, args.n_torchgeo, args.seed)
            results.append({
                "scene": name, "tile_size": size, "bands": info.count, "dtype": info.dtype,
                "geossl_tiles_per_s": round(ours, 1), "torchgeo_tiles_per_s": round(theirs, 1),
                "speedup": round(ours / theirs, 2),
            })  # fmt: skip
            print(f"{name} {size}px ({info.count} x {info.dtype}): geossl {ours:,.0f} tiles/s, "
                  f"torchgeo {theirs:,.0f} tiles/s per core -> {ours / theirs:.1f}x")
    speedups = [r["speedup"] for r in results]
    geomean = math.exp(sum(math.log(s) for s in speedups) / len(speedups)) if speedups else None
    summary = {
        "bench": "tiles",
        "quick": args.quick,
        "per_core": {"num_workers": 0, "torch_threads": 1, "pinned_cpu": cpu},
        "host": platform.node(),
        "n_geossl": args.n,
        "n_torchgeo": args.n_torchgeo,
        "results": results,
        "skipped": skipped,
        "min_speedup": min(speedups) if speedups else None,
        "geomean_speedup": round(geomean, 2) if geomean else None,
        "goal_speedup": GOAL_SPEEDUP,
        "meets_goal": bool(speedups) and min(speedups) >= GOAL_SPEEDUP,
    }
    print(f"speed-up over torchgeo per core: min {summary['min_speedup']}x, geometric mean "
          f"{summary['geomean_speedup']}x (goal >= {GOAL_SPEEDUP:.0f}x)")
    print(json.dumps(summary))
    return 0


def many_scenes(args: argparse.Namespace) -> int:
    from bench.archive_tiles import print_table, run_many

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cpu = pin_to_one_core()
    scenes_dir = Path(args.scenes[0]) if Path(args.scenes[0]).is_dir() else data_root() / "scenes"
    summary = run_many(scenes_dir, args.many, args.many_tiles, args.many_chips)
    summary.update({"bench": "tiles-many-scenes", "per_core": {"num_workers": 0, "pinned_cpu": cpu},
                    "host": platform.node()})
    print_table(summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
