"""The ``geossl`` command. Each subcommand lives beside the code it drives, in a module exposing
``add_arguments(parser)`` and ``run(args) -> int``; only the chosen one is imported, so help is fast."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("geossl.demo", "the whole flow on the default data: pretrain -> probe -> classify, with a summary"),
    "data": ("geossl.data.fetch_cli", "fetch the default datasets (verified, resumable) or list what is where"),
    "chips": ("geossl.data.chips_cli", "cut valid chips from any number of scenes into shards for pretraining"),
    "stats": ("geossl.data.stats_cli", "per-band mean/std/percentiles of scenes or patches -> stats.json"),
    "pretrain": ("geossl.dino.cli", "DINO self-supervised pretraining of a ViT (Lightning; resumable)"),
    "probe": ("geossl.probe.cli", "linear and k-NN land-cover heads on frozen features -> metrics, model"),
    "finetune": ("geossl.finetune.cli",
                 "train a land-cover classifier end to end from an encoder (full, last-N blocks, LoRA)"),
    "classify": ("geossl.predict.cli", "classify tiles or whole scenes into land-cover tables and maps"),
    "change": ("geossl.predict.change_cli",
               "per-patch change between two dates (or a series) -> score map, from-to classes, hectares"),
    "embed": ("geossl.predict.embed_cli", "one embedding per tile -> (Geo)Parquet, for similarity search"),
    "attention": ("geossl.predict.attention_cli", "DINO self-attention maps of a tile -> PNG"),
    "import-encoder": ("geossl.models.import_cli",
                       "public weights (timm, DINO, DINOv2/v3, torchgeo) -> an encoder; rename or adapt bands"),
    "sagemaker": ("geossl.cloud.cli", "SageMaker: pretraining jobs (launch, local), archive maps and embeddings (classify, embed, merge)"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geossl",
        description="DINO pretraining on satellite imagery, land-cover probes and classified maps.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("geossl: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        # Bad input, a full disk, a read-only folder: one clear line naming the file and the problem.
        message: object = exc
        if isinstance(exc, OSError) and exc.strerror:  # "[Errno 28] ..." -> the path and the problem
            message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
        print(f"geossl {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
