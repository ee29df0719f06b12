"""``geossl demo``: the whole product on the default data, as one command.

pretrain (configs/demo.yaml) -> probe the encoder on EuroSAT RGB beside its baselines (band statistics,
the same ViT at random init; linear + k-NN, label efficiency) -> classify the real NAIP scene (its R, G, B bands, resampled to EuroSAT's 10 m)
-> ``RUN/summary.json`` and one line. Steps already done in RUN are reused, so a re-run is cheap; a
re-run whose config, overrides or options differ from those of a finished step is refused in one line
naming the differences (reusing the step would ignore them; redoing it would replace a finished result).
Datasets missing from the data root are fetched first (:mod:`geossl.data.fetch`, a mirror from
``GEOSSL_DATA_MIRROR``); with ``--offline`` or without a network, one line says where to put them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from geossl.argtypes import positive_int
from geossl.config import Config, config_from_dict, load_config
from geossl.io import atomic_write_json, read_json
from geossl.settings import data_root

NAIP_SCENE = "scenes/naip_5m_north_dakota_2019.tif"
DEMO_DATASETS = ("eurosat-rgb", "scenes")  # what the demo reads; fetched when absent (geossl/data/fetch.py)
STEP_SETTINGS = "demo_settings.json"  # in RUN/probe and RUN/finetune: the options the finished step was made with
SHOWN_DIFFERENCES = 4  # differences named in a refusal; the rest counted
# Config keys that change no result: data.root only resolves the data paths (compared themselves, resolved),
# the progress bar only how a run looks; a re-run differing in them alone reuses the finished steps.
NOT_RESULTS = ("data.root", "trainer.progress_bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/demo.yaml", help="pretraining config (default: the CPU demo)")
    parser.add_argument("--run-dir", default="runs/demo",
                        help="where everything is written; a run folder's finished steps are reused, and a "
                             "re-run whose config, overrides or options differ from a finished step's is "
                             "refused naming the differences (give a new --run-dir; nothing is overwritten)")
    parser.add_argument("--data", default=None, help="data root (default: $GEOSSL_DATA or ../shared/data)")
    parser.add_argument("--labels-per-class", default="5,10,50,100,all", help="label-efficiency budgets")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds per label budget")
    parser.add_argument("--splits", default=None,
                        help="a splits CSV (path,label,split) to probe on a subset (default: EuroSAT's splits.csv)")
    parser.add_argument("--finetune-config", default="configs/finetune_demo.yaml",
                        help="fine-tuning config of the demo's last training stage")
    parser.add_argument("--finetune-epochs", type=float, default=1.5,
                        help="epochs of the demo's fine-tune (default 1.5: about 5 CPU-minutes on 2 cores)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: missing data is an error saying where to put it "
                             "(default: fetch what is missing, from $GEOSSL_DATA_MIRROR if set)")
    parser.add_argument("overrides", nargs="*", help="pretraining config overrides (key=value)")


def _step(name: str) -> None:
    print(f"\n=== geossl demo: {name} ===", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    root = Path(args.data) if args.data else data_root()
    # Before the heavy imports: a fresh machine gets its data (or one line saying where to put it) at once.
    from geossl.data.fetch import fetch_missing

    fetch_missing(DEMO_DATASETS, root, offline=args.offline,
                  say=lambda line: print(f"geossl demo: {line}", file=sys.stderr, flush=True))

    run_dir = Path(args.run_dir)
    overrides = [f"data.root={root}", *args.overrides]
    cfg = load_config(args.config, overrides)
    budgets = label_budgets(args.labels_per_class)
    refuse_changed_settings(run_dir, cfg, step_settings(args))  # in a second, before the heavy imports

    from geossl.dino.train import pretrain
    from geossl.predict import classify_scene
    from geossl.probe.run import ProbeOptions, run_probe, summary_line

    _step("1/4 DINO pretraining")
    pre_dir = run_dir / "pretrain"
    summary_path = pre_dir / "summary.json"
    if summary_path.exists() and read_json(summary_path).get("status") == "finished":
        pre = read_json(summary_path)
        print(f"reusing the finished pretraining in {pre_dir}", file=sys.stderr)
    else:
        pre = pretrain(cfg, pre_dir)
        if pre["status"] != "finished":
            print("pretraining was interrupted; run the same command again to resume", file=sys.stderr)
            return 143
    encoder_dir = pre_dir / "encoder"

    _step("2/4 probe on EuroSAT RGB: the encoder beside band statistics and random init")
    out = run_dir / "probe"
    metrics_path = out / "metrics.json"
    if finished_step(out, encoder_dir, "probe"):
        metrics = read_json(metrics_path)
    else:
        metrics = run_probe(ProbeOptions(
            encoder=str(encoder_dir), data=root / "eurosat-rgb", out=out, seed=cfg.seed, seeds=args.seeds,
            splits=Path(args.splits) if args.splits else None, labels_per_class=budgets,
        ))
        atomic_write_json(out / STEP_SETTINGS, step_settings(args)["probe"])
    print(summary_line(metrics), file=sys.stderr)

    _step("3/4 fine-tune the encoder end to end on EuroSAT RGB (the map uses it if it beats the frozen head on val)")
    tuned = _finetune(args, encoder_dir, root, run_dir / "finetune", cfg.seed)
    if tuned.get("status") == "interrupted":
        print("fine-tuning was interrupted; run the same command again to resume", file=sys.stderr)
        return 143

    model_dir, chosen = map_classifier(metrics, tuned)
    _step(f"4/4 classify the NAIP scene with the {chosen} (bands 1,2,3 = R,G,B; resampled to 10 m; stride 16)")
    scene_out = run_dir / "classify"
    scene = classify_scene(model_dir, str(root / NAIP_SCENE), scene_out,
                           bands=[1, 2, 3], stride=16, overwrite=True)  # 160 m cells, overlapping windows
    print(scene.summary(), file=sys.stderr)
    summary = {**demo_summary(pre, metrics, scene, time.perf_counter() - started, tuned), "map_classifier": chosen}
    atomic_write_json(run_dir / "summary.json", summary)
    print(json.dumps(summary), flush=True)
    print(summary_text(summary), file=sys.stderr, flush=True)
    return 0


def _finetune(args: argparse.Namespace, encoder_dir: Path, root: Path, out: Path, seed: int) -> dict[str, Any]:
    """The fine-tuned classifier (a new head on the encoder), reused when ``out`` holds a finished one of it."""
    from geossl.finetune.config import load_finetune_config
    from geossl.finetune.run import FinetuneOptions, run_finetune

    if finished_step(out, encoder_dir, "finetune"):
        print(f"reusing the finished fine-tune in {out}", file=sys.stderr)
        return read_json(out / "metrics.json")
    cfg = load_finetune_config(args.finetune_config, [f"optim.epochs={args.finetune_epochs}", f"seed={seed}"])
    tuned = run_finetune(FinetuneOptions(encoder=str(encoder_dir), out=out, cfg=cfg, data=root / "eurosat-rgb",
                                         splits=Path(args.splits) if args.splits else None, baselines="none",
                                         overwrite=True))
    if tuned.get("status") != "interrupted":
        atomic_write_json(out / STEP_SETTINGS, step_settings(args)["finetune"])
    return tuned


def map_classifier(metrics: dict[str, Any], tuned: dict[str, Any]) -> tuple[Path, str]:
    """The classifier the map uses: the fine-tuned one or the probe's frozen linear head, whichever scored
    higher on the val split (never test). A short fine-tune can trail the frozen head it started beside
    (1.5 epochs from the demo encoder: 84.4 % val against 85.9 %); the map should not pay for that."""
    tuned_val, linear_val = tuned["chosen"]["val_top1"], metrics["linear_val_top1"]
    if tuned_val >= linear_val:
        return Path(tuned["model_dir"]), f"fine-tuned model (val {tuned_val:.1%} vs frozen linear {linear_val:.1%})"
    return Path(metrics["model_dir"]), f"frozen linear head (val {linear_val:.1%} vs fine-tuned {tuned_val:.1%})"


def label_budgets(text: str) -> list[int | None]:
    """``--labels-per-class 5,10,all`` -> ``[5, 10, None]`` (None: all labels)."""
    return [None if b.strip() == "all" else int(b) for b in text.split(",") if b.strip()]


def finished_step(out: Path, encoder_dir: Path, step: str) -> bool:
    """Whether ``out`` holds a finished probe / fine-tune of this encoder: the step the demo reuses."""
    metrics_path = out / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    return metrics.get("encoder") == str(encoder_dir) and (step != "probe" or "baselines" in metrics)


def step_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The demo options each later step's result depends on, by step, as written beside a finished step.

    The pretraining's own settings are its config (``RUN/pretrain/config.yaml``, compared key by key); the
    probe and the fine-tune depend on these options too, which no file of theirs records. Paths are made
    absolute, so the same file named from another folder is no difference."""
    splits = str(Path(args.splits).resolve()) if args.splits else None
    budgets = ["all" if b is None else b for b in label_budgets(args.labels_per_class)]
    return {"probe": {"--labels-per-class": budgets, "--seeds": args.seeds, "--splits": splits},
            "finetune": {"--finetune-config": str(Path(args.finetune_config).resolve()),
                         "--finetune-epochs": args.finetune_epochs, "--splits": splits}}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"epochs": 2}}`` -> ``{"optim.epochs": 2}``: differences are named as overrides are typed."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"optim.epochs: 2 in the run folder, 3 now"`` per key whose value differs (JSON-like values)."""
    return [f"{key}: {json.dumps(was.get(key))} in the run folder, {json.dumps(now.get(key))} now"
            for key in sorted(was.keys() | now.keys()) if was.get(key) != now.get(key)]


def pretrain_differences(pre_dir: Path, cfg: Config) -> list[str]:
    """How ``cfg`` differs from the config a finished pretraining in ``pre_dir`` ran with (its config.yaml).

    Both sides go through :func:`config_from_dict`, so a key added to geossl since is no difference, and
    the keys that change no result (``NOT_RESULTS``) are left out.
    """
    saved = config_from_dict(yaml.safe_load((pre_dir / "config.yaml").read_text()) or {}, str(pre_dir))
    was, now = _flat(saved.to_dict()), _flat(_as_trained(cfg).to_dict())
    for flat in (was, now):
        for key in NOT_RESULTS:
            flat.pop(key, None)
    return _differences(was, now)


def _as_trained(cfg: Config) -> Config:
    """``cfg`` as pretraining writes it to config.yaml: with ``model.init``'s architecture (torch is imported
    only then, so a refusal without it stays fast)."""
    if not cfg.model.init:
        return cfg
    from geossl.dino.init import with_init_architecture

    return with_init_architecture(cfg)


def refuse_changed_settings(run_dir: Path, cfg: Config, settings: dict[str, dict[str, Any]]) -> None:
    """One line, before any work, when a finished step of ``run_dir`` would be reused although this command
    asks for other settings: reusing it would silently ignore them, redoing it would replace a finished
    result, so neither happens; the user picks a new --run-dir. Steps finished before their settings were
    recorded (an older geossl) are reused with a note saying so."""
    pre_dir = run_dir / "pretrain"
    summary = pre_dir / "summary.json"
    if not (summary.is_file() and read_json(summary).get("status") == "finished"):
        return  # nothing finished to reuse: an interrupted pretraining resumes with this config
    found = pretrain_differences(pre_dir, cfg) if (pre_dir / "config.yaml").is_file() else []
    notes = []
    for step in ("probe", "finetune"):
        recorded = run_dir / step / STEP_SETTINGS
        if not finished_step(run_dir / step, pre_dir / "encoder", step):
            continue  # not finished on this encoder: it will be run, with these settings
        if recorded.is_file():
            found += [d for d in _differences(read_json(recorded), settings[step]) if d not in found]
        else:
            notes.append(f"geossl demo: note: {run_dir / step} was made by an older geossl that did not record "
                         f"its options ({', '.join(settings[step])}); it is reused as it is")
    if not found:
        for note in notes:
            print(note, file=sys.stderr)
        return
    more = f"; and {len(found) - SHOWN_DIFFERENCES} more" if len(found) > SHOWN_DIFFERENCES else ""
    raise ValueError(f"{run_dir}: holds a finished demo made with other settings "
                     f"({'; '.join(found[:SHOWN_DIFFERENCES])}{more}); reusing it would ignore them: "
                     "give a new --run-dir (nothing was changed)")


def demo_summary(pre: dict[str, Any], metrics: dict[str, Any], scene: Any, wall_s: float,
                 tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures of the one-line summary: the encoder and every baseline, side by side, the gain, and the
    fine-tuned classifier."""
    rows = {"encoder": metrics, **metrics["baselines"]}
    return {
        "finetuned_top1": tuned["top1"] if tuned else None,
        "finetune_seconds": tuned.get("train_seconds") if tuned else None,
        "pretrain": {k: pre.get(k) for k in ("steps", "epochs", "wall_time_s", "final_loss", "knn_top1")},
        "test_count": metrics["counts"]["test"]["total"],
        "feature_recipe": metrics["feature_recipe"],
        "top1": {name: {"linear": m["linear_top1"], "knn": m["knn_top1"]} for name, m in rows.items()},
        "gain_over_best_baseline": metrics["gain_over_best_baseline"],
        "scene_map": str(scene.class_map),
        "scene_preview": str(scene.preview) if scene.preview else None,
        "wall_time_s": round(wall_s, 1),
    }


def summary_text(summary: dict[str, Any]) -> str:
    """``geossl demo: pretrained 420 s -> EuroSAT test linear / k-NN top-1: encoder .. | band statistics ..``."""
    cells = " | ".join(f"{name.replace('-', ' ')} {v['linear']:.1%} / {v['knn']:.1%}" for name, v in summary["top1"].items())
    gain = summary["gain_over_best_baseline"]
    return (f"geossl demo: pretrained {summary['pretrain']['wall_time_s']:.0f} s -> EuroSAT test linear / k-NN top-1 "
            f"({summary['test_count']} patches): {cells}; encoder vs best baseline {gain['linear_points']:+.1f} points "
            f"linear ({gain['linear_baseline'].replace('-', ' ')}), {gain['knn_points']:+.1f} k-NN "
            f"({gain['knn_baseline'].replace('-', ' ')}){_tuned_text(summary)}; map ({summary.get('map_classifier', 'fine-tuned model')}): "
            f"{summary['scene_map']}; preview: {summary['scene_preview']}")


def _tuned_text(summary: dict[str, Any]) -> str:
    if summary.get("finetuned_top1") is None:
        return ""
    return (f"; fine-tuned end to end ({summary['finetune_seconds']:.0f} s): test top-1 {summary['finetuned_top1']:.1%}, "
            f"{100 * (summary['finetuned_top1'] - summary['top1']['encoder']['linear']):+.1f} points over the frozen "
            "linear head")
