"""Cross-sensor transfer: the RGB demo encoder moved onto 13-band EuroSAT MS, beside MS from scratch.

Rows of one table, all probed on the same seeded stratified EuroSAT MS split (test part), all the same
architecture (the demo's conv-stem ViT-tiny):

- ``rgb-init + MS minutes``: the demo encoder, bands named B04,B03,B02, continued with
  ``geossl pretrain --init`` (configs/continue_eurosat_ms.yaml) for MINUTES on the MS train split;
- ``MS from scratch``: the same architecture and head trained from random init with the demo's
  from-scratch recipe (learning rate 0.001, teacher momentum 0.99) for the same MINUTES;
- ``rgb-init, frozen``: the adapted RGB encoder with no MS training at all (new bands' filters zero);
- the probe's baselines: band statistics (13 bands x 7 statistics) and the architecture at random init.

Both schedules are sized from one timed img/s of this architecture to end at MINUTES (equal steps,
so equal compute even when the machine is busy); the online k-NN monitor is off.

    python bench/transfer.py --rgb-encoder runs/demo/pretrain/encoder --minutes 5 --run-dir runs/transfer

Writes RUN/transfer.json and RUN/transfer.md; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C  # noqa: E402
from bench.quality import machine  # noqa: E402
from bench.trials import throughput  # noqa: E402
from geossl.config import load_config  # noqa: E402
from geossl.settings import data_root  # noqa: E402

CONFIG = "configs/continue_eurosat_ms.yaml"
MS_BANDS = "B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A"
# From scratch: the demo's own recipe for a randomly initialised conv-stem ViT (configs/demo.yaml).
SCRATCH = ["optim.base_lr=0.001", "optim.momentum_teacher=0.99"]


def geossl(*args: str) -> None:
    """Run a geossl command as a user would (one line per command on stderr)."""
    print("$ geossl " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-c", "import sys; from geossl.cli import main; sys.exit(main())", *args],
                   check=True)


def pretrain_for(minutes: float, run_dir: Path, overrides: list[str], n_train: int, speed: float) -> dict[str, Any]:
    """One run whose schedule is sized to ``minutes`` at ``speed`` img/s (timed once for both runs: the
    architecture is the same, so equal steps are equal compute, whatever else the machine is doing)."""
    from geossl.dino.train import pretrain

    batch = load_config(CONFIG, overrides).data.batch_size
    sizing, info = C.sized_overrides(speed * minutes * 60, n_train, batch)
    cfg = load_config(CONFIG, [*overrides, *sizing, "eval.knn_data=null", "trainer.progress_bar=false",
                               "trainer.checkpoint_every_steps=100000"])
    summary = pretrain(cfg, run_dir, resume="never")
    return {"img_per_s": round(speed, 1), **info, "wall_time_s": summary["wall_time_s"],
            "encoder": summary["encoder_dir"], "init": summary.get("init")}


def probe(encoder: str, out: Path, root: Path, cache: Path, random_baseline: bool) -> dict[str, Any]:
    from geossl.probe.run import ProbeOptions, run_probe

    return run_probe(ProbeOptions(encoder=encoder, data=root / "eurosat-ms", out=out, cache_dir=cache,
                                  random_baseline=random_baseline))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rgb-encoder", type=Path, default=Path("runs/demo/pretrain/encoder"),
                        help="the RGB demo encoder (make demo writes it)")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/transfer"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep finished pretraining runs in RUN and only (re)probe them")
    parser.add_argument("--init-overrides", nargs="*", default=[],
                        help="config overrides for the --init run only (e.g. model.init_new_bands=mean)")
    args = parser.parse_args(argv)
    if not (args.rgb_encoder / "geossl.json").is_file():
        raise SystemExit(f"transfer: {args.rgb_encoder}: no encoder; run `make demo` first or pass --rgb-encoder")
    C.quiet_lightning()
    root, run = data_root(), args.run_dir
    if run.exists() and not args.reuse:
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        return report(args, run, root, {name: reused(run / name) for name in ("init", "scratch")})
    geossl("stats", "--input", str(root / "eurosat-ms"), "--out", str(run / "ms_stats.json"), "--tiles", "575")
    geossl("import-encoder", "--from", str(args.rgb_encoder), "--bands", "B04,B03,B02", "--out", str(run / "rgb"))
    geossl("import-encoder", "--from", str(run / "rgb"), "--adapt-bands", MS_BANDS,
           "--stats", str(run / "ms_stats.json"), "--out", str(run / "rgb-on-ms"))
    common = [f"data.root={root}"]
    from geossl.dino.data import build_pretrain_dataset

    n_train = len(build_pretrain_dataset(load_config(CONFIG, common)))
    arch = json.loads((args.rgb_encoder / "geossl.json").read_text())
    scratch_arch = [f"model.arch={arch['timm_name']}", f"model.patch_size={arch['timm_kwargs'].get('patch_size')}",
                    f"model.extra={{depth: {arch['timm_kwargs'].get('depth', 12)}}}"]
    speed = throughput(CONFIG, [*common, *scratch_arch, *SCRATCH])
    runs = {
        "init": pretrain_for(args.minutes, run / "init",
                             [*common, f"model.init={run / 'rgb'}", *args.init_overrides], n_train, speed),
        "scratch": pretrain_for(args.minutes, run / "scratch", [*common, *scratch_arch, *SCRATCH], n_train, speed),
    }
    return report(args, run, root, runs)


def reused(run_dir: Path) -> dict[str, Any]:
    """A finished run of an earlier invocation, as :func:`pretrain_for` describes it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("status") != "finished":
        raise SystemExit(f"transfer --reuse: {run_dir} holds no finished run")
    return {"steps": summary["steps"], "epochs": summary["epochs"], "wall_time_s": summary["wall_time_s"],
            "encoder": summary["encoder_dir"], "init": summary.get("init"), "reused": True}


def report(args: argparse.Namespace, run: Path, root: Path, runs: dict[str, dict[str, Any]]) -> int:
    """Probe the two runs and the frozen adapted encoder; write the table and the JSON line."""
    cache = run / "probe-cache"
    rows: dict[str, dict[str, Any]] = {}
    m = probe(runs["init"]["encoder"], run / "probe-init", root, cache, random_baseline=True)
    rows[f"rgb-init + {args.minutes:g} min MS"] = m
    rows[f"MS from scratch, {args.minutes:g} min"] = probe(runs["scratch"]["encoder"], run / "probe-scratch", root,
                                                           cache, random_baseline=False)
    rows["rgb-init, frozen (0 min)"] = probe(str(run / "rgb-on-ms"), run / "probe-frozen", root, cache, False)
    table = {name: {"linear_top1": r["linear_top1"], "knn_top1": r["knn_top1"]} for name, r in rows.items()}
    table.update({name: {"linear_top1": b["linear_top1"], "knn_top1": b["knn_top1"]}
                  for name, b in m["baselines"].items()})
    init_row, scratch_row = table[f"rgb-init + {args.minutes:g} min MS"], table[f"MS from scratch, {args.minutes:g} min"]
    gain = round(100 * (init_row["linear_top1"] - scratch_row["linear_top1"]), 1)
    lines = ["| row | test linear top-1 | test k-NN top-1 |", "|---|---|---|"]
    lines += [f"| {n} | {100 * r['linear_top1']:.1f} | {100 * r['knn_top1']:.1f} |" for n, r in table.items()]
    (run / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)
    result = {"bench": "transfer", "minutes": args.minutes, "init_overrides": args.init_overrides, "machine": machine(), "runs": runs, "table": table,
              "init_minus_scratch_linear_points": gain, "goal_points": 5.0, "goal_met": gain >= 5.0,
              "test_count": m["counts"]["test"]["total"]}
    (run / "transfer.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
