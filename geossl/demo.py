"""``geossl demo``: the whole product on the default data, as one command.

pretrain (configs/demo.yaml) -> probe the encoder and a random-init twin on EuroSAT RGB (linear + k-NN,
label efficiency) -> classify the real NAIP scene (its R, G, B bands, resampled to EuroSAT's 10 m)
-> ``RUN/summary.json`` and one line. Steps already done in RUN are reused, so a re-run is cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from geossl.config import load_config
from geossl.io import atomic_write_json, read_json
from geossl.settings import data_root

NAIP_SCENE = "scenes/naip_5m_north_dakota_2019.tif"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/demo.yaml", help="pretraining config (default: the CPU demo)")
    parser.add_argument("--run-dir", default="runs/demo", help="where everything is written")
    parser.add_argument("--data", default=None, help="data root (default: $GEOSSL_DATA or ../shared/data)")
    parser.add_argument("--labels-per-class", default="5,10,50,100,all", help="label-efficiency budgets")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per label budget")
    parser.add_argument("--splits", default=None,
                        help="a splits CSV (path,label,split) to probe on a subset (default: EuroSAT's splits.csv)")
    parser.add_argument("overrides", nargs="*", help="pretraining config overrides (key=value)")


def _step(name: str) -> None:
    print(f"\n=== geossl demo: {name} ===", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from geossl.dino.train import pretrain
    from geossl.predict import classify_scene
    from geossl.probe.run import ProbeOptions, run_probe, summary_line

    started = time.perf_counter()
    root = Path(args.data) if args.data else data_root()
    run_dir = Path(args.run_dir)
    overrides = [f"data.root={root}", *args.overrides]
    cfg = load_config(args.config, overrides)

    _step("1/4 DINO pretraining")
    pre_dir = run_dir / "pretrain"
    summary_path = pre_dir / "summary.json"
    if summary_path.exists() and read_json(summary_path).get("status") == "finished":
        pre = read_json(summary_path)
        print(f"reusing the finished pretraining in {pre_dir}", file=sys.stderr)
    else:
        pre = pretrain(cfg, pre_dir)
        if pre["status"] != "finished":
            print("pretraining was interrupted; run the same command again to resume", file=sys.stderr)
            return 143
    encoder_dir = pre_dir / "encoder"

    budgets = [None if b.strip() == "all" else int(b) for b in args.labels_per_class.split(",") if b.strip()]
    probes: dict[str, dict[str, Any]] = {}
    for step, (name, spec) in enumerate((("pretrained", str(encoder_dir)), ("random-init", f"random:{encoder_dir}")), 2):
        _step(f"{step}/4 probe, {name} encoder, EuroSAT RGB")
        out = run_dir / f"probe-{name}"
        metrics_path = out / "metrics.json"
        if metrics_path.exists() and read_json(metrics_path).get("encoder") == spec:
            metrics = read_json(metrics_path)
        else:
            metrics = run_probe(ProbeOptions(
                encoder=spec, data=root / "eurosat-rgb", out=out, seed=cfg.seed, seeds=args.seeds,
                splits=Path(args.splits) if args.splits else None,
                labels_per_class=budgets if name == "pretrained" else None,
            ))
        print(summary_line(metrics), file=sys.stderr)
        probes[name] = metrics

    _step("4/4 classify the NAIP scene (bands 1,2,3 = R,G,B; resampled to 10 m; stride 16)")
    scene_out = run_dir / "classify"
    scene = classify_scene(run_dir / "probe-pretrained" / "model", str(root / NAIP_SCENE), scene_out,
                           bands=[1, 2, 3], stride=16, overwrite=True)  # 160 m cells, overlapping windows

    pre_m, rnd_m = probes["pretrained"], probes["random-init"]
    print(scene.summary(), file=sys.stderr)
    summary = {
        "pretrain": {k: pre.get(k) for k in ("steps", "epochs", "wall_time_s", "final_loss", "knn_top1")},
        "pretrained": {"linear_top1": pre_m["linear_top1"], "knn_top1": pre_m["knn_top1"]},
        "random_init": {"linear_top1": rnd_m["linear_top1"], "knn_top1": rnd_m["knn_top1"]},
        "gain_linear_points": round(100 * (pre_m["linear_top1"] - rnd_m["linear_top1"]), 2),
        "gain_knn_points": round(100 * (pre_m["knn_top1"] - rnd_m["knn_top1"]), 2),
        "scene_map": str(scene.class_map),
        "scene_preview": str(scene.preview) if scene.preview else None,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(run_dir / "summary.json", summary)
    print(json.dumps(summary), flush=True)
    print(
        f"geossl demo: pretrained {pre['wall_time_s']:.0f} s -> EuroSAT test linear top-1 "
        f"{pre_m['linear_top1']:.1%} vs random init {rnd_m['linear_top1']:.1%} "
        f"({summary['gain_linear_points']:+.1f} points), k-NN {pre_m['knn_top1']:.1%} vs {rnd_m['knn_top1']:.1%}; "
        f"map: {scene.class_map}; preview: {scene.preview}",
        file=sys.stderr, flush=True,
    )
    return 0
