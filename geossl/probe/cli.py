"""``geossl probe``: linear and k-NN land-cover heads on frozen encoder features."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from geossl.io import check_outputs
from geossl.settings import data_root

# Literal copies so `geossl probe --help` does not import torch; tests check they match the sources.
FEATURE_RECIPES = ("cls", "cls_last4", "cls_avgpool", "last4_avgpool_cls")  # geossl.models.encoder.FEATURE_RECIPES
DEFAULT_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # geossl.probe.linear.DEFAULT_WEIGHT_DECAYS
PROBE_OUTPUTS = ("metrics.json", "model")  # what marks a folder as holding a finished (or half-written) probe


def parse_budgets(text: str) -> list[int | None]:
    """``"5,10,50,100,all"`` -> [5, 10, 50, 100, None]."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.lower() == "all":
            out.append(None)
            continue
        try:
            n = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers or 'all', got {part!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"labels per class must be >= 1, got {n}")
        out.append(n)
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def parse_floats(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", required=True,
                        help="encoder folder (model.safetensors + geossl.json), or random:<folder> for the "
                             "same architecture randomly initialised (the baseline)")
    parser.add_argument("--data", type=Path, default=None,
                        help="labelled patches: class folders, labels.csv or splits.csv inside, or a "
                             "path,label[,split] CSV (default: <data root>/eurosat-rgb)")
    parser.add_argument("--splits", type=Path, default=None,
                        help="path,label,split CSV (paths relative to --data); default: splits.csv in the "
                             "data folder, else a seeded stratified 70/10/20 split")
    parser.add_argument("--out", type=Path, required=True, help="output folder (metrics, figures, model/)")
    parser.add_argument("--features", choices=FEATURE_RECIPES, default=None,
                        help="feature recipe (default: the encoder's, normally cls_last4)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: OUT/cache)")
    parser.add_argument("--labels-per-class", type=parse_budgets, default=None, metavar="LIST",
                        help="label-efficiency curve, e.g. 5,10,50,100,all (pretrained vs random init)")
    parser.add_argument("--seeds", type=int, default=3, help="subsets per label budget (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="split / subset / random-init seed")
    parser.add_argument("--k", type=int, default=20, help="k-NN neighbours (default 20)")
    parser.add_argument("--temperature", type=float, default=0.07, help="k-NN temperature (default 0.07)")
    parser.add_argument("--weight-decays", type=parse_floats,
                        default=list(DEFAULT_WEIGHT_DECAYS), metavar="LIST",
                        help="L2 strengths swept for the linear head, chosen on val "
                             f"(default {','.join(f'{w:g}' for w in DEFAULT_WEIGHT_DECAYS)})")
    parser.add_argument("--max-iter", type=int, default=100, help="L-BFGS iterations per weight decay")
    parser.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    parser.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                        help="data-loading worker processes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--no-random-baseline", action="store_true",
                        help="skip the random-init baseline (the band-statistics baseline always runs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the probe already in --out (metrics.json, model/, figures)")


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    # an earlier probe may be what a report or a map was made from; a folder holding only a feature cache
    # (an interrupted run) is reused. Checked before any feature is computed.
    check_outputs([args.out / name for name in PROBE_OUTPUTS], args.overwrite)
    from geossl.probe.run import ProbeOptions, run_probe, summary_line  # heavy imports only when running

    opts = ProbeOptions(
        encoder=str(args.encoder),
        data=args.data if args.data is not None else data_root() / "eurosat-rgb",
        out=args.out,
        splits=args.splits,
        features=args.features,
        cache_dir=args.cache_dir,
        labels_per_class=args.labels_per_class,
        seeds=args.seeds,
        seed=args.seed,
        k=args.k,
        temperature=args.temperature,
        weight_decays=args.weight_decays,
        max_iter=args.max_iter,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        random_baseline=not args.no_random_baseline,
    )
    metrics = run_probe(opts)
    print(summary_line(metrics))
    return 0
