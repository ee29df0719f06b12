"""``geossl finetune``: train a land-cover classifier end to end from an encoder (full, last-N blocks, LoRA)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from geossl.probe.cli import add_label_arguments, label_options
from geossl.settings import data_root

BASELINES = ("none", "frozen", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True,
                        help="encoder or land-cover model folder to start from, or random:<folder> for the same "
                             "architecture at random init")
    parser.add_argument("--out", type=Path, required=True,
                        help="run folder: checkpoints, model/ (for geossl classify), metrics.json, figures")
    parser.add_argument("--config", default=None,
                        help="fine-tuning YAML (e.g. configs/finetune_demo.yaml); default: built-in defaults")
    parser.add_argument("--data", type=Path, default=None,
                        help="labelled patches: class folders, labels.csv or splits.csv inside, or a "
                             "path,label[,split] CSV (default: <data root>/eurosat-rgb)")
    parser.add_argument("--splits", type=Path, default=None, help="path,label,split CSV (as geossl probe)")
    add_label_arguments(parser)
    parser.add_argument("--labels-per-class", type=int, default=None, metavar="N",
                        help="train on N seeded examples per class (val and test unchanged)")
    parser.add_argument("--baselines", choices=BASELINES, default="frozen",
                        help="none | frozen: band statistics and the start's frozen linear probe on the same rows "
                             "(default) | all: also the same architecture fine-tuned from random init (doubles the time)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished fine-tune in --out")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.epochs=3 model.mode=lora")


def run(args: argparse.Namespace) -> int:
    from geossl.finetune.config import load_finetune_config

    cfg = load_finetune_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if args.labels_per_class is not None and args.labels_per_class < 1:
        raise ValueError(f"--labels-per-class must be >= 1, got {args.labels_per_class}")
    labels = label_options(args)
    from geossl.finetune.run import FinetuneOptions, run_finetune

    data = args.data if args.data is not None or labels is not None else data_root() / "eurosat-rgb"
    metrics = run_finetune(FinetuneOptions(
        encoder=str(args.encoder), out=args.out, cfg=cfg, data=data, splits=args.splits, labels=labels,
        labels_per_class=args.labels_per_class, baselines=args.baselines, overwrite=args.overwrite))
    if metrics.get("status") == "interrupted":
        return 143
    print(json.dumps({k: metrics[k] for k in ("top1", "macro_f1", "steps", "model_dir")}))
    return 0
