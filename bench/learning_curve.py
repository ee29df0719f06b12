"""Learning curve: EuroSAT RGB test linear and k-NN top-1 against pretraining minutes, beside the baselines.

ONE pretraining run whose whole schedule (warm-up, cosine learning rate, teacher momentum) is sized
to the largest budget on this machine (throughput timed first, as in ``bench/trials.py``); the EMA
teacher is exported at every minute mark (training time only: the exports are not counted) and each
snapshot is probed on the test split with the probe's baselines (band statistics, the same ViT at
random init) measured once in the same run. A snapshot before the last mark is mid-schedule (higher
learning rate, teacher momentum not yet near 1), so it understates what a run sized to that budget
reaches; the demo (``make demo``) is such a sized run.

    python bench/learning_curve.py --config configs/demo.yaml --minutes 5,10,20,40,60 --run-dir runs/curve

Writes RUN/learning_curve.png and RUN/learning_curve.json; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L  # noqa: E402

from bench.quality import machine  # noqa: E402
from bench.trials import sized_overrides, throughput  # noqa: E402
from geossl.config import load_config  # noqa: E402
from geossl.plotting import save_png  # noqa: E402  (selects the Agg backend before pyplot loads)
from geossl.settings import data_root  # noqa: E402


class MinuteSnapshots(L.Callback):
    """Export the EMA teacher when the training time passes each mark; stop after the last one."""

    def __init__(self, marks: list[float], out_dir: Path) -> None:
        self.marks = sorted(marks)
        self.out_dir = out_dir
        self.taken: list[dict[str, Any]] = []
        self._start = 0.0
        self._paused = 0.0  # seconds spent exporting, excluded from training time

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def training_minutes(self) -> float:
        return (time.perf_counter() - self._start - self._paused) / 60

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if len(self.taken) == len(self.marks) or self.training_minutes() < self.marks[len(self.taken)]:
            return
        self.export(trainer, pl_module, self.marks[len(self.taken)])
        if len(self.taken) == len(self.marks):
            trainer.should_stop = True

    def export(self, trainer: L.Trainer, pl_module: Any, mark: float) -> None:
        from geossl.models.encoder import export_encoder

        minutes, t0 = self.training_minutes(), time.perf_counter()
        out = self.out_dir / f"min-{mark:g}"
        if trainer.is_global_zero:
            export_encoder(pl_module.model.teacher.backbone, pl_module.teacher_encoder().meta, out)
        self.taken.append({"mark": mark, "minutes": round(minutes, 2), "step": int(trainer.global_step),
                           "encoder": str(out)})
        self._paused += time.perf_counter() - t0


def plot_curve(path: Path, points: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], title: str) -> None:
    """Test top-1 against minutes: linear (solid) and k-NN (dashed); baselines as horizontal lines."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [p["minutes"] for p in points]
    ax.plot(x, [100 * p["linear_top1"] for p in points], "o-", color="C0", label="DINO encoder, linear")
    ax.plot(x, [100 * p["knn_top1"] for p in points], "s--", color="C0", label="DINO encoder, k-NN")
    for (name, b), colour in zip(baselines.items(), ("C1", "C2", "C3"), strict=False):
        label = name.replace("-", " ")
        ax.axhline(100 * b["linear_top1"], color=colour, ls="-", lw=1, label=f"{label}, linear")
        ax.axhline(100 * b["knn_top1"], color=colour, ls="--", lw=1, label=f"{label}, k-NN")
    ax.set_xlabel("pretraining minutes (this machine)")
    ax.set_ylabel("EuroSAT RGB test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--minutes", default="5,10,20,40,60", help="comma-separated minute marks")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/learning_curve"))
    parser.add_argument("--splits", type=Path, default=None, help="probe splits CSV (default: EuroSAT's splits.csv)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args(argv)
    marks = sorted(float(m) for m in args.minutes.split(",") if m.strip())
    if not marks or marks[0] <= 0:
        raise SystemExit("learning curve: --minutes needs positive numbers")
    from geossl.dino.train import pretrain
    from geossl.probe.run import ProbeOptions, run_probe

    root = data_root()
    overrides = [f"data.root={root}", *args.overrides]
    speed = throughput(args.config, overrides)
    base = load_config(args.config, overrides)
    sizing = sized_overrides(speed * marks[-1] * 60 * 1.02, base.data.batch_size)  # 2 % slack: the last mark is hit
    cfg = load_config(args.config, [*overrides, *sizing, "trainer.checkpoint_every_steps=100000"])
    snaps = MinuteSnapshots(marks, args.run_dir / "snapshots")
    summary = pretrain(cfg, args.run_dir / "pretrain", resume="never", callbacks=[snaps])
    if len(snaps.taken) < len(marks) and summary.get("encoder_dir"):  # schedule ended first: the final encoder
        snaps.taken.append({"mark": marks[len(snaps.taken)], "minutes": round(summary["wall_time_s"] / 60, 2),
                            "step": summary["steps"], "encoder": summary["encoder_dir"]})

    points, baselines = [], {}
    for i, snap in enumerate(snaps.taken):
        metrics = run_probe(ProbeOptions(
            encoder=snap["encoder"], data=root / "eurosat-rgb", out=args.run_dir / f"probe-min-{snap['mark']:g}",
            splits=args.splits, cache_dir=args.run_dir / "probe-cache", workers=args.workers, random_baseline=i == 0,
        ))
        baselines = baselines or metrics["baselines"]
        points.append({**snap, "linear_top1": metrics["linear_top1"], "knn_top1": metrics["knn_top1"]})
        print(f"learning curve: {snap['minutes']:.1f} min (step {snap['step']}): linear {metrics['linear_top1']:.1%} "
              f"k-NN {metrics['knn_top1']:.1%}", file=sys.stderr, flush=True)
    result = {
        "bench": "learning_curve", "config": args.config, "overrides": args.overrides, "sizing": sizing,
        "img_per_s": round(speed, 1), "machine": machine(), "points": points,
        "baselines": {k: {"linear_top1": v["linear_top1"], "knn_top1": v["knn_top1"]} for k, v in baselines.items()},
        "test_count": metrics["counts"]["test"]["total"],
    }
    plot_curve(args.run_dir / "learning_curve.png", points, result["baselines"],
               f"{Path(args.config).stem}: EuroSAT RGB test top-1 vs pretraining minutes ({machine()})")
    (args.run_dir / "learning_curve.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
