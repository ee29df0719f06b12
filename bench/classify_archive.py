"""Classifying an archive: throughput against the encoder's own forward, workers, reruns, kills, memory.

    .venv/bin/python bench/classify_archive.py                 # 200 scenes (a few minutes on 2 cores)
    .venv/bin/python bench/classify_archive.py --quick         # 12 scenes, for tests (about a minute)

The archive: ``--scenes`` copies of the shared uint8 scenes (NAIP and Landsat in turn; whole, or crops of at
most ``--crop`` px a side at seeded offsets), half in ``a/`` and half in ``b/`` under the same file names (so
output names must be told apart), every ``--corrupt-every``-th one truncated after its header and one text
file named ``.tif``. The model: a ViT-tiny of the demo's size (6 blocks, patch 8, 64 px; plain patch embedding) at random init
with a random linear head (speed does not depend on the weights). Each figure comes from ``geossl classify``
run as a user runs it, in its own process (wall time and peak RSS of its process tree from ``wait4``):

- ``forward``: windows/s of the model alone (``predict_proba`` on batches of real windows already in memory,
  same batch size, same threads): the ceiling; ``pipeline_ratio`` = the whole pipeline's windows/s (read,
  infer, write maps, previews, STAC, manifest, folder products) over it (goal at least 0.8);
  the same without previews (``--no-preview``: a preview is a matplotlib figure per scene);
- ``workers``: one thread per worker, ``--workers 2`` against one process, both without previews (goal at
  least 1.8x);
- ``rerun``: the same command again maps nothing (every good scene skipped as current);
- ``kill``: the same command in a fresh folder, SIGTERM to its process group at a seeded random moment,
  then the same command to the end: every map's bytes against the uninterrupted run's;
- ``memory``: peak RSS mapping 1 scene against all of them (goal within 10 %).

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The shared scenes in the model's units (uint8 RGB); the Sentinel-2-like COG is reflectance and would fail the
# statistics check by design.
SOURCES = ("scenes/naip_5m_north_dakota_2019.tif", "scenes/landsat7_300m_RGB.byte.tif")
GOALS = {"pipeline_ratio": 0.8, "workers_speedup": 1.8, "memory_ratio": 1.1}


def build_archive(root: Path, data: Path, n: int, crop: int, corrupt_every: int, seed: int) -> dict[str, int]:
    """``n`` cropped copies of the shared scenes under ``root/a`` and ``root/b`` (see the module docstring)."""
    import rasterio
    from rasterio.windows import Window

    rng = random.Random(seed)
    good = bad = 0
    for i in range(n):
        src_path = data / SOURCES[i % len(SOURCES)]
        dst = root / ("a" if i < n // 2 else "b") / f"scene_{i % max(1, n // 2):03d}.tif"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(src_path) as src:
            w, h = min(crop or src.width, src.width), min(crop or src.height, src.height)
            win = Window(rng.randrange(src.width - w + 1), rng.randrange(src.height - h + 1), w, h)
            profile = {**src.profile, "width": w, "height": h, "transform": src.window_transform(win),
                       "driver": "GTiff", "tiled": False, "compress": "deflate"}
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            with rasterio.open(dst, "w", **profile) as out:
                out.write(src.read(window=win))
        if corrupt_every and i % corrupt_every == corrupt_every - 1:
            size = dst.stat().st_size
            with open(dst, "r+b") as fh:
                fh.truncate(max(1024, size // 3))
            bad += 1
        else:
            good += 1
    (root / "a" / "notes.tif").write_text("not a raster\n")
    return {"good": good, "bad": bad + 1}


def make_model(path: str) -> Path:
    from bench.synthetic import make_tiny_model

    return make_tiny_model(path, img_size=64, patch_size=8, depth=6)


def run_classify(inputs: str, model: Path, out: Path, extra: list[str], kill_after: float | None = None
                 ) -> dict[str, Any]:
    """``geossl classify`` in its own process group: exit code, wall seconds and the peak RSS (MB) of its
    process tree (``wait4`` reports the largest of the child and the descendants it waited for)."""
    cmd = [sys.executable, "-m", "geossl.cli", "classify", "--model", str(model), "--input", inputs,
           "--bands", "1,2,3", "--out", str(out), "--quiet", *extra]
    log = out.with_name(out.name + ".log")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if kill_after is not None and time.perf_counter() - t0 > kill_after:
                os.killpg(proc.pid, signal.SIGTERM)
                kill_after = None
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("classify:")]
    summary = lines[-1] if lines else ""
    in_run = re.search(r" in ([0-9.]+) s on ", summary)
    return {"rc": os.waitstatus_to_exitcode(status), "seconds": wall, "summary": summary,
            "run_seconds": float(in_run.group(1)) if in_run else None, "peak_mb": usage.ru_maxrss / 1024.0}


def manifest_status(out: Path) -> dict[str, int]:
    """The latest status of every scene in ``out/manifest.jsonl``, counted."""
    latest: dict[str, str] = {}
    path = out / "manifest.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        latest[rec["scene"]] = rec["status"]
    counts: dict[str, int] = {}
    for status in latest.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def map_digests(out: Path) -> dict[str, str]:
    """SHA-256 of every class map (``*_classes.tif``) in ``out``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*_classes.tif"))}


def forward_windows_per_s(model_dir: str, scene: str, windows: str, batch_size: str, threads: str) -> float:
    """The model alone on ``windows`` real windows (those of ``scene``, cycled), already in memory."""
    import numpy as np
    import torch

    from geossl.models.landcover import load_landcover_model
    from geossl.scene.reader import ModelSceneReader

    windows_n, batch, = int(windows), int(batch_size)
    torch.set_num_threads(int(threads))
    model = load_landcover_model(Path(model_dir))
    tile = model.meta.img_size
    with ModelSceneReader(scene, model.meta, [1, 2, 3], None) as reader:
        origins = [(c, r) for r in range(0, reader.height - tile + 1, tile) for c in range(0, reader.width - tile + 1, tile)]
        tiles, _ = reader.read_batch(origins, tile)
    stack = torch.from_numpy(np.ascontiguousarray(tiles, np.float32))
    with torch.inference_mode():
        model.predict_proba(stack[:batch])  # warm-up
        t0 = time.perf_counter()
        for b in range(0, windows_n, batch):
            model.predict_proba(stack[torch.arange(b, min(b + batch, windows_n)) % len(stack)])
        return windows_n / (time.perf_counter() - t0)


def in_child(name: str, *args: object) -> str:
    """``name(*args)`` of this module in a fresh process (its printed result). Torch is imported only there: this
    process stays small, so the peak RSS that ``wait4`` reports for a classify run (which counts the memory a
    child starts from, this process's) is the run's own."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bench.classify_archive as m; "
            "print(getattr(m, sys.argv[2])(*sys.argv[3:]))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent.parent), name,
                          *map(str, args)], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--crop", type=int, default=0, help="largest side of each scene copy, px (0: whole scenes)")
    p.add_argument("--corrupt-every", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="12 scenes")
    p.add_argument("--workdir", type=Path, default=None, help="keep the archive and outputs here")
    args = p.parse_args()
    if args.quick:
        args.scenes, args.crop, args.corrupt_every = 12, 256, 5
    from geossl.settings import data_root

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geossl-bench-archive-"))
    try:
        payload = measure(args, data_root(), work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(payload, separators=(",", ":")), flush=True)


def measure(args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    counts = build_archive(work / "archive", data, args.scenes, args.crop, args.corrupt_every, args.seed)
    model = Path(in_child("make_model", work / "model"))
    inputs = str(work / "archive" / "*" / "*.tif")
    cores = os.cpu_count() or 1
    print(f"archive: {counts['good']} good scene(s), {counts['bad']} bad, "
          f"{f'crops of at most {args.crop} px' if args.crop else 'whole scenes'}", flush=True)
    base = ["--batch-size", str(args.batch_size)]

    one = run_classify(inputs, model, work / "out1", base)
    windows = _windows(work / "out1")
    fwd = float(in_child("forward_windows_per_s", model, data / SOURCES[0], windows, args.batch_size, cores))
    pipe = windows / one["run_seconds"]  # from model load to the folder products; the interpreter's start apart
    print(f"one process, {cores} threads: {one['summary']} ({one['seconds']:.1f} s with start-up; {pipe:.1f} windows/s; "
          f"model alone {fwd:.1f} windows/s)", flush=True)

    rerun = run_classify(inputs, model, work / "out1", base)
    status = manifest_status(work / "out1")
    bare = run_classify(inputs, model, work / "out_np", [*base, "--no-preview"])
    bare_pipe = windows / bare["run_seconds"]
    print(f"without previews: {bare['summary']} ({bare_pipe:.1f} windows/s)", flush=True)

    lean = [*base, "--no-preview", "--threads", "1"]
    t1 = run_classify(inputs, model, work / "out_t1", lean)
    t2 = run_classify(inputs, model, work / "out_w2", [*lean, "--workers", "2"])
    print(f"one thread: 1 worker {t1['seconds']:.1f} s, 2 workers {t2['seconds']:.1f} s", flush=True)

    start_up = one["seconds"] - one["run_seconds"]
    kill_at = start_up + random.Random(args.seed + 1).uniform(0.2, 0.8) * one["run_seconds"]
    killed = run_classify(inputs, model, work / "out_k", base, kill_after=kill_at)
    after_kill = manifest_status(work / "out_k")
    resumed = run_classify(inputs, model, work / "out_k", base)
    ref, got = map_digests(work / "out1"), map_digests(work / "out_k")
    leftovers = sorted(p.name for p in (work / "out_k").iterdir()
                       if p.name != ".lock" and (".tmp" in p.name or p.name.startswith(".")))

    first = sorted((work / "archive" / "a").glob("scene_*.tif"))[0]
    single = run_classify(str(first), model, work / "out_one", base)
    peak_one, peak_all = single["peak_mb"], one["peak_mb"]
    result = {
        "bench": "classify_archive", "cores": cores, "scenes": args.scenes, "good": counts["good"],
        "bad": counts["bad"], "crop_px": args.crop, "windows": windows, "batch_size": args.batch_size,
        "pipeline": {"seconds": round(one["run_seconds"], 2), "process_seconds": round(one["seconds"], 2),
                     "windows_per_s": round(pipe, 1), "rc": one["rc"],
                     "summary": one["summary"]},
        "pipeline_no_preview": {"seconds": round(bare["run_seconds"], 2), "windows_per_s": round(bare_pipe, 1)},
        "forward_windows_per_s": round(fwd, 1), "pipeline_ratio": round(pipe / fwd, 3),
        "pipeline_ratio_no_preview": round(bare_pipe / fwd, 3),
        "manifest": status, "rerun": {"seconds": round(rerun["seconds"], 2), "summary": rerun["summary"],
                                      "no_work": f"{counts['good']} skipped as current" in rerun["summary"]},
        "workers": {"one_thread_1_worker_s": round(t1["seconds"], 2), "one_thread_2_workers_s": round(t2["seconds"], 2),
                    "speedup": round(t1["seconds"] / t2["seconds"], 3),
                    "same_maps": map_digests(work / "out_t1") == map_digests(work / "out_w2") == ref,
                    "options": "--no-preview --threads 1"},
        "kill": {"at_s": round(kill_at, 2), "rc": killed["rc"], "manifest_after_kill": after_kill,
                 "resumed_rc": resumed["rc"], "maps": len(got), "byte_identical": got == ref,
                 "temporary_files_left": leftovers},
        "memory": {"one_scene_peak_mb": round(peak_one, 1), "all_scenes_peak_mb": round(peak_all, 1),
                   "ratio": round(peak_all / peak_one, 3), "one_scene_rc": single["rc"]},
        "goals": GOALS,
    }
    result["ok"] = {"pipeline_ratio": result["pipeline_ratio"] >= GOALS["pipeline_ratio"],
                    "pipeline_ratio_no_preview": result["pipeline_ratio_no_preview"] >= GOALS["pipeline_ratio"],
                    "workers_speedup": result["workers"]["speedup"] >= GOALS["workers_speedup"],
                    "memory": result["memory"]["ratio"] <= GOALS["memory_ratio"],
                    "rerun_no_work": result["rerun"]["no_work"], "kill_byte_identical": result["kill"]["byte_identical"]}
    print(f"pipeline {result['pipeline_ratio']:.2f}x the model alone ({result['pipeline_ratio_no_preview']:.2f}x "
          f"without previews); 2 workers {result['workers']['speedup']:.2f}x "
          f"1 (one thread each); rerun {rerun['seconds']:.1f} s ({rerun['summary']}); killed at {kill_at:.1f} s, "
          f"resumed: {len(got)} maps, byte-identical {got == ref}; peak RSS 1 scene {peak_one:.0f} MB, "
          f"{args.scenes} scenes {peak_all:.0f} MB", flush=True)
    return result


def _windows(out: Path) -> int:
    """Windows mapped in ``out`` (the manifest's ``done`` lines)."""
    total = 0
    for line in (out / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["status"] == "done":
            total += int(rec.get("windows", 0))
    return total


if __name__ == "__main__":
    main()
