"""Learning curve: EuroSAT RGB test linear and k-NN top-1 against pretraining minutes, beside the baselines.

ONE pretraining run whose whole schedule (warm-up, cosine learning rate, teacher momentum) is sized
to the largest budget on this machine (throughput timed first as in ``bench/trials.py``, or given as
``--img-per-s``, the recipe's idle throughput); the EMA teacher is exported at every nominal-minute mark
(the step where steps x batch / img/s reaches it, so other work on the cores does not move the marks)
and each snapshot is probed on the test split with the probe's baselines (band statistics, the same
ViT at random init) measured once in the same run. The run is resumable: stopped (Ctrl-C, SIGTERM)
or killed, the same command continues from the last checkpoint (every 100 steps), keeps the
snapshots and probes already made, and ``--probe-only`` draws the curve of the snapshots so far.
A snapshot before the last mark is mid-schedule (higher
learning rate, teacher momentum not yet near 1), so it understates what a run sized to that budget
reaches; the demo (``make demo``) is such a sized run.

    python bench/learning_curve.py --config configs/demo.yaml --minutes 10,20,40,60,90,120 --img-per-s 34 \\
        --run-dir runs/curve

Writes RUN/learning_curve.png and RUN/learning_curve.json; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L  # noqa: E402

from bench._common import sized_overrides  # noqa: E402
from bench.quality import machine  # noqa: E402
from bench.trials import TRAIN_IMAGES, throughput  # noqa: E402
from geossl.config import load_config  # noqa: E402
from geossl.plotting import save_png  # noqa: E402  (selects the Agg backend before pyplot loads)
from geossl.settings import data_root  # noqa: E402


class MinuteSnapshots(L.Callback):
    """Export the EMA teacher at each nominal-minute mark (a step: mark x img/s / batch); stop after the last.

    Marks are steps, not wall time, so a snapshot means the same compute however busy the machine was,
    and a resumed run (the same command again) continues where it stopped: a mark whose snapshot folder
    is complete on disk is not exported again.
    """

    def __init__(self, mark_steps: dict[float, int], out_dir: Path, img_per_s: float, batch: int) -> None:
        self.mark_steps = dict(sorted(mark_steps.items()))
        self.out_dir = out_dir
        self.img_per_s, self.batch = img_per_s, batch
        self.taken: list[dict[str, Any]] = [
            json.loads((self.folder(m) / "snapshot.json").read_text())
            for m in self.mark_steps if (self.folder(m) / "snapshot.json").is_file()
        ]

    def folder(self, mark: float) -> Path:
        return self.out_dir / f"min-{mark:g}"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        done = {t["mark"] for t in self.taken}
        for mark, step in self.mark_steps.items():
            if mark not in done and trainer.global_step >= step:
                self.export(trainer, pl_module, mark)
        if len(self.taken) == len(self.mark_steps):
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        """A schedule that ended before a mark (it should not: the plan sizes it) still leaves its snapshot."""
        done = {t["mark"] for t in self.taken}
        missing = [m for m in self.mark_steps if m not in done]
        if missing and trainer.global_step > 0:
            self.export(trainer, pl_module, missing[0])

    def export(self, trainer: L.Trainer, pl_module: Any, mark: float) -> None:
        from geossl.models.encoder import export_encoder

        out, step = self.folder(mark), int(trainer.global_step)
        snap = {"mark": mark, "minutes": round(step * self.batch / self.img_per_s / 60, 2), "step": step,
                "encoder": str(out)}
        if trainer.is_global_zero:
            export_encoder(pl_module.model.teacher.backbone, pl_module.teacher_encoder().meta, out)
            (out / "snapshot.json").write_text(json.dumps(snap))  # last: marks the snapshot complete
        self.taken.append(snap)


def plot_curve(path: Path, points: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], title: str) -> None:
    """Test top-1 against minutes: linear (solid), k-NN on the final CLS (dashed) and on the probe's features
    (dotted, probes that recorded it); baselines as horizontal lines."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [p["minutes"] for p in points]
    ax.plot(x, [100 * p["linear_top1"] for p in points], "o-", color="C0", label="DINO encoder, linear")
    ax.plot(x, [100 * p["knn_top1"] for p in points], "s--", color="C0", label="DINO encoder, k-NN (final CLS)")
    if all(p.get("knn_features_top1") is not None for p in points):
        ax.plot(x, [100 * p["knn_features_top1"] for p in points], "^:", color="C0",
                label="DINO encoder, k-NN (probe features)")
    for (name, b), colour in zip(baselines.items(), ("C1", "C2", "C3"), strict=False):
        label = name.replace("-", " ")
        ax.axhline(100 * b["linear_top1"], color=colour, ls="-", lw=1, label=f"{label}, linear")
        ax.axhline(100 * b["knn_top1"], color=colour, ls="--", lw=1, label=f"{label}, k-NN")
    ax.set_xlabel("pretraining minutes (nominal: steps x batch / idle img/s of this machine)")
    ax.set_ylabel("EuroSAT RGB test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def plan_run(args: argparse.Namespace, marks: list[float], overrides: list[str]) -> dict[str, Any]:
    """Size the schedule to the last mark once; a rerun (resume) reads the same plan back."""
    plan_path = args.run_dir / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        if plan["marks"] != marks or plan["overrides"] != args.overrides or plan["config"] != args.config:
            raise SystemExit(f"learning curve: {args.run_dir} was planned with other marks, config or overrides "
                             f"({plan_path}); use another --run-dir")
        return plan
    speed = args.img_per_s or throughput(args.config, overrides)
    batch = load_config(args.config, overrides).data.batch_size
    mark_steps = {str(m): math.ceil(m * 60 * speed / batch) for m in marks}
    images = mark_steps[str(marks[-1])] * batch * 1.02
    sizing, sized = sized_overrides(images, TRAIN_IMAGES, batch)
    while sized["steps"] < mark_steps[str(marks[-1])]:  # whole batches per epoch: grow until the last mark fits
        images += batch * sized["epochs"]
        sizing, sized = sized_overrides(images, TRAIN_IMAGES, batch)
    plan = {"config": args.config, "overrides": args.overrides, "marks": marks, "img_per_s": speed, "batch": batch,
            "sizing": sizing, "steps": sized["steps"], "mark_steps": mark_steps}
    args.run_dir.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=1))
    return plan


def probe_order(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last mark first (the figure a goal is about, there even if the probing is cut short), then the
    others from the earliest."""
    ordered = sorted(snapshots, key=lambda t: t["mark"])
    return ordered[-1:] + ordered[:-1]


def probe_snapshot(snap: dict[str, Any], root: Path, args: argparse.Namespace, first: bool) -> dict[str, Any]:
    """Probe one snapshot on the test split, once: a finished probe's metrics.json is read back."""
    from geossl.probe.run import ProbeOptions, run_probe

    out = args.run_dir / f"probe-min-{snap['mark']:g}"
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return run_probe(ProbeOptions(
        encoder=snap["encoder"], data=root / "eurosat-rgb", out=out, splits=args.splits,
        cache_dir=args.run_dir / "probe-cache", workers=args.workers, random_baseline=first,
    ))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--minutes", default="5,10,20,40,60", help="comma-separated nominal minute marks")
    parser.add_argument("--img-per-s", type=float, default=None,
                        help="the recipe's idle throughput (default: timed now); sets the step of each mark")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/learning_curve"))
    parser.add_argument("--splits", type=Path, default=None, help="probe splits CSV (default: EuroSAT's splits.csv)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--probe-only", action="store_true",
                        help="probe the snapshots taken so far (e.g. while the run is paused) and draw the curve")
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args(argv)
    marks = sorted(float(m) for m in args.minutes.split(",") if m.strip())
    if not marks or marks[0] <= 0:
        raise SystemExit("learning curve: --minutes needs positive numbers")
    from geossl.dino.train import pretrain

    root = data_root()
    overrides = [f"data.root={root}", *args.overrides]
    plan = plan_run(args, marks, overrides)
    snaps = MinuteSnapshots({float(m): s for m, s in plan["mark_steps"].items()}, args.run_dir / "snapshots",
                            plan["img_per_s"], plan["batch"])
    if not args.probe_only and len(snaps.taken) < len(marks):
        cfg = load_config(args.config, [*overrides, *plan["sizing"], "trainer.checkpoint_every_steps=100"])
        summary = pretrain(cfg, args.run_dir / "pretrain", resume="auto", callbacks=[snaps])
        if summary.get("status") != "finished" and len(snaps.taken) < len(marks):
            print(f"learning curve: pretraining {summary.get('status')}; run the same command to continue",
                  file=sys.stderr)
            return 1

    points, baselines, metrics = [], {}, {}
    for i, snap in enumerate(probe_order(snaps.taken)):
        metrics = probe_snapshot(snap, root, args, first=i == 0)
        baselines = baselines or metrics.get("baselines", {})
        points.append({**snap, "linear_top1": metrics["linear_top1"], "knn_top1": metrics["knn_top1"],
                       "knn_features_top1": metrics.get("knn_features_top1")})
        print(f"learning curve: {snap['minutes']:.1f} min (step {snap['step']}): linear {metrics['linear_top1']:.1%} "
              f"k-NN {metrics['knn_top1']:.1%}", file=sys.stderr, flush=True)
    if not points:
        raise SystemExit("learning curve: no snapshot yet")
    points.sort(key=lambda p: p["mark"])
    result = {
        "bench": "learning_curve", "config": args.config, "overrides": args.overrides, "sizing": plan["sizing"],
        "img_per_s": round(plan["img_per_s"], 1), "machine": machine(), "points": points,
        "complete": len(points) == len(marks),
        "baselines": {k: {"linear_top1": v["linear_top1"], "knn_top1": v["knn_top1"],
                          "knn_features_top1": v.get("knn_features_top1")} for k, v in baselines.items()},
        "test_count": metrics["counts"]["test"]["total"],
    }
    plot_curve(args.run_dir / "learning_curve.png", points, result["baselines"],
               f"{Path(args.config).stem}: EuroSAT RGB test top-1 vs pretraining minutes ({machine()})")
    (args.run_dir / "learning_curve.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
