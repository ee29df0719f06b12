"""``geossl finetune`` end to end: labels -> split table -> Lightning fit (resumable) -> best-on-val model
folder -> test metrics beside the baselines.

The run folder ``OUT`` holds ``config.yaml``, ``splits.csv`` (the exact rows used), ``checkpoints/``
(periodic, ``last.ckpt`` on SIGTERM/SIGINT, ``best.ckpt`` on val top-1), ``model/`` (what ``classify``
and ``embed`` read), ``metrics.json``, ``confusion.csv``/``.png``, ``curves.png`` and, with baselines,
``baselines/``. It is locked while a run works in it; an unfinished run is resumed, a finished one is
never replaced without ``--overwrite``.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from geossl.data.patches import PatchDataset
from geossl.dino.bad_files import BadFileMonitor, SkippingDataset
from geossl.dino.callbacks import FinalCheckpoint, SigtermCheckpoint
from geossl.dino.checkpoint import AtomicCheckpointIO, find_resume_checkpoint, load_checkpoint_file
from geossl.dino.data import steps_per_epoch
from geossl.dino.run_folder import RunLock, check_writable, clean_partial_files
from geossl.dino.train import fit_resumable, quiet_lightning
from geossl.finetune.config import FinetuneConfig
from geossl.finetune.module import FinetuneDataModule, FinetuneModule, prepared
from geossl.finetune.network import ClassifierNet, apply_mode, export_model, probe_head, trainable_encoder
from geossl.finetune.report import evaluate_model, plot_finetune_curves, summary_line
from geossl.io import atomic_write_json, atomic_write_text
from geossl.labels.options import LabelOptions
from geossl.models.encoder import read_meta
from geossl.probe.features import SplitTable, load_split_table
from geossl.probe.linear import balanced_indices

if TYPE_CHECKING:
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

OUTPUTS = ("metrics.json", "model")  # a folder holding these holds a finished fine-tune


@dataclass
class FinetuneOptions:
    encoder: str  # an encoder (or land-cover model) folder, or random:<folder> for the same net untrained
    out: Path
    cfg: FinetuneConfig
    data: Path | None = None
    splits: Path | None = None
    labels: LabelOptions | None = None  # labels as geodata over scenes (chips cut into OUT/)
    labels_per_class: int | None = None  # train on this many per class (seeded); None = all
    baselines: str = "frozen"  # none | frozen (band statistics + the start's frozen linear probe) | all (+ random init)
    overwrite: bool = False
    callbacks: list[L.Callback] = field(default_factory=list)  # added to the Trainer's (your own logging, tests)


def run_finetune(opts: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune, export ``OUT/model``, score the test split and the baselines; returns metrics.json's content."""
    out = Path(opts.out)
    lock = RunLock(out, "geossl finetune", "--out")
    lock.acquire()
    try:
        return _run_locked(opts, out)
    finally:
        lock.release()


def _prepare_folder(out: Path, overwrite: bool) -> None:
    finished = [out / name for name in OUTPUTS if (out / name).exists()]
    if finished and not overwrite:
        raise FileExistsError(f"{finished[0]} already exists: {out} holds a finished fine-tune "
                              "(pass --overwrite to replace it, or choose another --out)")
    if finished:  # --overwrite: a fresh run, nothing of the old one resumed or mixed in
        for name in ("checkpoints", "model", "metrics.json", "baselines", "logs"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    check_writable(out)
    clean_partial_files(out, out / "checkpoints")


def build_table(opts: FinetuneOptions, out: Path) -> tuple[SplitTable, dict[str, Any] | None]:
    """The labelled rows (patches, or chips cut from scenes at the encoder's tile size), subset to
    ``labels_per_class`` training examples per class; written to ``OUT/splits.csv``."""
    report = None
    if opts.labels is not None:
        from geossl.labels.chips import build_label_chips

        encoder_dir = opts.encoder.removeprefix("random:")
        chipset = build_label_chips(opts.labels, read_meta(encoder_dir), out, seed=opts.cfg.seed)
        table, report = load_split_table(chipset.table), chipset.report
    else:
        if opts.data is None:
            raise ValueError("give --data (labelled patches) or --labels/--label-raster with --scenes")
        table = load_split_table(opts.data, opts.splits, seed=opts.cfg.seed)
    if opts.labels_per_class is not None:
        train = table.indices("train")
        keep = train[balanced_indices(table.labels[train], opts.labels_per_class, opts.cfg.seed)]
        rows = np.sort(np.concatenate([keep, table.indices("val"), table.indices("test")]))
        table = SplitTable([table.paths[i] for i in rows], table.labels[rows], table.splits[rows], table.classes,
                           table.source)
    table.write_csv(out / "splits.csv")
    return table, report


def _datasets(table_csv: Path, classes: list[str]) -> tuple[SkippingDataset, SkippingDataset, int, int]:
    train = PatchDataset(table_csv, split="train", classes=classes)
    val = PatchDataset(table_csv, split="val", classes=classes)
    size = train.patch_shape[0]
    return SkippingDataset(train, size), SkippingDataset(val, size), train.band_count, size


def _trainer(cfg: FinetuneConfig, out: Path, callbacks: list[L.Callback], total_steps: int, per_epoch: int) -> L.Trainer:
    accelerator = cfg.trainer.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = cast("_PRECISION_INPUT", cfg.trainer.precision if cfg.trainer.precision != "auto" else (
        "bf16-mixed" if accelerator in ("gpu", "cuda") else "32-true"))  # a config string Lightning checks
    quiet_lightning()
    return L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=total_steps, max_epochs=-1,
        val_check_interval=max(1, round(cfg.trainer.val_every_epochs * per_epoch)), check_val_every_n_epoch=None,
        callbacks=callbacks, logger=CSVLogger(out / "logs", name="csv", version=""),
        log_every_n_steps=cfg.trainer.log_every_steps, enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False, num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()], default_root_dir=out,
        gradient_clip_val=None, use_distributed_sampler=False,
    )


def _run_locked(opts: FinetuneOptions, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = opts.cfg
    out.mkdir(parents=True, exist_ok=True)
    _prepare_folder(out, opts.overwrite)
    ckpt_dir = out / "checkpoints"
    resume = find_resume_checkpoint(ckpt_dir)
    _check_resume(out, cfg, opts, resume)
    table, labels_report = build_table(opts, out) if resume is None else (load_split_table(out / "splits.csv"), None)
    atomic_write_text(out / "config.yaml", yaml.safe_dump({**cfg.to_dict(), "encoder": opts.encoder}, sort_keys=False))
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    train, val, bands, size = _datasets(out / "splits.csv", table.classes)
    encoder = trainable_encoder(opts.encoder, cfg.model.drop_path_rate, cfg.seed)
    if encoder.meta.in_chans != bands:
        raise ValueError(f"{opts.encoder}: the encoder reads {encoder.meta.in_chans} bands, the data has {bands}")
    m = cfg.model
    start_head = probe_head(opts.encoder, table.classes) if m.init_head else None
    features = start_head[1] if start_head else m.features
    net = ClassifierNet(encoder, len(table.classes), features, start_head[0] if start_head else None)
    apply_mode(net, m.mode, m.last_n, m.lora_rank, m.lora_alpha, m.lora_dropout)
    per_epoch = steps_per_epoch(len(train), cfg.optim.batch_size, 1)
    train_labels = torch.from_numpy(table.labels[table.indices("train")])
    module = FinetuneModule(net, cfg, len(table.classes), per_epoch)
    module.run_info = {"config": cfg.to_dict(), "encoder": opts.encoder, "labels_per_class": opts.labels_per_class}
    bad = BadFileMonitor(train, cfg.trainer.max_bad_fraction)
    sigterm = SigtermCheckpoint(ckpt_dir)
    best = ModelCheckpoint(dirpath=ckpt_dir / "best", filename="best", monitor="val_top1", mode="max", save_top_k=1,
                           save_last=False, auto_insert_metric_name=False)
    periodic = ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step:08d}", save_top_k=1, monitor="step",
                               mode="max", every_n_train_steps=cfg.trainer.checkpoint_every_steps,
                               auto_insert_metric_name=False)
    callbacks: list[L.Callback] = [bad, sigterm, best, periodic, FinalCheckpoint(ckpt_dir), *opts.callbacks]
    if cfg.trainer.early_stop_patience:
        callbacks.append(EarlyStopping("val_top1", mode="max", patience=cfg.trainer.early_stop_patience))
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.trainer.log_every_steps))
    trainer = _trainer(cfg, out, callbacks, module.total_steps, per_epoch)
    data = FinetuneDataModule(cfg, train, val, bad, train_labels)
    status = fit_resumable(trainer, module, data, resume, ckpt_dir)
    if sigterm.saved_at is not None or status == "interrupted":
        print(f"geossl finetune: interrupted at step {trainer.global_step}; run the same command again to resume",
              file=sys.stderr)
        return {"status": "interrupted", "step": int(trainer.global_step)}

    chosen = _choose_best(module, data, best)
    meta = encoder.meta
    meta.extra = {**meta.extra, "finetune": {"from": opts.encoder, "mode": m.mode, "steps": int(trainer.global_step),
                                             "val_top1": chosen["val_top1"]}}
    model_dir = export_model(net, meta, table.classes, out / "model",
                             {"kind": "fine-tuned", "mode": m.mode, "val_top1": chosen["val_top1"]})
    metrics = evaluate_model(model_dir, out, table)
    metrics.update({
        "encoder": opts.encoder, "mode": m.mode, "labels_per_class": opts.labels_per_class, "chosen": chosen,
        "head_start": "probe head (LP-FT)" if start_head else "new", "features": features,
        "steps": int(trainer.global_step), "epochs": round(trainer.global_step / per_epoch, 3),
        "resumed_from": str(resume) if resume else None, "val_curve": module.history,
        "skipped_files": bad.report(), "config": cfg.to_dict(), "counts": table.counts(),
        "train_seconds": round(time.perf_counter() - started, 1),
    })
    if labels_report:
        metrics["labels"] = labels_report
    plot_finetune_curves(out / "logs" / "csv" / "metrics.csv", module.history, out / "curves.png")
    metrics["baselines"] = _baselines(opts, out)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "metrics.json", metrics)
    print(summary_line(metrics), file=sys.stderr)
    return metrics


def _check_resume(out: Path, cfg: FinetuneConfig, opts: FinetuneOptions, resume: Path | None) -> None:
    """A checkpoint of another config or encoder is refused, naming what differs."""
    if resume is None:
        return
    old = load_checkpoint_file(resume).get("geossl_finetune", {})
    new = {"config": cfg.to_dict(), "encoder": opts.encoder, "labels_per_class": opts.labels_per_class}
    for key, value in new.items():
        if key in old and old[key] != value:
            raise ValueError(f"{resume}: checkpoint was made with {key}={old[key]}, this run asks for {value}; "
                             "use the same settings to resume, or --overwrite / another --out to start afresh")


@torch.no_grad()
def val_top1(net: ClassifierNet, loader: Any) -> float:
    net.eval()
    correct = total = 0
    for batch in loader:
        batch.pop("skipped", None)
        correct += int((net(prepared(batch, net)).argmax(-1) == batch["label"]).sum())
        total += int(batch["label"].numel())
    net.train()
    return correct / max(1, total)


def _choose_best(module: FinetuneModule, data: FinetuneDataModule, best: ModelCheckpoint) -> dict[str, Any]:
    """The final weights, or the best-on-val checkpoint's when it scored higher (ties: the final ones)."""
    final = val_top1(module.net, data.val_dataloader())
    score = best.best_model_score
    path = best.best_model_path
    # the logged score went through float32: a tie with the final weights must not look like a win
    if score is not None and path and Path(path).is_file() and float(score) > final + 1e-6:
        state = load_checkpoint_file(Path(path))["state_dict"]
        module.load_state_dict(state, strict=True)
        return {"which": "best-on-val", "val_top1": float(score), "final_val_top1": final, "checkpoint": path}
    return {"which": "final", "val_top1": final, "final_val_top1": final}


def _baselines(opts: FinetuneOptions, out: Path) -> dict[str, Any]:
    """Band statistics and the starting encoder's frozen linear probe on the same rows; with ``all``, the same
    architecture fine-tuned from random init on the same budget."""
    if opts.baselines == "none":
        return {}
    from geossl.probe.run import ProbeOptions, run_probe

    start = opts.encoder.removeprefix("random:")
    probe = run_probe(ProbeOptions(encoder=opts.encoder, data=out / "splits.csv", out=out / "baselines" / "frozen",
                                   random_baseline=False, workers=opts.cfg.trainer.num_workers))
    result: dict[str, Any] = {
        "frozen-linear": {"top1": probe["linear_top1"], "encoder": opts.encoder, "features": probe["feature_recipe"]},
        "band-statistics": {"top1": probe["baselines"]["band-statistics"]["linear_top1"]},
    }
    if opts.baselines == "all" and not opts.encoder.startswith("random:"):
        rnd = run_finetune(FinetuneOptions(
            encoder=f"random:{start}", out=out / "baselines" / "random-init", cfg=opts.cfg,
            data=out / "splits.csv", baselines="none", overwrite=opts.overwrite))
        result["random-init-finetune"] = {"top1": rnd["top1"], "encoder": f"random:{start}"}
    return result
