"""GPU speed of OUR DINO training step on synthetic uint8 batches already on the device.

The real ``DINOModule`` is driven by a real ``lightning.Trainer`` (training_step = GPU multi-crop,
teacher + student forward, loss; then per-parameter clipping, AdamW, EMA teacher). Reports img/s,
step time, peak memory (``torch.cuda.max_memory_allocated``), model FLOP/s and MFU, where model
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one eager step (an analytic
ViT formula is printed beside it as a cross-check; MFU uses H100 bf16 dense peak 989 TFLOP/s).
Compiled runs compile both backbones with ``geossl.dino.train.apply_compile`` (``dynamic=False``): the two
crop sizes give two graphs per backbone in the first step, and ``recompiles`` counts any graph built later (must be 0).

    python bench/gpu_step.py                          # both presets, batch 64/128/256, eager + compiled
    python bench/gpu_step.py --config vits16_224 --batch-sizes 128 --compile 1
    python bench/gpu_step.py --quick                  # tiny CPU run (tests)

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C  # noqa: E402

COLUMNS = [("config", "config", 0), ("bands", "C", 0), ("compile", "compile", 0), ("batch_size", "batch", 0),
           ("img_per_s", "img/s", 1), ("step_ms", "step ms", 1), ("aug_ms", "aug ms", 1),
           ("peak_mem_gib", "peak GiB", 2), ("tflops", "TFLOP/s", 1), ("mfu", "MFU", 3),
           ("recompiles", "recompiles", 0), ("n_sync_sites", "sync sites", 0), ("status", "status", 0)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", nargs="+", default=["vits16_224", "vits8_64"], choices=sorted(C.PRESETS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--probe", type=int, default=10, help="CUDA: extra steps under sync-debug mode (0: off)")
    ap.add_argument("--compile", choices=["0", "1", "both"], default="both")
    ap.add_argument("--bands", type=int, default=3)
    ap.add_argument("--n-local", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=None, help="for MFU; default 989 on CUDA, none on CPU")
    ap.add_argument("--augment-only", action="store_true", help="time MultiCropAugment alone (no model)")
    ap.add_argument("--reps", type=int, default=10, help="--augment-only: timed calls")
    ap.add_argument("--quick", action="store_true", help="tiny model, CPU, 2 steps: a smoke test in seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.device, args.config, args.batch_sizes = "cpu", ["tiny"], [4]
        args.steps, args.warmup, args.probe, args.compile, args.n_local = 2, 1, 0, "0", 2
    return args


def synthetic_pool(batch: int, bands: int, size: int, device: torch.device, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (batch, bands, size, size), dtype=torch.uint8, generator=g).to(device)
            for _ in range(n)]


def measure_step(preset: str, batch: int, compile_model: bool, args: argparse.Namespace,
                 device: torch.device) -> dict[str, Any]:
    """One (preset, batch, compile) run: FLOPs on an eager copy first, then the timed Trainer run."""
    cfg = C.bench_config(preset, batch, args.n_local, compile_model)
    total = args.warmup + args.steps + (args.probe if device.type == "cuda" else 0)
    mean, std = [110.0] * args.bands, [55.0] * args.bands
    module = C.build_module(cfg, args.bands, batch * total, mean, std, (0.0, 255.0)).to(device)
    pool = synthetic_pool(batch, args.bands, C.PRESETS[preset]["image"], device)
    flops_2 = C.count_flops(module, pool[0][:2])
    flops = flops_2 * batch / 2  # every op is per sample: FLOPs scale exactly with the batch
    analytic = C.analytic_flops(cfg, module, batch)
    timer = C.run_training(module, cfg, device, args.warmup, args.steps, args.probe if device.type == "cuda" else 0,
                           train_data=C.DeviceBatches(pool, total))
    step_s = timer.seconds / args.steps
    peak = args.peak_tflops or (C.H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None)
    row = {
        "config": preset, "bands": args.bands, "compile": int(compile_model), "batch_size": batch,
        "n_crops": 2 + args.n_local, "img_per_s": batch / step_s, "step_ms": step_s * 1000,
        "aug_ms": C.time_augment(module, pool[0]),
        "peak_mem_gib": timer.peak_bytes / 2**30 if device.type == "cuda" else None,
        "flops_per_step": flops, "analytic_flops_per_step": analytic, "flops_method": "FlopCounterMode",
        "tflops": flops / step_s / 1e12, "mfu": flops / step_s / 1e12 / peak if peak else None,
        "recompiles": timer.graphs1 - timer.graphs0, "compiled_graphs": timer.graphs1,
        "sync_sites": timer.sync_sites if device.type == "cuda" else None,
        "n_sync_sites": len(timer.sync_sites) if device.type == "cuda" else None,
        "status": "ok",
    }
    del module, pool
    C.free(device)
    return row


def measure_augment(preset: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """MultiCropAugment alone on uint8 input (value_range 0-255, every op on with the recipe's p)."""
    from geossl.dino.augment import MultiCropAugment

    cfg = C.bench_config(preset, batch, args.n_local, False)
    aug = MultiCropAugment(cfg.augment, [110.0] * args.bands, [55.0] * args.bands, (0.0, 255.0)).to(device)
    pool = synthetic_pool(batch, args.bands, C.PRESETS[preset]["image"], device, n=1)
    ms = C.time_augment(aug, pool[0], reps=args.reps)
    return {"config": preset, "bands": args.bands, "batch_size": batch, "n_crops": 2 + args.n_local,
            "image": C.PRESETS[preset]["image"], "aug_ms": ms, "aug_img_per_s": batch / ms * 1000,
            "threads": torch.get_num_threads(), "status": "ok"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)  # shared CI cores: avoid OpenMP oversubscription
    C.quiet_lightning()
    device = torch.device(args.device)
    if args.augment_only:
        rows = [measure_augment(p, b, args, device) for p in args.config for b in args.batch_sizes]
        C.print_table(rows, [("config", "config", 0), ("bands", "C", 0), ("batch_size", "batch", 0),
                             ("n_crops", "crops", 0), ("aug_ms", "aug ms", 1), ("aug_img_per_s", "img/s", 0)])
        C.print_json({"bench": "augment", "device": C.device_name(device), "results": rows})
        return 0
    modes = {"0": [False], "1": [True], "both": [False, True]}[args.compile]
    rows: list[dict[str, Any]] = []
    for preset in args.config:
        for compile_model in modes:
            for batch in args.batch_sizes:
                try:
                    row = measure_step(preset, batch, compile_model, args, device)
                except torch.cuda.OutOfMemoryError:
                    C.free(device)
                    row = {"config": preset, "bands": args.bands, "compile": int(compile_model),
                           "batch_size": batch, "status": "oom"}
                rows.append(row)
                print(f"# {preset} compile={int(compile_model)} batch={batch}: {C.fmt(row.get('img_per_s'))} img/s "
                      f"{row['status']}", file=sys.stderr, flush=True)
    C.print_table(rows, COLUMNS)
    for row in rows:
        if row.get("sync_sites"):
            print(f"host syncs ({row['config']} b{row['batch_size']} c{row['compile']}, {args.probe} steps): "
                  + ", ".join(f"{k} x{v}" for k, v in row["sync_sites"].items()))
    C.print_json({"bench": "gpu_step", "device": C.device_name(device), "torch": torch.__version__,
                  "steps": args.steps, "warmup": args.warmup, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
