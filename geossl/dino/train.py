"""``pretrain(cfg, run_dir)``: build data, module and Lightning Trainer; resume; export the encoder.

Run folder layout::

    RUN/config.yaml  stats.json  summary.json  curves.png  health.png (label-free signals, geossl/dino/health.py)
    RUN/checkpoints/last.ckpt, step-*.ckpt      (atomic; newest complete one is the resume point)
    RUN/logs/tensorboard/..., RUN/logs/csv/...
    RUN/encoder/model.safetensors + geossl.json (the teacher backbone, exported at the end)
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from geossl.config import Config, config_from_dict
from geossl.dino.callbacks import (
    FinalCheckpoint,
    FiniteModelCheckpoint,
    KNNMonitor,
    MetricPrinter,
    ResumeMidEpoch,
    SigtermCheckpoint,
)
from geossl.dino.checkpoint import AtomicCheckpointIO, find_resume_checkpoint, load_checkpoint_file
from geossl.dino.data import (
    PretrainDataModule,
    bad_file_monitor,
    build_pretrain_dataset,
    dataset_band_count,
    dataset_dtype,
    resolve_stats,
    value_range,
)
from geossl.dino.health import HealthMonitor
from geossl.dino.init import initialize_from_encoder, with_init_architecture
from geossl.dino.module import DINOModule
from geossl.dino.run_folder import (
    AppendingCSVLogger,
    RunLock,
    check_writable,
    claim_outside_folders,
    clean_partial_files,
    is_launching_process,
)
from geossl.io import atomic_write_json, atomic_write_text, describe_os_error, read_json, write_error_in
from geossl.models.encoder import export_encoder

if TYPE_CHECKING:
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

log = logging.getLogger("geossl")


def _accelerator(cfg: Config) -> str:
    has_gpu = torch.cuda.is_available()
    if cfg.trainer.require_gpu and not has_gpu:
        raise RuntimeError("this config demands a GPU (trainer.require_gpu: true) but torch sees none")
    if cfg.trainer.accelerator in ("gpu", "cuda") and not has_gpu:
        raise RuntimeError("trainer.accelerator is 'gpu' but torch sees no GPU (set trainer.accelerator=cpu)")
    return cfg.trainer.accelerator


def _precision(cfg: Config, accelerator: str) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


NEW_RUN_DIR = "a new --run-dir"  # how a ``geossl pretrain`` user starts afresh; other callers name their own


def check_resume_compatible(ckpt: Path, module_args: dict[str, Any], new_run: str = NEW_RUN_DIR) -> None:
    """A checkpoint of another architecture or band count is refused with the difference named (and
    ``new_run``: how the caller's user starts a new run, an option their command has)."""
    hparams = load_checkpoint_file(ckpt).get("hyper_parameters", {})
    # Defaults filled in first: a key added to geossl since the checkpoint was written is not a difference.
    old_cfg = config_from_dict(hparams.get("config", {}), str(ckpt)).to_dict()
    new_cfg = module_args["config"]
    for section in ("model", "head"):
        if old_cfg.get(section) != new_cfg[section]:
            raise ValueError(f"{ckpt}: checkpoint was trained with {section}={old_cfg.get(section)}, "
                             f"the config asks for {section}={new_cfg[section]}; use {new_run}")
    if hparams.get("in_chans") != module_args["in_chans"]:
        raise ValueError(f"{ckpt}: checkpoint has {hparams.get('in_chans')} input bands, the data has "
                         f"{module_args['in_chans']}")


def _resume_point(run_dir: Path, checkpoint_dir: Path, resume: str, new_run: str = NEW_RUN_DIR) -> Path | None:
    """The checkpoint to resume from (None: a fresh start), or a refusal whose hint fits the folder.

    A finished run is refused whatever ``resume`` says (its encoder and summary are never replaced), and
    its hint never offers ``--resume auto``: resuming cannot continue a finished run, training on from
    its weights in a new run (``model.init``) can. Only an unfinished run is offered ``--resume auto``.
    """
    summary_path = run_dir / "summary.json"
    if summary_path.exists() and read_json(summary_path).get("status") == "finished":
        raise FileExistsError(f"{run_dir}: already holds a finished run (summary.json), which cannot be resumed; "
                              f"use {new_run} (model.init={run_dir} trains on from its weights; "
                              "nothing was overwritten)")
    if resume == "never":
        if find_resume_checkpoint(checkpoint_dir):
            raise FileExistsError(f"{run_dir}: already holds an unfinished run (checkpoints); "
                                  f"use --resume auto to continue it, or {new_run}")
        return None
    if resume == "auto":
        return find_resume_checkpoint(checkpoint_dir)
    ckpt = Path(resume)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint to resume from not found")
    return ckpt


@dataclass
class RunPaths:
    run_dir: Path
    checkpoint_dir: Path
    export_dir: Path
    new_run: str = NEW_RUN_DIR  # named in refusals: how this caller's user starts a new run


def pretrain(
    cfg: Config,
    run_dir: str | os.PathLike[str],
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    resume: str = "auto",
    callbacks: list[L.Callback] | None = None,
    new_run: str = NEW_RUN_DIR,
) -> dict[str, Any]:
    """Pretrain a ViT with DINO as ``cfg`` says; returns a summary (``status`` finished | interrupted).

    ``callbacks`` are added to the Trainer's (e.g. your own logging); the run folder is locked for the
    run, and refused or resumed, never silently overwritten (``resume``: auto | never | a checkpoint path).
    ``new_run`` is how the caller's user starts a new run ("a new --run-dir" for ``geossl pretrain``, a new
    run_name for a SageMaker job), named in a refusal so its hint is an option the user's command has.
    """
    started = time.perf_counter()
    run = Path(run_dir)
    paths = RunPaths(run, Path(checkpoint_dir) if checkpoint_dir else run / "checkpoints",
                     Path(export_dir) if export_dir else run / "encoder", new_run)
    locks = [RunLock(run)] if is_launching_process() else []
    try:
        for lock in locks:
            lock.acquire()
        if locks:
            locks += claim_outside_folders(run, paths.checkpoint_dir, paths.export_dir,
                                           None if new_run == NEW_RUN_DIR else new_run)
        return _pretrain_locked(with_init_architecture(cfg), paths, resume, list(callbacks or []), started)
    finally:
        for lock in reversed(locks):
            lock.release()


def _pretrain_locked(cfg: Config, paths: RunPaths, resume: str, user_callbacks: list[L.Callback],
                     started: float) -> dict[str, Any]:
    accelerator = _accelerator(cfg)
    ckpt = _resume_point(paths.run_dir, paths.checkpoint_dir, resume, paths.new_run)
    if is_launching_process():
        check_writable(paths.run_dir, paths.checkpoint_dir)
        check_writable(paths.export_dir, create=False)  # a read-only export folder, found now, not after training
        clean_partial_files(paths.run_dir, paths.checkpoint_dir, paths.export_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    dataset = build_pretrain_dataset(cfg)
    in_chans = dataset_band_count(dataset)
    if cfg.data.bands and len(cfg.data.bands) != in_chans:
        raise ValueError(f"data.bands selects {len(cfg.data.bands)} bands but the data yields {in_chans}")
    dtype = dataset_dtype(dataset)
    stats = resolve_stats(cfg, in_chans)
    vrange = value_range(cfg, dtype)
    module_args: dict[str, Any] = {
        "config": cfg.to_dict(), "in_chans": in_chans, "band_names": list(stats.bands),
        "stats": stats.to_json(), "dataset_size": len(cast(Sized, dataset)),
        "value_range": list(vrange) if vrange else None,
    }
    if ckpt is not None:
        check_resume_compatible(ckpt, module_args, paths.new_run)
    module = DINOModule(**module_args)
    init_report = initialize_from_encoder(module.model, cfg, stats) if cfg.model.init and ckpt is None else None

    printer = MetricPrinter(cfg.trainer.log_every_steps)
    health = HealthMonitor(dataset, math.log(cfg.head.out_dim), cfg.trainer.checkpoint_every_steps, cfg.seed,
                           cfg.data.num_workers)
    knn = KNNMonitor(cfg.eval, cfg.data.bands, cfg.seed, cfg.data.root) if cfg.eval.knn_data else None
    sigterm = SigtermCheckpoint(paths.checkpoint_dir)
    bad_files = bad_file_monitor(cfg, dataset)  # skipped patch files: counted, reported, capped
    callbacks: list[L.Callback] = [
        # health before FinalCheckpoint: its last record (taken in on_train_end) is then in last.ckpt
        *([bad_files] if bad_files else []), printer, health, sigterm,
        FiniteModelCheckpoint(dirpath=paths.checkpoint_dir, filename="step-{step:08d}", save_top_k=-1,
                              save_last=False, every_n_train_steps=cfg.trainer.checkpoint_every_steps,
                              auto_insert_metric_name=False, keep_last=cfg.trainer.keep_last,
                              keep_every=cfg.trainer.keep_every),
        FinalCheckpoint(paths.checkpoint_dir), ResumeMidEpoch(),
        *([knn] if knn else []), *user_callbacks,
    ]
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=cfg.trainer.log_every_steps))
    resume_step = int(load_checkpoint_file(ckpt).get("global_step", 0)) if ckpt else None
    trainer = _build_trainer(cfg, accelerator, paths.run_dir, callbacks, resume_step)
    if trainer.is_global_zero:
        atomic_write_text(paths.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        stats.save(paths.run_dir / "stats.json")
    if cfg.trainer.compile:
        apply_compile(module)

    status = fit_resumable(trainer, module, PretrainDataModule(cfg, dataset, bad_files), ckpt, paths.checkpoint_dir)
    if sigterm.saved_at is not None:
        status = "interrupted"
    summary: dict[str, Any] = {
        "status": status,
        "steps": int(trainer.global_step),
        "epochs": round(trainer.global_step / module.steps_per_epoch, 3),
        "resumed_from": str(ckpt) if ckpt else None,
        "init": init_report,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "dataset": f"{len(cast(Sized, dataset))} samples, {in_chans} bands ({dtype})",
        "checkpoint_dir": str(paths.checkpoint_dir),
        "encoder_dir": None,
        "final_loss": printer.history[-1]["loss"] if printer.history else None,
        "knn_top1": knn.history[-1]["knn_top1"] if knn and knn.history else None,
        "skipped_files": bad_files.report() if bad_files else None,
        "health": health.summary(),
    }
    if trainer.is_global_zero:
        if bad_files:
            bad_files.print_report()
        if status == "finished":
            export_encoder(module.model.teacher.backbone, module.teacher_encoder().meta, paths.export_dir)
            summary["encoder_dir"] = str(paths.export_dir)
        from geossl.dino.plots import plot_curves, plot_health

        plot_curves(printer.history, knn.history if knn else [], paths.run_dir / "curves.png")
        plot_health(printer.history, health.history, health.log_k, summary["health"]["warnings"],
                    paths.run_dir / "health.png")
        atomic_write_json(paths.run_dir / "summary.json", summary)
    return summary


_LIGHTNING_NOISE = ("💡 Tip:", "Restoring states from", "Restored all states")


class _LightningNoiseFilter(logging.Filter):
    """Drops Lightning's advertisement and its resume lines (geossl prints its own, which says what was
    restored: :func:`geossl.dino.data.start_sampler_at_step`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Install the filter once on the logger behind Lightning's ``rank_zero_info`` (pretrain and finetune)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _LightningNoiseFilter) for f in log.filters):
        log.addFilter(_LightningNoiseFilter())


def _build_trainer(cfg: Config, accelerator: str, run_dir: Path, callbacks: list[L.Callback],
                   resume_step: int | None) -> L.Trainer:
    """The Lightning Trainer; ``trainer.kwargs`` passes any other Trainer argument through."""
    quiet_lightning()
    return L.Trainer(
        accelerator=accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        precision=cast("_PRECISION_INPUT", _precision(cfg, accelerator)),  # a config string Lightning checks
        max_epochs=cfg.optim.epochs,
        max_steps=cfg.trainer.max_steps or -1,
        # Lightning types the dict's values int; it builds timedelta(**max_time), which takes floats.
        max_time=(cast(dict[str, int], {"minutes": cfg.trainer.max_minutes}) if cfg.trainer.max_minutes
                  else None),
        callbacks=callbacks,
        logger=[TensorBoardLogger(run_dir / "logs", name="tensorboard", version=""),
                AppendingCSVLogger(run_dir / "logs", name="csv", version="", resume_step=resume_step)],
        log_every_n_steps=cfg.trainer.log_every_steps,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # ResumableSampler shards by rank and resumes mid-epoch
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        **cfg.trainer.kwargs,
    )


def fit_resumable(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule,
                  ckpt: Path | None, checkpoint_dir: Path) -> str:
    """Run ``trainer.fit``; "finished" or "interrupted" (SIGTERM/SIGINT). A failed write (full disk,
    read-only folder) is one line naming the folder; the newest complete checkpoint stays the resume point.

    Lightning warnings that are not true of geossl runs are silenced: its loaders resume bitwise (the
    ResumableSampler), and frozen or teacher modules are in eval mode on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*is not resumable.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        # Lightning 2.6 calls a torch pytree API that torch 2.9 deprecates; nothing a user can act on
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)
        except SIGTERMException:
            return "interrupted"
        except OSError as exc:
            # A WriteError names the checkpoint and why (atomic_path), even when Lightning's clean-up then
            # failed on the same full disk; any other error, the folder.
            first = write_error_in(exc)
            what = (f"{first.filename}: {first.strerror}" if first is not None
                    else f"{exc.filename or checkpoint_dir}: write failed ({describe_os_error(exc)})")
            raise OSError((first or exc).errno, f"{what}; the newest complete checkpoint is kept for --resume") from None
    return "finished"


def apply_compile(module: DINOModule) -> None:
    """torch.compile both backbones in place (keeps state-dict keys, so compiled and eager runs share
    checkpoints); dynamic=False gives one graph per crop resolution, compiled once each."""
    module.model.student.backbone.compile(dynamic=False)
    module.model.teacher.backbone.compile(dynamic=False)
