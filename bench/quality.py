"""Representation quality: pretrain with a named config, then probe the encoder beside its baselines.

The baselines make the number mean something: a logistic regression on per-band colour statistics,
and the same ViT with random weights, already reach well above chance on EuroSAT, so "pretraining
helped" = the gap to the stronger of them (``gain_over_best_baseline``).

    python bench/quality.py --config configs/demo.yaml --run-dir runs/quality
    python bench/quality.py --config configs/demo.yaml --run-dir runs/q2 optim.epochs=2 data.limit=2000
    python bench/quality.py --config configs/demo.yaml --run-dir runs/quality --reuse   # probe only

Pretraining runs as a subprocess (``geossl pretrain``, exactly the user's command); the probes run in
this process. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.io import read_json  # noqa: E402
from geossl.settings import data_root  # noqa: E402


def machine() -> str:
    """GPU name when CUDA is available, else the CPU model (the figure depends on it through wall time)."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def pretrain(config: str, run_dir: Path, overrides: list[str]) -> tuple[dict[str, Any], float]:
    """Run ``geossl pretrain`` (stderr streams through); returns its JSON summary and the wall time."""
    cmd = [sys.executable, "-m", "geossl.cli", "pretrain", "--config", config, "--run-dir", str(run_dir), *overrides]
    print("bench quality: " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench quality: geossl pretrain failed (exit {proc.returncode}); see its message above")
    try:
        return json.loads(lines[-1]), wall
    except json.JSONDecodeError:
        raise SystemExit(f"bench quality: geossl pretrain printed no JSON summary (last line: {lines[-1]!r})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pretraining config (e.g. configs/demo.yaml)")
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder; the probe goes to RUN/probe")
    parser.add_argument("--data", type=Path, default=None, help="labelled patches to probe on (default eurosat-rgb)")
    parser.add_argument("--splits", type=Path, default=None, help="path,label,split CSV for the probes")
    parser.add_argument("--features", default=None, help="feature recipe (default: the encoder's)")
    parser.add_argument("--device", default="auto", help="probe device: auto | cpu | cuda")
    parser.add_argument("--workers", type=int, default=2, help="probe data-loading workers")
    parser.add_argument("--reuse", action="store_true",
                        help="probe RUN/encoder of a finished run instead of pretraining again")
    parser.add_argument("overrides", nargs="*", help="config overrides passed to geossl pretrain (key=value)")
    args = parser.parse_args(argv)

    run_dir: Path = args.run_dir
    summary_path = run_dir / "summary.json"
    if args.reuse:
        if not summary_path.is_file():
            raise SystemExit(f"bench quality: --reuse: {summary_path} not found (run without --reuse first)")
        summary, wall = read_json(summary_path), None
    else:
        summary, wall = pretrain(args.config, run_dir, args.overrides)
    if summary.get("status") != "finished" or not summary.get("encoder_dir"):
        raise SystemExit(f"bench quality: pretraining did not finish (status {summary.get('status')!r}); no encoder")

    from geossl.probe.run import ProbeOptions, run_probe, summary_line

    encoder = Path(summary["encoder_dir"])
    if not encoder.is_absolute() and not encoder.exists():
        encoder = Path(__file__).resolve().parent.parent / encoder
    metrics = run_probe(ProbeOptions(
        encoder=str(encoder), data=args.data or data_root() / "eurosat-rgb", out=run_dir / "probe",
        splits=args.splits, features=args.features, cache_dir=run_dir / "probe-cache",
        workers=args.workers, device=args.device,
    ))
    print(f"bench quality: {summary_line(metrics)}", file=sys.stderr, flush=True)
    print(json.dumps({
        "config": args.config,
        "overrides": args.overrides,
        "epochs": summary.get("epochs"),
        "steps": summary.get("steps"),
        "pretrain_wall_s": round(wall, 1) if wall is not None else summary.get("wall_time_s"),
        "pretrain_wall_s_reported": summary.get("wall_time_s"),
        "machine": machine(),
        "feature_recipe": metrics["feature_recipe"],
        "test_count": metrics["counts"]["test"]["total"],
        "encoder": {"linear_top1": metrics["linear_top1"], "knn_top1": metrics["knn_top1"]},
        "baselines": {name: {"linear_top1": b["linear_top1"], "knn_top1": b["knn_top1"]}
                      for name, b in metrics["baselines"].items()},
        "gain_over_best_baseline": metrics["gain_over_best_baseline"],
        "online_knn_top1": summary.get("knn_top1"),
    }, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # bad input: one line, no traceback
        sys.exit(f"bench quality: error: {exc}")
