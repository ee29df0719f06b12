"""``geossl probe`` end to end: split table -> cached features -> linear + k-NN heads -> reports + model.

Everything the command writes lands in ``out``: ``metrics.json``, ``confusion.csv``/``.png`` (test split,
linear head), ``splits.csv`` (the split used, for exact reruns), ``model/`` (a land-cover model for
``geossl classify``) and, with label budgets, ``label_efficiency.json``/``.png``. With ``--dense`` the model
also holds a per-patch head (:mod:`geossl.probe.dense`) and metrics.json a ``dense`` section. With
``--head attentive`` an attentive head on the last block's tokens (:mod:`geossl.probe.attentive`) is fitted
too and is the saved model's head; metrics.json keeps the linear / k-NN figures (and confusion.csv/.png
stay the linear head's) and adds an ``attentive`` section.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossl.choices import HEAD_TYPES, PROBE_DENSE_TOKENS
from geossl.devices import pick_device
from geossl.evaluation.knn import knn_predict
from geossl.io import atomic_write_json
from geossl.labels.options import LabelOptions
from geossl.models.encoder import META_FILE, Encoder, export_encoder, load_encoder, read_meta
from geossl.models.landcover import TOKENS_RECIPE, save_landcover_model
from geossl.probe.attentive import DEFAULT_EPOCHS as ATTENTIVE_EPOCHS
from geossl.probe.attentive import DEFAULT_LRS as ATTENTIVE_LRS
from geossl.probe.attentive import DEFAULT_WEIGHT_DECAY as ATTENTIVE_WEIGHT_DECAY
from geossl.probe.attentive import fit_attentive_head
from geossl.probe.baselines import BAND_STAT_NAMES, band_statistics_features, standardize
from geossl.probe.features import SplitTable, cached_features, check_recipe, load_split_table
from geossl.probe.linear import DEFAULT_WEIGHT_DECAYS, balanced_indices, fit_linear_probe, top1
from geossl.probe.metrics import confusion_matrix, per_class_report, write_confusion_csv
from geossl.probe.plots import plot_confusion, plot_label_efficiency

RANDOM_PREFIX = "random:"


@dataclass
class ProbeOptions:
    """Everything one probe run depends on (the CLI maps its flags onto this one-to-one)."""

    encoder: str  # an encoder folder, or "random:<folder>" for the same architecture untrained
    data: Path
    out: Path
    splits: Path | None = None
    features: str | None = None  # feature recipe; None = the encoder's default (cls_last4)
    cache_dir: Path | None = None  # None = out/cache
    labels_per_class: list[int | None] | None = None  # None entries mean "all"
    seeds: int = 3
    seed: int = 0
    k: int = 20
    temperature: float = 0.07
    weight_decays: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS))
    max_iter: int = 100
    batch_size: int = 256
    workers: int = 0
    device: str = "cpu"
    random_baseline: bool = True  # also probe the same architecture at random init (band statistics always)
    labels: LabelOptions | None = None  # labels as geodata over scenes: chips are cut into out/ (``data`` unused)
    dense: bool = False  # also fit a per-patch head on the patch tokens (geossl classify --dense)
    dense_tokens: int | None = PROBE_DENSE_TOKENS  # tokens per train/val patch for that fit (None = all): bounds memory
    head: str = "linear"  # the saved model's head: "linear" or "attentive" (see geossl.probe.attentive)
    attentive_epochs: int = ATTENTIVE_EPOCHS
    attentive_lrs: list[float] = field(default_factory=lambda: list(ATTENTIVE_LRS))  # swept, chosen on val
    attentive_weight_decay: float = ATTENTIVE_WEIGHT_DECAY  # AdamW, on the weight matrices


def resolve_encoder(spec: str, cache_dir: Path, seed: int) -> tuple[Encoder, Path, str]:
    """(encoder, folder holding its weights, "pretrained" | "random-init").

    A ``random:<dir>`` encoder is initialised under a fixed seed and exported into the cache, so its
    features are cacheable like any other and the saved land-cover model carries the exact weights.
    """
    src = Path(spec[len(RANDOM_PREFIX) :] if spec.startswith(RANDOM_PREFIX) else spec)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: encoder folder not found (expected model.safetensors + geossl.json)")
    if not spec.startswith(RANDOM_PREFIX):
        return load_encoder(spec), Path(spec), "pretrained"
    meta = read_meta(src)  # names the missing geossl.json
    tag = hashlib.sha256((src / META_FILE).read_bytes()).hexdigest()[:12]
    out_dir = cache_dir / f"random-init-{tag}-seed{seed}"
    if not (out_dir / META_FILE).is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = load_encoder(spec)
        meta.extra = {**meta.extra, "random_init": {"seed": seed, "architecture_from": str(src)}}
        export_encoder(encoder.backbone, meta, out_dir)
    return load_encoder(out_dir), out_dir, "random-init"


def cls_part(features: torch.Tensor, recipe: str, embed_dim: int) -> torch.Tensor:
    """The final CLS embedding inside a recipe's features: what the DINO k-NN protocol votes with."""
    if recipe == "cls":
        return features
    if recipe in ("cls_last4", "last4_avgpool_cls"):
        return features[:, -embed_dim:]  # the last block's CLS last
    return features[:, :embed_dim]  # cls_avgpool = [CLS, mean patch token]


@dataclass
class Features:
    name: str  # "pretrained" / "random-init" / "band-statistics"
    encoder_dir: Path | None  # None for the non-learned baseline
    all: torch.Tensor  # (N, D) in table order
    knn: torch.Tensor  # (N, embed_dim) CLS part
    cache: dict[str, Any]


def _features(encoder: Encoder, enc_dir: Path, name: str, table: SplitTable, recipe: str,
              opts: ProbeOptions, cache_dir: Path) -> Features:
    check_recipe(encoder, recipe)
    feats, cache = cached_features(encoder, enc_dir, table, recipe, cache_dir, opts.batch_size, opts.workers,
                                   opts.device, desc=f"{name} features")
    return Features(name, enc_dir, feats, cls_part(feats, recipe, encoder.meta.embed_dim), cache)


def _band_statistics(table: SplitTable, opts: ProbeOptions, cache_dir: Path) -> Features:
    """The non-learned baseline; its k-NN votes on z-scored statistics (cosine on raw ones is one band's scale)."""
    feats, cache = band_statistics_features(table, cache_dir, opts.batch_size, opts.workers)
    return Features("band-statistics", None, feats, standardize(feats, table.indices("train")), cache)


def baseline_features(kind: str, enc_dir: Path, table: SplitTable, recipe: str, opts: ProbeOptions,
                      cache_dir: Path) -> list[Features]:
    """Band statistics always; the encoder's architecture at random init too, unless it is the encoder probed."""
    out = [_band_statistics(table, opts, cache_dir)]
    if kind == "pretrained" and opts.random_baseline:
        rnd, rnd_dir, _ = resolve_encoder(RANDOM_PREFIX + str(enc_dir), cache_dir, opts.seed)
        out.append(_features(rnd, rnd_dir, "random-init", table, recipe, opts, cache_dir))
    return out


def _baseline_report(f: Features, res: dict[str, Any], recipe: str) -> dict[str, Any]:
    described = (f"{len(BAND_STAT_NAMES)} statistics per band ({', '.join(BAND_STAT_NAMES)}); k-NN on z-scores"
                 if f.encoder_dir is None else f"same architecture, random init ({recipe})")
    return {"linear_top1": res["linear_top1"], "knn_top1": res["knn_top1"], "knn_features_top1": res["knn_features_top1"],
            "linear_val_top1": res["linear"]["val_top1"], "weight_decay": res["linear"]["chosen"]["weight_decay"],
            "feature_dim": int(f.all.shape[1]), "features": described,
            "encoder_dir": str(f.encoder_dir) if f.encoder_dir else None}


def gain_over_baselines(linear: float, knn: float, baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Points above the strongest baseline of each probe (negative: the encoder lost to it)."""
    best_lin = max(baselines, key=lambda k: baselines[k]["linear_top1"])
    best_knn = max(baselines, key=lambda k: baselines[k]["knn_top1"])
    return {"linear_points": round(100 * (linear - baselines[best_lin]["linear_top1"]), 2), "linear_baseline": best_lin,
            "knn_points": round(100 * (knn - baselines[best_knn]["knn_top1"]), 2), "knn_baseline": best_knn}


def _fit_eval(f: Features, table: SplitTable, train_idx: np.ndarray, opts: ProbeOptions) -> dict[str, Any]:
    """Linear sweep (chosen on val) and k-NN, both trained on ``train_idx`` and scored on test."""
    dev = opts.device
    k_cls = len(table.classes)
    y = torch.from_numpy(table.labels)
    val_idx, test_idx = table.indices("val"), table.indices("test")
    t0 = time.perf_counter()
    head, info = fit_linear_probe(f.all[train_idx].to(dev), y[train_idx], f.all[val_idx].to(dev), y[val_idx],
                                  k_cls, opts.weight_decays, opts.max_iter)
    with torch.no_grad():
        test_logits = head(f.all[test_idx])
    t1 = time.perf_counter()
    knn_scores = knn_predict(f.knn[train_idx].to(dev), y[train_idx], f.knn[test_idx].to(dev), k_cls,
                             k=opts.k, temperature=opts.temperature).cpu()
    # The same vote on the whole feature vector the linear head sees (e.g. last4_avgpool_cls): DINO's k-NN
    # protocol uses the final CLS, but a user who keeps the probe's features wants their neighbours too.
    knn_all = knn_scores if f.all.shape[1] == f.knn.shape[1] else knn_predict(
        f.all[train_idx].to(dev), y[train_idx], f.all[test_idx].to(dev), k_cls, k=opts.k,
        temperature=opts.temperature).cpu()
    return {"head": head, "linear": info, "test_logits": test_logits, "knn_scores": knn_scores,
            "linear_top1": top1(test_logits, y[test_idx]), "knn_top1": top1(knn_scores, y[test_idx]),
            "knn_features_top1": top1(knn_all, y[test_idx]),
            "linear_seconds": t1 - t0, "knn_seconds": time.perf_counter() - t1}


def label_efficiency(feats: list[Features], table: SplitTable, opts: ProbeOptions) -> dict[str, Any]:
    """Test top-1 of heads trained on n labelled examples per class (several seeds), per encoder."""
    train_idx = table.indices("train")
    train_counts = np.bincount(table.labels[train_idx], minlength=len(table.classes))
    budgets: list[int | None] = []
    skipped: dict[str, str] = {}
    for n in opts.labels_per_class or []:
        if n is not None and n > train_counts.min():
            short = table.classes[int(train_counts.argmin())]
            skipped[str(n)] = f"class {short!r} has only {int(train_counts.min())} train examples"
            print(f"geossl probe: skipping --labels-per-class {n}: {skipped[str(n)]}", file=sys.stderr)
        elif n not in budgets:
            budgets.append(n)
    if not budgets:
        raise ValueError(f"--labels-per-class: no usable budget ({skipped})")
    curves: dict[str, Any] = {}
    for f in feats:
        curve: dict[str, Any] = {"linear": {"runs": []}, "knn": {"runs": []}, "weight_decay": []}
        for n in budgets:
            seeds = [opts.seed] if n is None else [opts.seed + s for s in range(opts.seeds)]
            lin, knn, wds = [], [], []
            for s in seeds:
                idx = train_idx[balanced_indices(table.labels[train_idx], n, s)]
                r = _fit_eval(f, table, idx, opts)
                lin.append(r["linear_top1"])
                knn.append(r["knn_top1"])
                wds.append(r["linear"]["chosen"]["weight_decay"])
            curve["linear"]["runs"].append(lin)
            curve["knn"]["runs"].append(knn)
            curve["weight_decay"].append(wds)
        for probe in ("linear", "knn"):
            curve[probe]["mean"] = [float(np.mean(r)) for r in curve[probe]["runs"]]
            curve[probe]["std"] = [float(np.std(r)) for r in curve[probe]["runs"]]
        curves[f.name] = curve
    return {"budgets": ["all" if n is None else n for n in budgets], "seeds": opts.seeds,
            "all_per_class": float(train_counts.mean()), "num_classes": len(table.classes),
            "test_count": int(table.indices("test").size), "skipped": skipped, "curves": curves}


def run_probe(opts: ProbeOptions) -> dict[str, Any]:
    """Run the whole probe and write its outputs; returns the metrics written to ``metrics.json``."""
    t_start = time.perf_counter()
    if opts.head not in HEAD_TYPES:
        raise ValueError(f"--head: expected linear or attentive, got {opts.head!r}")
    for name in ("k", "max_iter", "seeds", "batch_size"):  # the CLI parses these as >= 1; the API checks here,
        if getattr(opts, name) < 1:  # before any feature is extracted (max_iter 0 saved an untrained head)
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(opts, name)}")
    opts.device = str(pick_device(opts.device))  # checked before the encoder is loaded or a feature extracted
    out = Path(opts.out)
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else out / "cache"
    labels_report = None
    if opts.labels is None:  # the table is checked before anything is written
        table = load_split_table(opts.data, opts.splits, seed=opts.seed)
    else:
        opts.labels.check()
    encoder, enc_dir, kind = resolve_encoder(opts.encoder, cache_dir, opts.seed)
    out.mkdir(parents=True, exist_ok=True)
    if opts.labels is not None:  # chips cut from the scenes at the encoder's tile size and GSD
        from geossl.labels.chips import build_label_chips

        chipset = build_label_chips(opts.labels, encoder.meta, out, seed=opts.seed)
        table, labels_report = load_split_table(chipset.table), chipset.report
    recipe = opts.features or encoder.meta.feature_recipe
    table.write_csv(out / "splits.csv")

    main = _features(encoder, enc_dir, kind, table, recipe, opts, cache_dir)
    res = _fit_eval(main, table, table.indices("train"), opts)
    y_test = table.labels[table.indices("test")]
    cm = confusion_matrix(y_test, res["test_logits"].argmax(1).numpy(), len(table.classes))
    report = per_class_report(cm, table.classes)
    write_confusion_csv(out / "confusion.csv", cm, table.classes)
    plot_confusion(out / "confusion.png", cm, table.classes,
                   f"{kind} linear probe, test top-1 {res['linear_top1']:.1%} (n={len(y_test)})")
    knn_cm = confusion_matrix(y_test, res["knn_scores"].argmax(1).numpy(), len(table.classes))

    wd = res["linear"]["chosen"]["weight_decay"]
    summary = {"linear_top1": res["linear_top1"], "knn_top1": res["knn_top1"], "macro_f1": report["macro_f1"],
               "weight_decay": wd, "encoder": opts.encoder, "encoder_kind": kind, "data": table.source}
    dense_head, dense = _dense(encoder, table, cache_dir, opts)
    att_head, attentive = _attentive(encoder, table, cache_dir, opts)
    if attentive is not None:
        att_cm = confusion_matrix(y_test, attentive.pop("test_logits").argmax(1).numpy(), len(table.classes))
        att_report = per_class_report(att_cm, table.classes)
        attentive = {**attentive, "macro_f1": att_report["macro_f1"], "per_class": att_report["per_class"]}
        summary = {**summary, "head": "attentive", "attentive_top1": attentive["test_top1"],
                   "attentive_lr": attentive["chosen"]["lr"], "attentive_epochs": attentive["epochs"]}
    model_dir = save_landcover_model(enc_dir, res["head"] if att_head is None else att_head, table.classes,
                                     recipe if att_head is None else TOKENS_RECIPE, out / "model", summary,
                                     dense_head, dense and {k: v for k, v in dense.items() if k != "linear"})

    t_base = time.perf_counter()
    base_feats = baseline_features(kind, enc_dir, table, recipe, opts, cache_dir)
    baselines = {f.name: _baseline_report(f, _fit_eval(f, table, table.indices("train"), opts), recipe)
                 for f in base_feats}
    t_base = time.perf_counter() - t_base

    efficiency, t_eff = None, time.perf_counter()
    if opts.labels_per_class:
        efficiency = label_efficiency([main, *base_feats], table, opts)
        atomic_write_json(out / "label_efficiency.json", efficiency)
        plot_label_efficiency(out / "label_efficiency.png", efficiency,
                              f"Label efficiency, {Path(str(table.source)).name} ({recipe} features)")
    else:  # a rerun into an earlier probe's folder (--overwrite): its curve would pass for this run's
        for name in ("label_efficiency.json", "label_efficiency.png"):
            (out / name).unlink(missing_ok=True)

    metrics: dict[str, Any] = {
        "linear_top1": res["linear_top1"],
        "knn_top1": res["knn_top1"],
        "knn_features_top1": res["knn_features_top1"],
        "linear_val_top1": res["linear"]["val_top1"],
        "macro_f1": report["macro_f1"],
        "split": "test",
        "encoder": opts.encoder,
        "encoder_kind": kind,
        "encoder_dir": str(enc_dir),
        "data": str(opts.data) if labels_report is None else labels_report["table"],
        "splits_source": table.source,
        "feature_recipe": recipe,
        "feature_dim": int(main.all.shape[1]),
        "classes": table.classes,
        "counts": table.counts(),
        "linear": {**res["linear"], "per_class": report["per_class"], "macro_precision": report["macro_precision"],
                   "macro_recall": report["macro_recall"]},
        "knn": {"k": opts.k, "k_used": min(opts.k, int(table.indices("train").size)),
                "temperature": opts.temperature, "features": "cls (final block, L2-normalised, cosine)",
                "features_top1": res["knn_features_top1"], "features_note": f"knn_features_top1: the same vote on "
                f"the {recipe} features the linear head sees",
                "per_class": per_class_report(knn_cm, table.classes)["per_class"]},
        "baselines": baselines,
        "gain_over_best_baseline": gain_over_baselines(res["linear_top1"], res["knn_top1"], baselines),
        "model_dir": str(model_dir),
        "cache": main.cache,
        "device": opts.device,
        "wall_seconds": {"features": round(main.cache["seconds"], 3), "linear": round(res["linear_seconds"], 3),
                         "knn": round(res["knn_seconds"], 3), "baselines": round(t_base, 3),
                         "label_efficiency": round(time.perf_counter() - t_eff, 3) if efficiency else 0.0,
                         "dense": dense["seconds"] if dense else 0.0,
                         "attentive": attentive["seconds"] if attentive else 0.0,
                         "total": round(time.perf_counter() - t_start, 3)},
    }
    if labels_report is not None:
        metrics["labels"] = labels_report
    if dense is not None:
        metrics["dense"] = dense
    metrics["head"] = opts.head  # the head of the saved model
    if attentive is not None:
        metrics["attentive"] = attentive
    if efficiency is not None:
        metrics["label_efficiency"] = {
            name: dict(zip(map(str, efficiency["budgets"]), c["linear"]["mean"], strict=True))
            for name, c in efficiency["curves"].items()
        }
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _dense(encoder: Encoder, table: SplitTable, cache_dir: Path,
           opts: ProbeOptions) -> tuple[Any, dict[str, Any] | None]:
    """The per-patch head and its metrics with ``--dense``, else (None, None): opt-in, it costs an encoder pass."""
    if not opts.dense:
        return None, None
    from geossl.probe.dense import fit_dense_head

    return fit_dense_head(encoder, table, cache_dir, tokens_per_patch=opts.dense_tokens, seed=opts.seed,
                          weight_decays=opts.weight_decays, max_iter=opts.max_iter, batch_size=opts.batch_size,
                          workers=opts.workers, device=opts.device)


def _attentive(encoder: Encoder, table: SplitTable, cache_dir: Path,
               opts: ProbeOptions) -> tuple[Any, dict[str, Any] | None]:
    """The attentive head and its metrics with ``--head attentive``, else (None, None): it costs an encoder pass."""
    if opts.head == "linear":
        return None, None
    if opts.head != "attentive":
        raise ValueError(f"--head: expected linear or attentive, got {opts.head!r}")
    return fit_attentive_head(encoder, table, cache_dir, epochs=opts.attentive_epochs, lrs=opts.attentive_lrs,
                              weight_decay=opts.attentive_weight_decay, batch_size=opts.batch_size,
                              workers=opts.workers, seed=opts.seed, device=opts.device)


def baselines_text(metrics: dict[str, Any]) -> str:
    """``band statistics 73.6 % / 61.0 %, random init ...; gain over the best baseline +x linear, +y k-NN``."""
    parts = [f"{name.replace('-', ' ')} {b['linear_top1']:.1%} / {b['knn_top1']:.1%}"
             for name, b in metrics["baselines"].items()]
    gain = metrics["gain_over_best_baseline"]
    return (f"baselines (linear / k-NN): {', '.join(parts)}; over the best baseline "
            f"{gain['linear_points']:+.1f} points linear, {gain['knn_points']:+.1f} k-NN")


def summary_line(metrics: dict[str, Any]) -> str:
    n = metrics["counts"]["test"]["total"]
    labels = metrics.get("labels")
    what = "patches" if labels is None else f"chips, {labels['split']['mode']} split"
    dense = metrics.get("dense")
    dense_text = (f"; dense head: token top-1 {dense['test_top1']:.1%} (wd {dense['weight_decay']:g}, "
                  f"{dense['test_tokens']} test tokens)" if dense else "")
    att = metrics.get("attentive")
    att_text = (f"; attentive head: top-1 {att['test_top1']:.1%} (lr {att['chosen']['lr']:g}, {att['epochs']} epochs, "
                f"{att['seconds']:.0f} s), the model's head" if att else "")
    return (
        f"probe ({metrics['encoder_kind']}, {metrics['feature_recipe']}): linear top-1 {metrics['linear_top1']:.1%} "
        f"(wd {metrics['linear']['chosen']['weight_decay']:g}), k-NN top-1 {metrics['knn_top1']:.1%} on {n} test "
        f"{what}; {baselines_text(metrics)}{dense_text}{att_text}; {metrics['wall_seconds']['total']:.0f} s; "
        f"model -> {metrics['model_dir']}"
    )
