"""``geossl pretrain --config FILE --run-dir DIR [key=value ...]``."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from geossl.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--run-dir", help="folder for checkpoints, logs, curves and the encoder (required to train)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the fully resolved config (file + overrides + --init architecture) as YAML and exit")
    parser.add_argument("--checkpoint-dir", help="checkpoints here instead of RUN/checkpoints (SageMaker: /opt/ml/checkpoints)")
    parser.add_argument("--export-dir", help="exported encoder here instead of RUN/encoder (SageMaker: the model dir)")
    parser.add_argument("--resume", default="auto",
                        help="auto: continue from the newest complete checkpoint if any (default); "
                             "never: refuse a run folder that holds a run; or a checkpoint path")
    parser.add_argument("--init", metavar="ENCODER_DIR",
                        help="continue from a pretrained encoder (geossl import-encoder) or a geossl run folder; "
                             "same as model.init=ENCODER_DIR (see configs/continue_eurosat_ms.yaml)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.epochs=10 data.batch_size=32")


def run(args: argparse.Namespace) -> int:
    from geossl.dino.train import pretrain

    overrides = list(args.overrides) + ([f"model.init={args.init}"] if args.init else [])
    cfg = load_config(args.config, overrides)
    if args.print_config:
        from geossl.dino.init import with_init_architecture

        print(yaml.safe_dump(with_init_architecture(cfg).to_dict(), sort_keys=False), end="")
        return 0
    if not args.run_dir:
        raise ValueError("--run-dir: required to train (name a folder for checkpoints, logs and the encoder)")
    summary = pretrain(cfg, args.run_dir, checkpoint_dir=args.checkpoint_dir, export_dir=args.export_dir,
                       resume=args.resume)
    line = (f"pretrain {summary['status']}: {summary['steps']} steps ({summary['epochs']} epochs) in "
            f"{summary['wall_time_s']} s, final loss {summary['final_loss']}, k-NN top-1 {summary['knn_top1']}, "
            f"encoder: {summary['encoder_dir']}")
    print(line, file=sys.stderr, flush=True)
    print(json.dumps(summary), flush=True)
    return 0 if summary["status"] == "finished" else 143
