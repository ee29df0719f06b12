"""Fine-tuning per CPU-minute: EuroSAT RGB test top-1 against fine-tuning minutes, DINO start vs random start.

    python bench/finetune.py --encoder runs/demo/pretrain/encoder --minutes 5,10,20,30 --out runs/finetune_bench

For each start (the encoder, and ``random:`` the same architecture at random init) and budget, the
schedule is sized to the budget: the recipe's training throughput (img/s of forward + backward + AdamW on
this machine, timed first, the same for both starts) sets ``optim.epochs`` = minutes x 60 x img/s / train
images, so warm-up and cosine end with the budget: equal compute, not equal steps. Each run is a real
``geossl finetune`` in its own process (peak resident memory read from the OS), scored on the test split.
The first run of each start also probes that start frozen (band statistics, frozen linear) on the same rows.
Prints a table, writes ``OUT/finetune_bench.json`` and ``OUT/finetune_bench.png``, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.finetune.config import load_finetune_config  # noqa: E402
from geossl.settings import data_root  # noqa: E402

TRAIN_IMAGES = 19_440  # EuroSAT RGB train split


def train_throughput(encoder: str, config: str | None, overrides: list[str], steps: int = 8, skip: int = 3,
                     size: int | None = None) -> float:
    """Training images per second of the recipe's network and augmentation (synthetic batch, steady state),
    at the encoder's tile size or, for the low-resolution part of progressive resizing, at ``size`` px."""
    import torch

    from geossl.finetune.augment import augment_batch, step_generator
    from geossl.finetune.network import ClassifierNet, apply_mode, param_groups, trainable_encoder

    cfg = load_finetune_config(config, overrides)
    enc = trainable_encoder(encoder, cfg.model.drop_path_rate, cfg.seed)
    net = ClassifierNet(enc, 10, cfg.model.features)
    apply_mode(net, cfg.model.mode, cfg.model.last_n, cfg.model.lora_rank, cfg.model.lora_alpha)
    opt = torch.optim.AdamW(param_groups(net, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.layer_decay))
    size, b, a = enc.meta.img_size, cfg.optim.batch_size, cfg.augment
    x = torch.rand(b, enc.meta.in_chans, size, size) * 255
    y = torch.randint(0, 10, (b,))
    started = 0.0
    for i in range(steps + skip):
        if i == skip:
            started = time.perf_counter()
        xa = augment_batch(x, step_generator(0, i), a.dihedral, tuple(a.crop_scale), tuple(a.crop_ratio), a.crop_p)
        if size is not None:
            xa = torch.nn.functional.interpolate(xa, size=(size, size), mode="bilinear", antialias=True)
        loss = torch.nn.functional.cross_entropy(net(xa), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * b / (time.perf_counter() - started)


def run_one(args: argparse.Namespace, start: str, minutes: float, img_per_s: float, baselines: str,
            extra: list[str]) -> dict[str, Any]:
    epochs = minutes * 60 * img_per_s / TRAIN_IMAGES
    out = args.out / f"{start}_{minutes:g}min"
    encoder = {"random": f"random:{args.encoder}", "lpft": str(args.probe_model)}.get(start, str(args.encoder))
    cmd = [sys.executable, "-m", "geossl.cli", "finetune", "--encoder", encoder, "--out", str(out),
           "--data", str(args.data), "--baselines", baselines, "--overwrite",
           *(["--config", args.config] if args.config else []), *args.overrides, *extra,
           f"optim.epochs={epochs:.4f}", "trainer.progress_bar=false"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"fine-tune failed: {' '.join(cmd)}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"start": start, "minutes": minutes, "epochs": round(epochs, 3), "steps": metrics["steps"],
            "test_top1": metrics["top1"], "macro_f1": metrics["macro_f1"], "val_top1": metrics["chosen"]["val_top1"],
            "wall_s": round(wall, 1), "train_s": metrics["train_seconds"], "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "baselines": {k: v["top1"] for k, v in metrics.get("baselines", {}).items()}, "out": str(out)}


def plot(rows: list[dict[str, Any]], baselines: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geossl.plotting import save_png

    fig, ax = plt.subplots(figsize=(6, 4))
    names = {"dino": "DINO start", "random": "random start", "lpft": "DINO start + probe head (LP-FT)"}
    for start, style in (("dino", "o-"), ("random", "s--"), ("lpft", "^-")):
        pts = sorted((r["minutes"], 100 * r["test_top1"]) for r in rows if r["start"] == start)
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=f"fine-tuned, {names[start]}")
    for (name, top1), color in zip(baselines.items(), ("C2", "C3", "C4", "C5"), strict=False):
        ax.axhline(100 * top1, color=color, ls=":", label=name.replace("-", " "))
    ax.set(xlabel="fine-tuning CPU-minutes (nominal, 2 cores)", ylabel="EuroSAT RGB test top-1 (%)",
           title="Fine-tuning per CPU-minute")
    ax.legend(fontsize=8)
    save_png(fig, path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", type=Path, required=True)
    p.add_argument("--minutes", default="5,10,20,30")
    p.add_argument("--starts", default="dino,random",
                   help="dino (the encoder), random (its architecture untrained), lpft (--probe-model)")
    p.add_argument("--runs", default=None, metavar="START:MIN,...",
                   help="explicit runs in this order, e.g. dino:10,dino:30,random:10 (default: every start x budget)")
    p.add_argument("--config", default="configs/finetune_demo.yaml")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/finetune_bench"))
    p.add_argument("--img-per-s", type=float, default=None, help="skip the timing and use this throughput")
    p.add_argument("--probe-model", type=Path, default=None,
                   help="a geossl probe model folder of the encoder: start 'lpft' fine-tunes from it (its linear head)")
    p.add_argument("--append", action="store_true", help="keep the runs already in OUT/finetune_bench.json")
    p.add_argument("--random-overrides", default="optim.layer_decay=1.0",
                   help="overrides for the random start (default: no layer-wise decay: random weights need no "
                        "protection)")
    p.add_argument("overrides", nargs="*", help="fine-tuning config overrides for every run")
    args = p.parse_args(argv)
    args.data = args.data or data_root() / "eurosat-rgb"
    args.out.mkdir(parents=True, exist_ok=True)
    img_per_s = args.img_per_s or train_throughput(str(args.encoder), args.config, args.overrides)
    print(f"training throughput: {img_per_s:.1f} img/s", file=sys.stderr, flush=True)
    img_per_s = with_progressive_resizing(img_per_s, args)
    rows: list[dict[str, Any]] = []
    baselines: dict[str, float] = {}
    if args.append and (args.out / "finetune_bench.json").is_file():
        old = json.loads((args.out / "finetune_bench.json").read_text())
        rows, baselines = old["runs"], old["baselines"]
    plan = ([(r.split(":")[0], float(r.split(":")[1])) for r in args.runs.split(",")] if args.runs else
            [(s, float(m)) for s in args.starts.split(",") for m in args.minutes.split(",")])
    probed: set[str] = set()
    for start, minutes in plan:
        extra = args.random_overrides.split() if start == "random" else []
        probe_it = start not in probed and start != "lpft" and not any(r["start"] == start for r in rows)
        row = run_one(args, start, minutes, img_per_s, "frozen" if probe_it else "none", extra)
        probed.add(start)
        for name, top1 in row["baselines"].items():
            baselines[name if start == "dino" or name == "band-statistics" else f"{name} (random init)"] = top1
        rows.append(row)
        write(args, img_per_s, rows, baselines)  # after every run: an interrupted bench keeps what it measured
        print(f"{start:>6} {minutes:5g} min  {row['epochs']:6.2f} epochs  test top-1 {row['test_top1']:.2%}  "
              f"wall {row['wall_s']:.0f} s  peak {row['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    print(json.dumps(write(args, img_per_s, rows, baselines)))
    return 0


def with_progressive_resizing(full_img_per_s: float, args: argparse.Namespace) -> float:
    """The schedule's mean throughput when ``augment.low_res`` trains its first ``low_res_fraction`` of steps on
    smaller tiles: both rates timed here (the full one given or timed), combined as time per image, so
    the budget still buys the minutes it names."""
    a = load_finetune_config(args.config, args.overrides).augment
    if a.low_res is None or a.low_res_fraction == 0:
        return full_img_per_s
    if args.img_per_s:  # the full rate was given: time both here and keep their ratio, not this machine's load
        ratio = (train_throughput(str(args.encoder), args.config, args.overrides, size=a.low_res)
                 / train_throughput(str(args.encoder), args.config, args.overrides))
    else:
        ratio = train_throughput(str(args.encoder), args.config, args.overrides, size=a.low_res) / full_img_per_s
    f = a.low_res_fraction
    mean = 1 / (f / (ratio * full_img_per_s) + (1 - f) / full_img_per_s)
    print(f"progressive resizing: {a.low_res} px for {f:.0%} of the steps, {ratio:.2f}x the full rate there; "
          f"mean {mean:.1f} img/s", file=sys.stderr, flush=True)
    return mean


def write(args: argparse.Namespace, img_per_s: float, rows: list[dict[str, Any]],
          baselines: dict[str, float]) -> dict[str, Any]:
    result = {"bench": "finetune", "img_per_s": round(img_per_s, 1), "cpus": os.cpu_count(),
              "config": args.config, "overrides": args.overrides, "runs": rows, "baselines": baselines}
    (args.out / "finetune_bench.json").write_text(json.dumps(result, indent=1))
    plot(rows, baselines, args.out / "finetune_bench.png")
    return result


if __name__ == "__main__":
    sys.exit(main())
