"""``geossl probe``: linear and k-NN land-cover heads on frozen encoder features."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from geossl.argtypes import positive_int
from geossl.choices import (
    ATTENTIVE_EPOCHS,
    ATTENTIVE_LRS,
    FEATURE_RECIPES,
    HEAD_TYPES,
    PROBE_DENSE_TOKENS,
    PROBE_WEIGHT_DECAYS,
)
from geossl.io import check_outputs
from geossl.labels.options import SPLIT_MODES, LabelOptions, parse_class_names
from geossl.settings import data_root

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


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """The labels-as-geodata flags, shared by ``geossl probe`` and ``geossl finetune``."""
    geo = parser.add_argument_group(
        "labels as geodata",
        "instead of --data: labelled chips cut from --scenes at the encoder's tile size and GSD, written with "
        "their table (OUT/chips.csv, OUT/chips.gpkg); labels in any CRS are reprojected to each scene's")
    geo.add_argument("--labels", type=Path, default=None,
                     help="points (one chip centred on each) or polygons (chips inside each): GeoJSON, GeoPackage, "
                          "Shapefile, GeoParquet, ...; a 'split' column (train/val/test) is used when present")
    geo.add_argument("--label-raster", type=Path, default=None,
                     help="a land-cover raster (integer classes, any CRS): each chip of the scenes' grid is "
                          "labelled by its majority class")
    geo.add_argument("--scenes", nargs="+", default=None, metavar="SCENE",
                     help="scene files, folders, globs or s3:// prefixes the labels lie on")
    geo.add_argument("--label-field", default=None, help="the class field of --labels (default: label, else class)")
    geo.add_argument("--layer", default=None, help="layer of a multi-layer --labels file (GeoPackage)")
    geo.add_argument("--bands", default=None, help="1-based scene bands in the encoder's order, e.g. 4,3,2 "
                                                   "(default: by band name, the encoder's training bands, or all)")
    geo.add_argument("--resample", action=argparse.BooleanOptionalAction, default=None,
                     help="resample scenes to the encoder's GSD (default: automatic within 4x, as classify)")
    geo.add_argument("--split", choices=SPLIT_MODES, default="auto",
                     help="auto (the labels' split column if any, else random) | random (stratified; a polygon's "
                          "chips stay together) | column | spatial (whole blocks of --block-size to a split)")
    geo.add_argument("--block-size", type=float, default=None, metavar="METRES",
                     help="spatial split block side (default: 10 chip footprints, e.g. 6400 m for 64 px at 10 m)")
    geo.add_argument("--chips-per-polygon", type=int, default=10, help="at most this many chips per polygon "
                                                                       "(seeded choice; default 10)")
    geo.add_argument("--min-overlap", type=float, default=1.0,
                     help="share of a chip's footprint inside its polygon (default 1.0: wholly inside)")
    geo.add_argument("--min-purity", type=float, default=0.8,
                     help="label raster: share of the majority class among a chip's labelled pixels (default 0.8)")
    geo.add_argument("--min-valid", type=float, default=0.9,
                     help="share of valid scene pixels in a chip (and labelled pixels, for a label raster; "
                          "default 0.9); a point also needs a valid pixel at the chip centre")
    geo.add_argument("--class-names", default=None, metavar="MAP",
                     help="label raster: class names, as 1=Water,2=Trees or a value,name CSV (default: the codes)")
    geo.add_argument("--no-check-stats", action="store_true",
                     help="cut chips even when the scenes' values do not match the encoder's statistics")


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
    add_label_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (metrics, figures, model/)")
    parser.add_argument("--features", choices=FEATURE_RECIPES, default=None,
                        help="feature recipe (default: the encoder's, normally cls_last4)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: OUT/cache)")
    parser.add_argument("--labels-per-class", type=parse_budgets, default=None, metavar="LIST",
                        help="label-efficiency curve, e.g. 5,10,50,100,all (pretrained vs random init)")
    parser.add_argument("--seeds", type=positive_int, default=3, help="subsets per label budget (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="split / subset / random-init seed")
    parser.add_argument("--k", type=positive_int, default=20, help="k-NN neighbours (default 20)")
    parser.add_argument("--temperature", type=float, default=0.07, help="k-NN temperature (default 0.07)")
    parser.add_argument("--weight-decays", type=parse_floats,
                        default=list(PROBE_WEIGHT_DECAYS), metavar="LIST",
                        help="L2 strengths swept for the linear head, chosen on val "
                             f"(default {','.join(f'{w:g}' for w in PROBE_WEIGHT_DECAYS)})")
    parser.add_argument("--max-iter", type=positive_int, default=100, help="L-BFGS iterations per weight decay")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="feature-extraction batch size")
    parser.add_argument("--workers", type=int, default=min(4, max(0, (os.cpu_count() or 1) - 1)),
                        help="data-loading worker processes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--dense", action="store_true",
                        help="also fit a per-patch head on the last block's patch tokens (each token takes its "
                             "patch's label), for `geossl classify --dense` maps at patch resolution")
    parser.add_argument("--dense-tokens", type=int, default=PROBE_DENSE_TOKENS, metavar="N",
                        help="--dense: tokens drawn (seeded) per train/val patch to fit on (default 16; 0 = all); "
                             "every test token is scored")
    parser.add_argument("--head", choices=HEAD_TYPES, default="linear",
                        help="the saved model's head: linear (default) or attentive (a learned query "
                             "cross-attending over the last block's CLS + patch tokens, then LayerNorm + Linear; "
                             "fitted besides the linear and k-NN probes, which are still reported)")
    parser.add_argument("--attentive-epochs", type=positive_int, default=ATTENTIVE_EPOCHS, metavar="N",
                        help=f"--head attentive: training epochs (default {ATTENTIVE_EPOCHS})")
    parser.add_argument("--attentive-lrs", type=parse_floats, default=list(ATTENTIVE_LRS), metavar="LIST",
                        help="--head attentive: AdamW learning rates swept, chosen on val "
                             f"(default {','.join(f'{v:g}' for v in ATTENTIVE_LRS)})")
    parser.add_argument("--no-random-baseline", action="store_true",
                        help="skip the random-init baseline (the band-statistics baseline always runs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the probe already in --out (metrics.json, model/, figures)")


def label_options(args: argparse.Namespace) -> LabelOptions | None:
    """The labels-as-geodata options, or None for a patch probe; conflicting flags are one-line errors."""
    if args.labels is None and args.label_raster is None:
        if args.scenes:
            raise ValueError("--scenes needs --labels or --label-raster (the labels the chips are cut for)")
        return None
    from geossl.data.raster import parse_band_indices

    if args.data is not None or args.splits is not None:
        raise ValueError("--data/--splits are for labelled patches; with --labels/--label-raster the chips "
                         "and their split come from the labels and --scenes")
    if not args.scenes:
        raise ValueError("--labels/--label-raster need --scenes (the imagery the chips are cut from)")
    opts = LabelOptions(
        scenes=list(args.scenes), labels=args.labels, label_raster=args.label_raster, label_field=args.label_field,
        layer=args.layer, bands=parse_band_indices(args.bands, "--bands"), resample=args.resample, split=args.split,
        block_size=args.block_size, chips_per_polygon=args.chips_per_polygon, min_overlap=args.min_overlap,
        min_purity=args.min_purity, min_valid=args.min_valid, class_names=parse_class_names(args.class_names),
        check_stats=not args.no_check_stats,
    )
    opts.check()
    return opts


def run(args: argparse.Namespace) -> int:
    if args.dense_tokens < 0:
        raise ValueError(f"--dense-tokens must be >= 0 (0 = all tokens), got {args.dense_tokens}")
    if min(args.attentive_lrs) <= 0:
        raise ValueError(f"--attentive-lrs must be > 0, got {args.attentive_lrs}")
    # an earlier probe may be what a report or a map was made from; a folder holding only a feature cache
    # (an interrupted run) is reused. Checked before any feature is computed.
    check_outputs([args.out / name for name in PROBE_OUTPUTS], args.overwrite)
    labels = label_options(args)
    from geossl.probe.run import ProbeOptions, run_probe, summary_line  # heavy imports only when running

    opts = ProbeOptions(
        encoder=str(args.encoder),
        data=args.data if args.data is not None else data_root() / "eurosat-rgb",
        labels=labels,
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
        dense=args.dense,
        dense_tokens=args.dense_tokens or None,
        head=args.head,
        attentive_epochs=args.attentive_epochs,
        attentive_lrs=args.attentive_lrs,
    )
    metrics = run_probe(opts)
    print(summary_line(metrics))
    return 0
