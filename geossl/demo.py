"""``geossl demo``: the whole product on the default data, as one command.

pretrain (configs/demo.yaml) -> probe the encoder on EuroSAT RGB beside its baselines (band statistics,
the same ViT at random init; linear + k-NN, label efficiency) -> classify the real NAIP scene (its R, G, B bands, resampled to EuroSAT's 10 m)
-> ``RUN/summary.json`` and one line. Steps already done in RUN are reused, so a re-run is cheap.
Datasets missing from the data root are fetched first (:mod:`geossl.data.fetch`, a mirror from
``GEOSSL_DATA_MIRROR``); with ``--offline`` or without a network, one line says where to put them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from geossl.argtypes import positive_int
from geossl.config import load_config
from geossl.io import atomic_write_json, read_json
from geossl.settings import data_root

NAIP_SCENE = "scenes/naip_5m_north_dakota_2019.tif"
DEMO_DATASETS = ("eurosat-rgb", "scenes")  # what the demo reads; fetched when absent (geossl/data/fetch.py)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/demo.yaml", help="pretraining config (default: the CPU demo)")
    parser.add_argument("--run-dir", default="runs/demo", help="where everything is written")
    parser.add_argument("--data", default=None, help="data root (default: $GEOSSL_DATA or ../shared/data)")
    parser.add_argument("--labels-per-class", default="5,10,50,100,all", help="label-efficiency budgets")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds per label budget")
    parser.add_argument("--splits", default=None,
                        help="a splits CSV (path,label,split) to probe on a subset (default: EuroSAT's splits.csv)")
    parser.add_argument("--finetune-config", default="configs/finetune_demo.yaml",
                        help="fine-tuning config of the demo's last training stage")
    parser.add_argument("--finetune-epochs", type=float, default=1.5,
                        help="epochs of the demo's fine-tune (default 1.5: about 5 CPU-minutes on 2 cores)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: missing data is an error saying where to put it "
                             "(default: fetch what is missing, from $GEOSSL_DATA_MIRROR if set)")
    parser.add_argument("overrides", nargs="*", help="pretraining config overrides (key=value)")


def _step(name: str) -> None:
    print(f"\n=== geossl demo: {name} ===", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    root = Path(args.data) if args.data else data_root()
    # Before the heavy imports: a fresh machine gets its data (or one line saying where to put it) at once.
    from geossl.data.fetch import fetch_missing

    fetch_missing(DEMO_DATASETS, root, offline=args.offline,
                  say=lambda line: print(f"geossl demo: {line}", file=sys.stderr, flush=True))

    from geossl.dino.train import pretrain
    from geossl.predict import classify_scene
    from geossl.probe.run import ProbeOptions, run_probe, summary_line

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
    _step("2/4 probe on EuroSAT RGB: the encoder beside band statistics and random init")
    out = run_dir / "probe"
    metrics_path = out / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    if metrics.get("encoder") != str(encoder_dir) or "baselines" not in metrics:  # reuse only a finished probe
        metrics = run_probe(ProbeOptions(
            encoder=str(encoder_dir), data=root / "eurosat-rgb", out=out, seed=cfg.seed, seeds=args.seeds,
            splits=Path(args.splits) if args.splits else None, labels_per_class=budgets,
        ))
    print(summary_line(metrics), file=sys.stderr)

    _step("3/4 fine-tune the encoder end to end on EuroSAT RGB (the classifier the map uses)")
    tuned = _finetune(args, encoder_dir, root, run_dir / "finetune", cfg.seed)
    if tuned.get("status") == "interrupted":
        print("fine-tuning was interrupted; run the same command again to resume", file=sys.stderr)
        return 143

    _step("4/4 classify the NAIP scene with the fine-tuned model (bands 1,2,3 = R,G,B; resampled to 10 m; stride 16)")
    scene_out = run_dir / "classify"
    scene = classify_scene(Path(tuned["model_dir"]), str(root / NAIP_SCENE), scene_out,
                           bands=[1, 2, 3], stride=16, overwrite=True)  # 160 m cells, overlapping windows
    print(scene.summary(), file=sys.stderr)
    summary = demo_summary(pre, metrics, scene, time.perf_counter() - started, tuned)
    atomic_write_json(run_dir / "summary.json", summary)
    print(json.dumps(summary), flush=True)
    print(summary_text(summary), file=sys.stderr, flush=True)
    return 0


def _finetune(args: argparse.Namespace, encoder_dir: Path, root: Path, out: Path, seed: int) -> dict[str, Any]:
    """The fine-tuned classifier (a new head on the encoder), reused when ``out`` holds a finished one of it."""
    from geossl.finetune.config import load_finetune_config
    from geossl.finetune.run import FinetuneOptions, run_finetune

    metrics_path = out / "metrics.json"
    if metrics_path.exists() and read_json(metrics_path).get("encoder") == str(encoder_dir):
        print(f"reusing the finished fine-tune in {out}", file=sys.stderr)
        return read_json(metrics_path)
    cfg = load_finetune_config(args.finetune_config, [f"optim.epochs={args.finetune_epochs}", f"seed={seed}"])
    return run_finetune(FinetuneOptions(encoder=str(encoder_dir), out=out, cfg=cfg, data=root / "eurosat-rgb",
                                        splits=Path(args.splits) if args.splits else None, baselines="none",
                                        overwrite=True))


def demo_summary(pre: dict[str, Any], metrics: dict[str, Any], scene: Any, wall_s: float,
                 tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures of the one-line summary: the encoder and every baseline, side by side, the gain, and the
    fine-tuned classifier."""
    rows = {"encoder": metrics, **metrics["baselines"]}
    return {
        "finetuned_top1": tuned["top1"] if tuned else None,
        "finetune_seconds": tuned.get("train_seconds") if tuned else None,
        "pretrain": {k: pre.get(k) for k in ("steps", "epochs", "wall_time_s", "final_loss", "knn_top1")},
        "test_count": metrics["counts"]["test"]["total"],
        "feature_recipe": metrics["feature_recipe"],
        "top1": {name: {"linear": m["linear_top1"], "knn": m["knn_top1"]} for name, m in rows.items()},
        "gain_over_best_baseline": metrics["gain_over_best_baseline"],
        "scene_map": str(scene.class_map),
        "scene_preview": str(scene.preview) if scene.preview else None,
        "wall_time_s": round(wall_s, 1),
    }


def summary_text(summary: dict[str, Any]) -> str:
    """``geossl demo: pretrained 420 s -> EuroSAT test linear / k-NN top-1: encoder .. | band statistics ..``."""
    cells = " | ".join(f"{name.replace('-', ' ')} {v['linear']:.1%} / {v['knn']:.1%}" for name, v in summary["top1"].items())
    gain = summary["gain_over_best_baseline"]
    return (f"geossl demo: pretrained {summary['pretrain']['wall_time_s']:.0f} s -> EuroSAT test linear / k-NN top-1 "
            f"({summary['test_count']} patches): {cells}; encoder vs best baseline {gain['linear_points']:+.1f} points "
            f"linear ({gain['linear_baseline'].replace('-', ' ')}), {gain['knn_points']:+.1f} k-NN "
            f"({gain['knn_baseline'].replace('-', ' ')}){_tuned_text(summary)}; map: {summary['scene_map']}; preview: {summary['scene_preview']}")


def _tuned_text(summary: dict[str, Any]) -> str:
    if summary.get("finetuned_top1") is None:
        return ""
    return (f"; fine-tuned end to end ({summary['finetune_seconds']:.0f} s): test top-1 {summary['finetuned_top1']:.1%}, "
            f"{100 * (summary['finetuned_top1'] - summary['top1']['encoder']['linear']):+.1f} points over the frozen "
            "linear head")
