"""``geossl import-encoder``: public or existing weights -> a geossl encoder folder every command accepts.

Examples::

    geossl import-encoder --timm vit_small_patch16_224 --weights dino_deitsmall16_pretrain.pth \\
        --bands R,G,B --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --scale 255 --out enc/dino
    geossl import-encoder --torchgeo ViTSmall16_Weights.SENTINEL2_ALL_DINO --weights vit_small...pth --out enc/s2
    geossl import-encoder --from runs/demo/pretrain/encoder --bands B04,B03,B02 --out enc/rgb
    geossl import-encoder --from enc/rgb --adapt-bands B01,B02,...,B8A --stats ms_stats.json --out enc/ms
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from geossl.argtypes import positive_int
from geossl.choices import CHECKPOINT_WEIGHTS, FEATURE_RECIPES, NEW_BAND_POLICIES
from geossl.io import check_outputs
from geossl.models.bands import parse_band_list
from geossl.models.encoder import META_FILE, Encoder, export_encoder, load_encoder
from geossl.models.importer import Normalization, adapt_encoder, import_weights, rename_bands


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("source (one of)")
    source.add_argument("--timm", metavar="NAME", help="timm model name the weights belong to (e.g. vit_small_patch14_dinov2)")
    source.add_argument("--torchgeo", metavar="WEIGHTS",
                        help="a torchgeo weights enum (e.g. ViTSmall16_Weights.SENTINEL2_ALL_DINO): model, bands and "
                             "normalisation from torchgeo's metadata; the file still comes from --weights")
    source.add_argument("--from", dest="from_dir", metavar="ENCODER_DIR", help="an existing geossl encoder folder")
    parser.add_argument("--weights", metavar="FILE", help="safetensors or PyTorch weights (timm, original DINO, "
                        "DINOv2/DINOv3, torchgeo layouts; loaded with weights_only=True); a hub-cache path works")
    parser.add_argument("--which", choices=CHECKPOINT_WEIGHTS, default="teacher",
                        help="DINO training checkpoints: which network to import (default: teacher, as DINO evaluates)")
    parser.add_argument("--bands", help="band names the weights read, in order (with --from: renames them)")
    norm = parser.add_argument_group("normalisation the weights expect (raw pixel units)")
    norm.add_argument("--stats", help="band statistics JSON as `geossl stats` writes it (mean/std/percentiles)")
    norm.add_argument("--mean", help="per-band means, comma-separated (one value = every band)")
    norm.add_argument("--std", help="per-band standard deviations, comma-separated (one value = every band)")
    norm.add_argument("--scale", type=float, default=1.0,
                      help="--mean/--std are in units of raw/SCALE (e.g. ImageNet 0-1 values on 8-bit data: 255)")
    adapt = parser.add_argument_group("adapting")
    adapt.add_argument("--adapt-bands", help="move the model onto these bands, matched by name (B04 == B4); "
                       "--stats/--mean/--std then describe THESE bands")
    adapt.add_argument("--new-bands", choices=NEW_BAND_POLICIES, default="zero",
                       help="filters of bands the weights never saw: zero (output unchanged) or mean (default: zero)")
    adapt.add_argument("--img-size", type=positive_int, help="tile size the encoder expects (position embeddings resampled)")
    adapt.add_argument("--patch-size", type=positive_int, help="new patch size (patch embedding resampled, timm FlexiViT rule)")
    parser.add_argument("--timm-kwargs", default="{}", help="extra timm arguments as JSON, e.g. '{\"depth\": 6}'")
    parser.add_argument("--gsd", type=float, help="metres per pixel of the imagery the weights were trained on")
    parser.add_argument("--feature-recipe", choices=FEATURE_RECIPES, help="default probe features")
    parser.add_argument("--out", required=True, help="encoder folder to write (model.safetensors + geossl.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing encoder in --out")


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _normalization(args: argparse.Namespace, n_bands: int) -> Normalization | None:
    if args.stats and (args.mean or args.std):
        raise ValueError("give either --stats or --mean/--std, not both")
    if args.stats:
        from geossl.data.stats import BandStats

        return Normalization.from_stats(BandStats.load(args.stats), n_bands, args.stats)
    if bool(args.mean) != bool(args.std):
        raise ValueError("--mean and --std go together")
    if args.mean:
        return Normalization.scaled(_floats(args.mean, "--mean"), _floats(args.std, "--std"), args.scale, n_bands)
    return None


def torchgeo_source(name: str) -> tuple[str, list[str], Normalization | None]:
    """timm model name, band names and normalisation recorded in a torchgeo weights enum (no download)."""
    import torchgeo.models

    enum_name, _, member = name.partition(".")
    enum = getattr(torchgeo.models, enum_name, None)
    if enum is None or not member or member not in getattr(enum, "__members__", {}):
        raise ValueError(f"--torchgeo: {name!r} is not a torchgeo weights enum member "
                         "(e.g. ViTSmall16_Weights.SENTINEL2_ALL_DINO)")
    weights = enum[member]
    model, bands = weights.meta.get("model"), weights.meta.get("bands")
    if not isinstance(model, str) or not model.startswith("vit") or not bands:
        raise ValueError(f"--torchgeo: {name} is not a ViT with named bands (model={model!r})")
    norm = None
    for module in weights.transforms.modules() if hasattr(weights.transforms, "modules") else []:
        if type(module).__name__ == "Normalize":
            norm = Normalization.scaled([float(v) for v in module.mean], [float(v) for v in module.std], 1.0, len(bands))
    return model, list(bands), norm


def _import(args: argparse.Namespace) -> Encoder:
    """Import (or load) the source, then adapt it when bands, sizes or statistics change."""
    sources = [s for s in (args.timm, args.torchgeo, args.from_dir) if s]
    if len(sources) != 1:
        raise ValueError("name exactly one source: --timm NAME, --torchgeo WEIGHTS or --from ENCODER_DIR")
    try:
        kwargs: dict[str, Any] = json.loads(args.timm_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--timm-kwargs: not valid JSON ({exc})") from None
    if not isinstance(kwargs, dict):
        raise ValueError("--timm-kwargs: expected a JSON object")
    adapt_bands = parse_band_list(args.adapt_bands, "--adapt-bands") if args.adapt_bands else None
    if args.from_dir:
        if args.weights:
            raise ValueError("--weights goes with --timm or --torchgeo, not --from")
        encoder = load_encoder(args.from_dir)
        if args.bands:
            encoder = rename_bands(encoder, parse_band_list(args.bands))
    else:
        encoder = _import_file(args, kwargs, adapting=adapt_bands is not None)
    if adapt_bands is not None or args.from_dir:
        norm = _normalization(args, len(adapt_bands or encoder.meta.bands))
        encoder, mapping = adapt_encoder(encoder, bands=adapt_bands, norm=norm, img_size=args.img_size,
                                         patch_size=args.patch_size, new_bands=args.new_bands)
        if mapping is not None:
            print(f"import-encoder: {mapping.describe(args.new_bands)}", file=sys.stderr)
    if args.gsd is not None:
        encoder.meta.gsd = args.gsd
    if args.feature_recipe:
        encoder.meta.feature_recipe = args.feature_recipe
    return encoder


def _import_file(args: argparse.Namespace, kwargs: dict[str, Any], adapting: bool) -> Encoder:
    """--timm or --torchgeo: read the weights file; sizes change here unless an adaptation follows."""
    if not args.weights:
        raise ValueError("--weights FILE is required with --timm or --torchgeo")
    if args.torchgeo:
        timm_name, bands, norm = torchgeo_source(args.torchgeo)
        bands = parse_band_list(args.bands) if args.bands else bands
    else:
        if not args.bands:
            raise ValueError("--bands: name the bands the weights read, in order (e.g. R,G,B or B04,B03,B02)")
        timm_name, bands, norm = args.timm, parse_band_list(args.bands), None
    if adapting:  # the statistics options describe the target bands; the source's are replaced anyway
        norm = norm or Normalization([0.0] * len(bands), [1.0] * len(bands))
    else:
        norm = _normalization(args, len(bands)) or norm
    if norm is None:
        raise ValueError("state the normalisation the weights expect: --stats FILE or --mean/--std (with --scale)")
    return import_weights(
        timm_name, args.weights, bands, norm, img_size=None if adapting else args.img_size,
        patch_size=None if adapting else args.patch_size, timm_kwargs=kwargs, which=args.which, gsd=args.gsd,
        feature_recipe=args.feature_recipe or "cls_last4",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_outputs([out / META_FILE], args.overwrite)  # an existing encoder is never replaced silently
    encoder = _import(args)
    export_encoder(encoder.backbone, encoder.meta, out)
    meta = encoder.meta
    origin = meta.extra.get("import", {}).get("layout", "geossl encoder")
    print(f"import-encoder: {meta.timm_name} ({origin}), {meta.in_chans} bands {','.join(meta.bands)}, "
          f"patch {meta.patch_size} px, tiles {meta.img_size} px, embedding {meta.embed_dim} -> {out}")
    return 0
