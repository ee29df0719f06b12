"""Label efficiency of the classifiers geossl builds: fine-tuned vs frozen linear head, DINO start vs random start.

    python bench/label_efficiency.py --encoder runs/demo/pretrain/encoder --budgets 5,10,50,100 --seeds 2 \
        --out runs/label_efficiency [--all-from runs/finetune_bench]

For each labels-per-class budget and seed, the same seeded subset of EuroSAT RGB train patches (val and test
unchanged) trains (a) a frozen linear head (``geossl probe --labels-per-class``, weight decay chosen on val)
and (b) a full fine-tune of a fixed number of steps (the budget is in labels, not minutes: small sets need
many epochs), from the encoder and from its architecture at random init. Test top-1 (5,400 patches) means and
standard deviations over seeds -> ``OUT/label_efficiency.json`` + ``.png``; the last stdout line is the JSON.
``--all-from`` adds the "all labels" point from a ``bench/finetune.py`` run (its longest budget per start).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geossl.settings import data_root  # noqa: E402


def frozen_curve(encoder: str, budgets: list[int], seeds: int, data: Path, out: Path) -> dict[str, Any]:
    from geossl.probe.run import ProbeOptions, run_probe

    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        run_probe(ProbeOptions(encoder=encoder, data=data, out=out, labels_per_class=list(budgets), seeds=seeds,
                               random_baseline=False, workers=1))
    eff = json.loads((out / "label_efficiency.json").read_text())
    name = "random-init" if encoder.startswith("random:") else "pretrained"
    curve = eff["curves"].get(name) or eff["curves"]["pretrained"]
    return {"budgets": eff["budgets"], "runs": curve["linear"]["runs"],
            "band_statistics": eff["curves"]["band-statistics"]["linear"]["runs"]}


def finetune_once(encoder: str, budget: int, seed: int, steps: int, batch: int, data: Path, out: Path,
                  config: str, overrides: list[str]) -> float:
    metrics = out / "metrics.json"
    if not metrics.exists():
        epochs = steps * batch / (10 * budget)
        cmd = [sys.executable, "-m", "geossl.cli", "finetune", "--encoder", encoder, "--out", str(out),
               "--data", str(data), "--labels-per-class", str(budget), "--baselines", "none", "--config", config,
               f"seed={seed}", f"optim.epochs={epochs:.4f}", f"optim.batch_size={batch}",
               f"optim.warmup_epochs={epochs / 10:.4f}", f"trainer.val_every_epochs={epochs / 4:.4f}",
               "trainer.progress_bar=false", "trainer.checkpoint_every_steps=100000", *overrides]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return float(json.loads(metrics.read_text())["top1"])


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geossl.plotting import save_png

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (name, curve), style in zip(result["curves"].items(), ("o-", "s--", "^-", "v--", "d:"), strict=False):
        xs = [b for b in curve["budgets"]]
        ax.errorbar(range(len(xs)), [100 * m for m in curve["mean"]], yerr=[100 * s for s in curve["std"]],
                    fmt=style, capsize=3, label=name)
    ax.set_xticks(range(len(result["labels"])), result["labels"])
    ax.set(xlabel="labelled train patches per class", ylabel="EuroSAT RGB test top-1 (%)",
           title="Label efficiency (mean and std over seeds)")
    ax.legend(fontsize=8)
    save_png(fig, path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True)
    p.add_argument("--budgets", default="5,10,50,100")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps per run (default 300)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--config", default="configs/finetune_demo.yaml")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/label_efficiency"))
    p.add_argument("--all-from", type=Path, default=None, help="a bench/finetune.py output folder")
    args = p.parse_args(argv)
    data = args.data or data_root() / "eurosat-rgb"
    budgets = [int(b) for b in args.budgets.split(",")]
    starts = {"DINO": args.encoder, "random init": f"random:{args.encoder}"}
    curves: dict[str, dict[str, Any]] = {}
    for label, enc in starts.items():
        frozen = frozen_curve(enc, [*budgets, None], args.seeds, data, args.out / f"frozen-{label.replace(' ', '-')}")
        runs = frozen["runs"]
        curves[f"frozen linear, {label} start"] = {"budgets": frozen["budgets"], "runs": runs}
        if label == "DINO":
            curves["band statistics"] = {"budgets": frozen["budgets"], "runs": frozen["band_statistics"]}
        tuned = []
        extra = ["optim.layer_decay=1.0"] if label == "random init" else []
        for b in budgets:
            tuned.append([finetune_once(enc, b, s, args.steps, args.batch, data,
                                        args.out / f"finetune-{label.replace(' ', '-')}-{b}-seed{s}", args.config, extra)
                          for s in range(args.seeds)])
            print(f"{label:>11} fine-tuned, {b:>3} per class: {np.mean(tuned[-1]):.1%}", file=sys.stderr, flush=True)
        labels = [str(b) for b in budgets]
        if args.all_from is not None:
            bench = json.loads((args.all_from / "finetune_bench.json").read_text())
            key = "dino" if label == "DINO" else "random"
            longest = max((r for r in bench["runs"] if r["start"] == key), key=lambda r: r["minutes"], default=None)
            if longest is not None:
                tuned.append([longest["test_top1"]])
                labels.append("all")
        curves[f"fine-tuned, {label} start"] = {"budgets": labels, "runs": tuned}
    all_labels = [str(b) for b in frozen["budgets"]]
    for curve in curves.values():
        curve["budgets"] = [str(b) for b in curve["budgets"]]
        curve["mean"] = [float(np.mean(r)) for r in curve["runs"]]
        curve["std"] = [float(np.std(r)) for r in curve["runs"]]
    result = {"bench": "label_efficiency", "labels": all_labels, "seeds": args.seeds, "steps": args.steps,
              "batch": args.batch, "curves": curves}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_efficiency.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "label_efficiency.png")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
