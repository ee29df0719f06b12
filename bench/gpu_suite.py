"""The Python half of bench/gpu_suite.sh: environment report, run sizing, JSON assembly.

The shell script owns the order, the time limits and the logs; each step here is one short command so
that a hang or crash in one stage cannot take the others with it. Only ``env`` and ``size`` import
torch; the JSON steps start in milliseconds.

    python bench/gpu_suite.py env --out OUT/env.json [--require-cuda]
    python bench/gpu_suite.py size --config C --target-s 300 --available-s 330 --out W/sizing.json [overrides]
    python bench/gpu_suite.py dry-splits --data D/eurosat-rgb --out W/splits.csv --per-class 10
    python bench/gpu_suite.py merge-step --out OUT/gpu_step.json --stages W/stages.jsonl NAME=FILE ...
    python bench/gpu_suite.py quality --work W --out OUT/quality.json --env OUT/env.json ...
    python bench/gpu_suite.py summary --out-dir OUT --stages W/stages.jsonl --mode gpu --wall-s 470
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Optional on the GPU host: the report says which import; nothing here needs them.
OPTIONAL = ["rasterio", "torchgeo", "kornia", "geopandas", "pyproj", "shapely", "PIL",
            "matplotlib", "tensorboard", "tensorboardX", "tifffile", "affine"]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def last_json_line(path: Path) -> dict[str, Any] | None:
    """The benchmarks' contract: the last non-empty stdout line is one JSON object."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def stage_rows(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["stage"]] = row
    return rows


def stage_status(row: dict[str, Any] | None) -> str:
    """timeout(1) exits 124 (137 after --kill-after): name it, a failure is something else."""
    if row is None:
        return "not_run"
    return {0: "ok", 124: "timeout", 137: "timeout"}.get(row["rc"], "failed")


# --- env ----------------------------------------------------------------------------------------


def try_import(name: str) -> str | None:
    """The module's version (or "yes") if it imports; None if not. Never raises: any error means absent."""
    import importlib

    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001  (a broken GDAL raises OSError, not ImportError)
        return None
    return str(getattr(module, "__version__", "yes"))


def _free_gib(path: str) -> float | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return round(st.f_bavail * st.f_frsize / 2**30, 1)


def cmd_env(args: argparse.Namespace) -> int:
    import torch

    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "shm_gib": _free_gib("/dev/shm"), "tmp_gib": _free_gib(os.environ.get("TMPDIR", "/tmp")),  # loader workers, checkpoints
    }
    for name in ("timm", "lightning", "torchvision", "safetensors", "numpy"):
        report[name] = try_import(name)
    report["imports"] = {name: try_import(name) for name in OPTIONAL}
    write_json(args.out, report)
    gpu = report["gpu"] or "no GPU"
    print(f"env: python {report['python']}, torch {report['torch']}, timm {report['timm']}, lightning "
          f"{report['lightning']}, {gpu}; missing: {[k for k, v in report['imports'].items() if v is None]}")
    if args.require_cuda and not cuda:
        print("env: this is the GPU suite and torch sees no GPU (use --dry on a CPU machine)", file=sys.stderr)
        return 3
    return 0


# --- size ---------------------------------------------------------------------------------------


def cmd_size(args: argparse.Namespace) -> int:
    """Measure the recipe's img/s, then size epochs so the whole cosine schedule fits the time left."""
    started = time.perf_counter()
    from bench import _common as C
    from geossl.config import load_config
    from geossl.data.patches import PatchDataset
    from geossl.dino.data import resolved_paths

    C.quiet_lightning()
    base = load_config(args.config, args.overrides)
    n_train = len(PatchDataset(resolved_paths(base)[0], split=base.data.split, seed=base.seed))
    speed = C.recipe_throughput(args.config, args.overrides, args.steps, args.skip)
    # What is left for training once this measurement and the pretraining start-up are paid.
    left = args.available_s - (time.perf_counter() - started) - args.startup_s
    train_s = max(args.min_s, min(args.target_s, left))
    sized, plan = C.sized_overrides(speed["img_per_s"] * train_s * args.safety, n_train, base.data.batch_size)
    epochs = plan["epochs"]
    # The recipe's warm-ups are fractions of its schedule (eurosat_vits8: 10 and 30 of 100 epochs): keep them so.
    warmup = [f"optim.warmup_epochs={max(1.0, round(args.warmup_frac * epochs, 2))}",
              f"loss.warmup_teacher_temp_epochs={round(args.teacher_warmup_frac * epochs, 2)}",
              f"trainer.max_minutes={round(train_s * args.cap / 60, 3)}"]
    payload = {"config": args.config, "n_train": n_train, "throughput": speed, "target_s": args.target_s,
               "available_s": args.available_s, "train_s": round(train_s, 1), "safety": args.safety, **plan,
               "overrides": [*sized, *warmup],
               "timeout_s": int(train_s * args.cap + args.startup_s + 60)}
    write_json(args.out, payload)
    Path(args.overrides_out).write_text("".join(f"{o}\n" for o in payload["overrides"]))
    print(f"size: {speed['img_per_s']:.0f} img/s -> {train_s:.0f} s of training = {epochs} epochs x "
          f"{plan['limit']} images ({plan['steps']} steps); {' '.join(payload['overrides'])}")
    return 0


# --- dry splits -----------------------------------------------------------------------------------


def cmd_dry_splits(args: argparse.Namespace) -> int:
    """At most ``per_class`` files of each class in each split: the dry probe runs in seconds on any data."""
    kept: dict[tuple[str, str], int] = {}
    rows = []
    with open(Path(args.data) / "splits.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["split"], r["label"])
            if r["split"] and kept.get(key, 0) < args.per_class:
                kept[key] = kept.get(key, 0) + 1
                rows.append((r["path"], r["label"], r["split"]))
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    print(f"dry splits: {len(rows)} rows -> {args.out}")
    return 0


# --- merge-step -----------------------------------------------------------------------------------


def cmd_merge_step(args: argparse.Namespace) -> int:
    """One gpu_step.json from the parts (each its own process and time limit); a lost part says why."""
    stages = stage_rows(args.stages)
    parts: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    device = None
    for spec in args.parts:
        name, _, out_file = spec.partition("=")
        row = stages.get(name)
        data = last_json_line(Path(out_file))
        status = stage_status(row)
        if status == "ok" and data is None:
            status = "no_json"
        parts[name] = {"status": status, "rc": row["rc"] if row else None, "seconds": row["seconds"] if row else None,
                       "results": data["results"] if data else []}
        for r in parts[name]["results"]:
            results.append({"part": name, **r})
        device = device or (data or {}).get("device")
    write_json(args.out, {"bench": "gpu_step", "device": device, "parts": parts, "results": results})
    for r in results:
        print(f"step {r['part']}: {r.get('config')} batch {r.get('batch_size')} compile {r.get('compile')}: "
              f"{r.get('img_per_s', 0):.1f} img/s, peak {r.get('peak_mem_gib')} GiB, {r.get('status')}")
    return 0


# --- quality ------------------------------------------------------------------------------------


def _probe_pair(m: dict[str, Any]) -> dict[str, float]:
    return {"linear_top1": m["linear_top1"], "knn_top1": m["knn_top1"]}


def cmd_quality(args: argparse.Namespace) -> int:
    """quality.json from the sizing plan, the pretraining summary and log, and the probe's metrics."""
    work: Path = args.work
    stages = stage_rows(args.stages)
    sizing = read_json(work / "sizing.json") or {}
    summary = last_json_line(work / "logs" / "pretrain.out") or read_json(work / "run" / "summary.json") or {}
    metrics = read_json(work / "probe" / "metrics.json")
    tuned = read_json(work / "finetune" / "metrics.json")
    env = read_json(args.env) or {}
    speeds = [float(m) for m in re.findall(r"img_per_s=([0-9.]+)", _text(work / "logs" / "pretrain.out"))]
    speeds = [s for s in speeds[2:] if s > 0]  # the first lines include start-up
    planned = sizing.get("steps")
    out: dict[str, Any] = {
        "mode": args.mode, "machine": f"GPU {env['gpu']}" if env.get("gpu") else f"CPU ({env.get('cpu_count')} cores)",
        "config": args.config, "data": args.data,
        "stages": {k: stage_status(stages.get(k)) for k in ("size", "pretrain", "probe", "finetune")},
        "sizing": {k: sizing.get(k) for k in ("n_train", "train_s", "epochs", "limit", "steps", "overrides")}
        | {"measured_img_per_s": (sizing.get("throughput") or {}).get("img_per_s")},
        "pretrain_wall_s": (stages.get("pretrain") or {}).get("seconds"),
        "pretrain_wall_s_reported": summary.get("wall_time_s"),
        "steps": summary.get("steps"), "planned_steps": planned, "epochs": summary.get("epochs"),
        "schedule_completed": bool(planned and summary.get("steps") and summary["steps"] >= planned),
        "pretrain_status": summary.get("status"), "final_loss": summary.get("final_loss"),
        "pretrain_img_per_s_median": statistics.median(speeds) if speeds else None,
    }
    if metrics:
        out.update({
            "feature_recipe": metrics.get("feature_recipe"), "counts": {s: c["total"] for s, c in metrics["counts"].items()},
            "test_count": metrics["counts"]["test"]["total"], "encoder": _probe_pair(metrics),
            "baselines": {name: _probe_pair(b) for name, b in (metrics.get("baselines") or {}).items()},
            "gain_over_best_baseline": metrics.get("gain_over_best_baseline"),
            "probe_wall_s": (metrics.get("wall_seconds") or {}).get("total"),
        })
    if tuned:
        out["finetune"] = {"top1": tuned["top1"], "macro_f1": tuned["macro_f1"], "steps": tuned["steps"],
                           "epochs": tuned["epochs"], "train_s": tuned["train_seconds"],
                           "test_count": tuned["test_count"], "mode": tuned["mode"]}
    write_json(args.out, out)
    if metrics:
        base = ", ".join(f"{k} {v['linear_top1']:.1%}/{v['knn_top1']:.1%}" for k, v in out["baselines"].items())
        print(f"quality: encoder linear {out['encoder']['linear_top1']:.1%}, k-NN {out['encoder']['knn_top1']:.1%} on "
              f"{out['test_count']} test images; baselines {base}; {out['steps']} steps in {out['pretrain_wall_s']} s")
    return 0 if metrics else 1


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --- summary ------------------------------------------------------------------------------------


def cmd_summary(args: argparse.Namespace) -> int:
    """The suite's last stdout line: every stage's status and the headline figures, also OUT/summary.json."""
    out: Path = args.out_dir
    stages = stage_rows(args.stages)
    env = read_json(out / "env.json") or {}
    step = read_json(out / "gpu_step.json") or {}
    quality = read_json(out / "quality.json") or {}
    payload: dict[str, Any] = {
        "suite": "gpu_suite", "mode": args.mode, "wall_s": args.wall_s, "gpu": env.get("gpu"),
        "torch": env.get("torch"), "ok": bool(stages) and all(stage_status(r) == "ok" for r in stages.values()),
        "stages": {k: {"status": stage_status(r), "seconds": r["seconds"]} for k, r in stages.items()},
        "step_img_per_s": {f"{r['part']}": r.get("img_per_s") for r in step.get("results", [])},
        "quality": {k: quality.get(k) for k in ("encoder", "baselines", "pretrain_wall_s", "steps", "schedule_completed",
                                                "finetune")},
    }
    write_json(out / "summary.json", payload)
    print(json.dumps(payload, separators=(",", ":")), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--require-cuda", action="store_true", help="exit 3 when torch sees no GPU")
    p = sub.add_parser("size")
    p.add_argument("--config", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overrides-out", type=Path, required=True, help="the sized overrides, one per line")
    p.add_argument("--target-s", type=float, required=True, help="training seconds wanted")
    p.add_argument("--available-s", type=float, required=True, help="seconds left for measuring + training")
    p.add_argument("--min-s", type=float, default=20.0, help="train at least this long even when late")
    p.add_argument("--startup-s", type=float, default=25.0, help="pretraining start-up and export, not training")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10)
    p.add_argument("--safety", type=float, default=0.9, help="epoch ends and the loader cost a little more")
    p.add_argument("--cap", type=float, default=1.2, help="trainer.max_minutes = cap x planned training time")
    p.add_argument("--warmup-frac", type=float, default=0.1)
    p.add_argument("--teacher-warmup-frac", type=float, default=0.3)
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("dry-splits")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=10)
    p = sub.add_parser("merge-step")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stages", type=Path, required=True)
    p.add_argument("parts", nargs="+", help="STAGE=STDOUT_FILE")
    p = sub.add_parser("quality")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--env", type=Path, required=True)
    p.add_argument("--stages", type=Path, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--mode", required=True)
    p = sub.add_parser("summary")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--stages", type=Path, required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--wall-s", type=int, required=True)
    args = ap.parse_args(argv)
    handler = {"env": cmd_env, "size": cmd_size, "dry-splits": cmd_dry_splits, "merge-step": cmd_merge_step,
               "quality": cmd_quality, "summary": cmd_summary}[args.cmd]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
