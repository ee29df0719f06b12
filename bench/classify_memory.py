"""Peak memory and windows/s of scene classification on a synthetic scene far larger than its map.

Makes a tiled, deflate-compressed uint8 GeoTIFF (default 20,000 x 20,000 x 3 = 1.2 GB of pixels, 4.8 GB
as float32) in a temporary folder, strip by strip, and a tiny random model (1-block ViT-Tiny, 32 px
tiles); then classifies it in a fresh subprocess whose peak RSS (ru_maxrss) is the figure: the
classification process holds nothing but torch, a few map rows and two batches. Goal: < 2 GB.

    .venv/bin/python bench/classify_memory.py            # 20,000^2 px, stride 128 (a few minutes on 2 cores)
    .venv/bin/python bench/classify_memory.py --quick    # 2,048^2 px, for tests (seconds)
    .venv/bin/python bench/classify_memory.py --quick --dense  # also window vs dense maps at stride = tile

``--dense`` gives the model a (random) dense head and adds two more measured children on the same scene,
in the same run: a window map and a dense map (``classify --dense``, one cell per patch), both with
stride = tile so they read and encode exactly the same windows; the JSON gets a ``dense`` section.

The LAST stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_PEAK_MB = 2048.0


def rss_mb() -> float:
    """Peak RSS of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0), so the next peak is ours alone."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """The measured process: load the model, classify, report its own peak RSS."""
    import torch

    from geossl.models.landcover import load_landcover_model
    from geossl.predict.scene import classify_scene

    torch.set_num_threads(args.threads)
    model = load_landcover_model(Path(args.model))
    baseline = rss_mb()
    reset = reset_peak()
    before = _status_mb("VmRSS")
    result = classify_scene(model, args.scene, args.out, tile_size=args.tile, stride=args.stride,
                            batch_size=args.batch_size, preview=not args.no_preview, overwrite=True, progress=False,
                            **({"dense": True} if args.dense_child else {}))
    hwm = _status_mb("VmHWM")
    growth = hwm - before if reset and hwm is not None and before is not None else None
    print(json.dumps({"windows": result.windows, "seconds": result.seconds, "map_size": list(result.map_size),
                      "baseline_rss_mb": baseline, "peak_rss_mb": max(rss_mb(), baseline),
                      "classify_growth_mb": growth, "summary": result.summary()}))


def run_child(args: argparse.Namespace, scene: Path, model: Path, out: Path, stride: int,
              dense: bool = False) -> dict:
    """One measured classification in a fresh process; its last stdout line (JSON)."""
    cmd = [sys.executable, __file__, "--child", str(scene), str(model), str(out), "--tile",
           str(args.tile), "--stride", str(stride), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)] + (["--no-preview"] if args.no_preview else [])
    proc = subprocess.run(cmd + (["--dense-child"] if dense else []), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"classification failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_dense_head(model: Path) -> None:
    """Re-save the tiny model with a random dense head (what `geossl probe --dense` would add)."""
    import torch

    from geossl.models.landcover import LinearHead, load_landcover_model, save_landcover_model

    m = load_landcover_model(model)
    dense = LinearHead(m.meta.embed_dim, len(m.classes))
    torch.manual_seed(2)
    torch.nn.init.normal_(dense.linear.weight, std=0.3)
    save_landcover_model(model, m.head, m.classes, m.feature_recipe, model, {"synthetic": True}, dense, {})


def dense_comparison(args: argparse.Namespace, scene: Path, model: Path, work: Path) -> dict:
    """Window map vs dense map, both at stride = tile (the same windows read and encoded)."""
    out: dict = {"stride": args.tile}
    for name, dense in (("window", False), ("dense", True)):
        res = run_child(args, scene, model, work / f"out-{name}", args.tile, dense)
        print(res["summary"], flush=True)
        cells = res["map_size"][0] * res["map_size"][1]
        out[name] = {"windows": res["windows"], "map_size": res["map_size"], "seconds": round(res["seconds"], 2),
                     "cells_per_s": round(cells / max(res["seconds"], 1e-9), 1),
                     "peak_rss_mb": round(res["peak_rss_mb"], 1),
                     "classify_growth_mb": None if res["classify_growth_mb"] is None
                     else round(res["classify_growth_mb"], 1)}
    out["time_ratio"] = round(out["dense"]["seconds"] / max(out["window"]["seconds"], 1e-9), 2)
    out["ok"] = out["dense"]["peak_rss_mb"] < GOAL_PEAK_MB
    print(f"stride {args.tile}: window map {out['window']['seconds']} s, peak {out['window']['peak_rss_mb']} MB; "
          f"dense map {out['dense']['seconds']} s, peak {out['dense']['peak_rss_mb']} MB "
          f"({out['time_ratio']}x the time)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,048 px scene: seconds, for tests")
    parser.add_argument("--size", type=int, default=None, help="scene width = height in pixels (default 20,000)")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--no-preview", action="store_true", help="skip the preview PNG (a decimated full read)")
    parser.add_argument("--workdir", default=None, help="where to build the scene (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scene and outputs")
    parser.add_argument("--dense", action="store_true",
                        help="also time window vs dense (per-patch) maps at stride = tile, same scene, same run")
    parser.add_argument("--child", nargs=3, metavar=("SCENE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--dense-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.scene, args.model, args.out = args.child
        return child(args)

    from bench.synthetic import make_tiny_model, write_synthetic_scene

    size = args.size or (2048 if args.quick else 20000)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="geossl-bench-classify-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        scene = write_synthetic_scene(work / f"synthetic_{size}.tif", size, size, 3, border=size // 10)
        make_seconds = time.perf_counter() - t
        model = make_tiny_model(work / "model", img_size=args.tile)
        print(f"scene {size}x{size}x3 uint8 ({scene.stat().st_size / 2**20:.0f} MiB on disk) made in "
              f"{make_seconds:.1f} s", flush=True)
        if args.dense:
            add_dense_head(model)
        res = run_child(args, scene, model, work / "out", args.stride)
        print(res["summary"], flush=True)
        payload = {
            "bench": "classify_memory", "scene_px": [size, size], "bands": 3, "dtype": "uint8",
            "scene_float32_mb": round(size * size * 3 * 4 / 2**20, 1), "tile": args.tile, "stride": args.stride,
            "windows": res["windows"], "map_size": res["map_size"], "seconds": round(res["seconds"], 2),
            "windows_per_s": round(res["windows"] / max(res["seconds"], 1e-9), 1),
            "baseline_rss_mb": round(res["baseline_rss_mb"], 1), "peak_rss_mb": round(res["peak_rss_mb"], 1),
            "classify_growth_mb": None if res["classify_growth_mb"] is None else round(res["classify_growth_mb"], 1),
            "goal_peak_mb": GOAL_PEAK_MB, "ok": res["peak_rss_mb"] < GOAL_PEAK_MB, "device": "cpu",
            "threads": args.threads, "preview": not args.no_preview, "make_scene_s": round(make_seconds, 1),
        }
        print(f"peak RSS {payload['peak_rss_mb']} MB (imports + model load: {payload['baseline_rss_mb']} MB; "
              f"classification added at most {payload['classify_growth_mb']} MB; goal < {GOAL_PEAK_MB:.0f} MB); "
              f"{payload['windows_per_s']} windows/s", flush=True)
        if args.dense:
            payload["dense"] = dense_comparison(args, scene, model, work)
        print(json.dumps(payload, separators=(",", ":")), flush=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
