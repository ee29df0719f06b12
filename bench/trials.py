"""Recipe trials at equal compute: pretrain for a fixed number of CPU minutes, probe on the VAL split.

Each trial (a name + config overrides) first times a few real training steps of its recipe, then sizes
the run (``data.limit`` x ``optim.epochs``) so that the whole schedule (warm-up, cosine, teacher
momentum) fits the minute budget, pretrains, and probes the exported encoder with the EuroSAT
*validation* split standing in for the test split (the probe's head is fitted on 8,000 train patches,
its weight decay chosen on 1,000 others). The test split is never read: recipes are chosen here, reported elsewhere.

    python bench/trials.py --name base --minutes 4
    python bench/trials.py --name p8_d6 --minutes 4 model.patch_size=8 model.extra='{depth: 6}'

Minutes are "nominal": steps x batch / the throughput timed at the start, i.e. the compute spent
measured in minutes of an idle machine, so trials stay comparable when other work shares the cores
(the wall time is kept beside it). Every trial appends one row to ``RUNS/trials.jsonl`` (and prints it as the last stdout line); the
table in ``docs/trials.md`` is written from that file with ``--table``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C  # noqa: E402
from geossl.config import load_config  # noqa: E402
from geossl.settings import data_root  # noqa: E402

TRAIN_IMAGES = 19_440  # EuroSAT RGB train split


def val_as_test_splits(data: Path, out: Path, seed: int = 0, train: int = 8000, held: int = 1000) -> Path:
    """EuroSAT splits for choosing recipes: the val split relabelled "test"; from train, a stratified
    ``train`` rows for the probe's head and ``held`` rows as its "val" (weight decay); the rest unused."""
    import csv

    import numpy as np

    rows = list(csv.DictReader(open(data / "splits.csv", newline="")))
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        if r["split"] == "train":
            by_class.setdefault(r["label"], []).append(r)
    total = sum(len(m) for m in by_class.values())
    role: dict[str, str] = {}
    for members in by_class.values():
        order = rng.permutation(len(members))
        n_held, n_train = round(held * len(members) / total), round(train * len(members) / total)
        for rank, i in enumerate(order[: n_held + n_train]):
            role[members[int(i)]["path"]] = "val" if rank < n_held else "train"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["path", "label", "split"])
        for r in rows:
            split = role.get(r["path"], "") if r["split"] == "train" else ("test" if r["split"] == "val" else "")
            w.writerow([r["path"], r["label"], split])
    return out


def throughput(config: str, overrides: list[str]) -> float:
    """Training images per second of this recipe (steps 5..14 of a throwaway run on 2,000 patches)."""
    return C.recipe_throughput(config, [*overrides, "data.limit=2000"], steps=14, skip=4)["img_per_s"]


def sized_overrides(images: float, batch: int) -> list[str]:
    """``data.limit`` and ``optim.epochs`` so that limit x epochs ~ ``images`` of the EuroSAT train split."""
    return C.sized_overrides(images, TRAIN_IMAGES, batch)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="trial name (a row of the table)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--minutes", type=float, default=4.0, help="pretraining budget in minutes of this machine")
    parser.add_argument("--runs", type=Path, default=Path("runs/trials"))
    parser.add_argument("--img-per-s", type=float, default=None,
                        help="the recipe's throughput on an idle machine, timed beforehand (default: timed now; "
                             "pass it when other work shares the cores, or the budget shrinks with the contention)")
    parser.add_argument("--random", action="store_true", help="also probe this architecture at random init")
    parser.add_argument("--reprobe", action="store_true", help="probe the finished trial NAME again")
    parser.add_argument("--table", action="store_true", help="only rewrite docs/trials.md from RUNS/trials.jsonl")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.table:
        write_table(args.runs / "trials.jsonl", Path("docs/trials.md"))
        return 0
    root = data_root()
    if args.reprobe:
        row = reprobe(args.runs, args.name, root, args.random)
    else:
        row = run_trial(args, root)
    with open(args.runs / "trials.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return 0


def probe_val(encoder: Path, root: Path, runs: Path, random_baseline: bool) -> dict[str, Any]:
    from geossl.probe.run import ProbeOptions, run_probe

    splits = val_as_test_splits(root / "eurosat-rgb", runs / "val_as_test.csv")
    metrics = run_probe(ProbeOptions(encoder=str(encoder), data=root / "eurosat-rgb", out=encoder.parent / "probe-val",
                                     splits=splits, workers=2, cache_dir=runs / "cache",
                                     random_baseline=random_baseline))
    return {"val_linear": metrics["linear_top1"], "val_knn": metrics["knn_top1"],
            "baselines": {k: {"linear": v["linear_top1"], "knn": v["knn_top1"]}
                          for k, v in metrics.get("baselines", {}).items()}}


def run_trial(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Time the recipe, size it to the budget, pretrain, probe on val."""
    from geossl.dino.train import pretrain

    overrides = [f"data.root={root}", *args.overrides]
    speed = args.img_per_s or throughput(args.config, overrides)
    base = load_config(args.config, overrides)
    sizing = sized_overrides(speed * args.minutes * 60, base.data.batch_size)
    cfg = load_config(args.config, [*overrides, *sizing, "eval.knn_data=null", "trainer.progress_bar=false",
                                    "trainer.checkpoint_every_steps=100000"])
    run_dir = args.runs / args.name
    t0 = time.perf_counter()
    summary = pretrain(cfg, run_dir, resume="never")
    minutes = (time.perf_counter() - t0) / 60
    return {"name": args.name, "config": args.config, "overrides": args.overrides, "sizing": sizing,
            "img_per_s": round(speed, 1), "batch": cfg.data.batch_size, "steps": summary["steps"],
            "minutes": round(minutes, 2), "nominal_minutes": round(summary["steps"] * cfg.data.batch_size / speed / 60, 2),
            "final_loss": summary["final_loss"], **probe_val(run_dir / "encoder", root, args.runs, args.random)}


def reprobe(runs: Path, name: str, root: Path, random_baseline: bool) -> dict[str, Any]:
    """Probe a finished trial again (e.g. after the probe protocol changed); its newest row is updated."""
    rows = [json.loads(line) for line in (runs / "trials.jsonl").read_text().splitlines() if line.strip()]
    (row,) = [r for r in rows if r["name"] == name][-1:]
    return {**row, **probe_val(runs / name / "encoder", root, runs, random_baseline)}


def write_table(jsonl: Path, out: Path) -> None:
    """docs/trials.md: every trial, winners and losers, in the order they ran."""
    rows = list({r["name"]: r for r in (json.loads(ln) for ln in jsonl.read_text().splitlines() if ln.strip())}.values())
    lines = ["| trial | overrides | img/s | steps | minutes | final loss | val linear | val k-NN |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        minutes = r.get("nominal_minutes") or r["steps"] * r.get("batch", 64) / r["img_per_s"] / 60
        lines.append(f"| {r['name']} | `{' '.join(r['overrides']) or '-'}` | {r['img_per_s']:.0f} | {r['steps']} | "
                     f"{minutes:.1f} | {r['final_loss']:.2f} | {100 * r['val_linear']:.1f} % | {100 * r['val_knn']:.1f} % |")
    text = out.read_text() if out.exists() else "# Recipe trials\n\n<!-- trials -->\n<!-- /trials -->\n"
    start, end = "<!-- trials -->", "<!-- /trials -->"
    if start not in text or end not in text:
        raise SystemExit(f"{out}: the markers {start} and {end} are missing; the table goes between them")
    head, tail = text.split(start, 1)[0], text.split(end, 1)[1]
    out.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail)


if __name__ == "__main__":
    sys.exit(main())
