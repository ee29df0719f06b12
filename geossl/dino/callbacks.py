"""Callbacks that make pretraining observable and safe to interrupt."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from geossl.config import EvalConfig
from geossl.dino.checkpoint import reopen_stopped_epoch
from geossl.settings import resolve_data_path

log = logging.getLogger("geossl")


def metric_line(**values: float | int) -> str:
    """``geossl-metric key=value ...``: plain lines SageMaker metric regexes (and humans) can scrape."""
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value:.6f}" if isinstance(value, float) else f"{key}={value}")
    return "geossl-metric " + " ".join(parts)


class HistoryCallback(L.Callback):
    """A callback whose ``history`` (a list of plain dicts) travels in checkpoints, so a resumed run's
    curves and summary show the whole run, not only the part since the resume."""

    history: list[dict[str, float]]

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class MetricPrinter(HistoryCallback):
    """Every ``every`` steps on rank 0: loss, lr, throughput and the cheap health signals (KL, teacher and
    marginal entropies, :mod:`geossl.dino.health`) as one unbuffered line; warns on collapse.

    Also the place where the (device-side) non-finite counter is read, so the hot path never syncs.

    Throughput (``img_per_s``) is measured from the end of this process's first step: before that there is
    no earlier time to measure from, and that step pays one-off costs (worker start-up, the first batches'
    reads, compilation) that are not the run's speed. A line with nothing measured yet (step 1 of a fresh
    run when every step is logged, or the first step after a resume that is logged) leaves the field out
    rather than printing 0.0, which SageMaker's metric scraping and the benches would read as a measurement.
    """

    def __init__(self, every: int, collapse_std: float = 1e-3) -> None:
        self.every = max(1, every)
        self.collapse_std = collapse_std
        self._last_time: float | None = None  # clock at the end of the last measured step of this process
        self._last_step = 0
        self.history: list[dict[str, float]] = []


    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        logged = step % self.every == 0 or step == 1
        if not logged and self._last_time is not None:
            return
        pl_module.check_finite()  # reads a device counter: the step's work is done when the clock is read
        now = time.perf_counter()
        images: float | None = None
        if self._last_time is not None and step > self._last_step:
            steps = step - self._last_step
            images = steps * pl_module.cfg.data.batch_size * trainer.world_size / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        if not logged:  # the first step of this process: only the start of the clock
            return
        monitors = {k: float(v) for k, v in pl_module.monitors.items()}
        if not trainer.is_global_zero or not monitors:
            return
        speed = {} if images is None else {"img_per_s": images}
        record = {"step": step, "epoch": step / pl_module.steps_per_epoch, **monitors,
                  "lr": pl_module.schedule_value("lr", step - 1), **speed}
        self.history.append(record)
        health = {k: monitors[k] for k in ("kl", "teacher_entropy", "marginal_entropy") if k in monitors}
        print(metric_line(step=step, epoch=trainer.current_epoch, loss=monitors["loss"], lr=record["lr"],
                          **{k: round(v, 1) for k, v in speed.items()}, **health), flush=True)
        if monitors.get("teacher_std", 1.0) < self.collapse_std:
            msg = (f"COLLAPSE WARNING at step {step}: std of normalised teacher embeddings is "
                   f"{monitors['teacher_std']:.2e} (near 0 = every tile maps to the same point). "
                   "Try a lower teacher temperature, more augmentation, or a lower learning rate.")
            print(msg, file=sys.stderr, flush=True)
            log.warning(msg)


class SigtermCheckpoint(L.Callback):
    """On SIGTERM (SageMaker stop, spot interruption, a scheduler) or SIGINT (Ctrl-C) save ``last.ckpt`` at
    the next batch boundary and stop. SageMaker allows 120 s; one step plus one save fits easily.
    A second Ctrl-C aborts at once (Python's default), for a user who does not want to wait.
    The DataLoader workers ignore both signals (:func:`geossl.dino.data.ignore_stop_signals`): a stop sent to
    the whole process group (``timeout``, Slurm, systemd) must not kill the workers this one step needs."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.saved_at: int | None = None
        self.sigint = False
        self._previous_handler: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C interrupts at once
        self.sigint = True
        print("geossl: Ctrl-C: saving last.ckpt at the end of this step (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._restore_handler()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        received = bool(getattr(trainer, "received_sigterm", False)) or self.sigint
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received and self.saved_at is None:
            pl_module.check_finite()
            trainer.save_checkpoint(self.checkpoint_dir / "last.ckpt", weights_only=False)
            self.saved_at = trainer.global_step
            if trainer.is_global_zero:
                signal_name = "SIGINT" if self.sigint else "SIGTERM"
                print(f"geossl: {signal_name} received; checkpoint saved at step {trainer.global_step}, stopping",
                      flush=True)
            trainer.should_stop = True
            if self.sigint:
                # Leave the loop exactly as Lightning does on SIGTERM (it raises after this step's metrics are
                # logged, so metrics.csv keeps the row of the step saved): letting the epoch finish would run
                # on_train_end and overwrite last.ckpt with an "epoch complete" loop state.
                # (Lightning's own SIGTERM handler sets this flag; a Lightning without it: leave at once)
                connector = getattr(trainer, "_signal_connector", None)
                if connector is None or not hasattr(connector, "received_sigterm"):
                    raise SIGTERMException()
                connector.received_sigterm = True

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        """A SIGTERM that lands during epoch-end work (k-NN, logging) makes Lightning raise at the epoch
        boundary before any batch hook runs again: save there, the state is consistent."""
        self._restore_handler()
        if isinstance(exception, SIGTERMException) and self.saved_at is None:
            pl_module.check_finite()
            trainer.save_checkpoint(self.checkpoint_dir / "last.ckpt", weights_only=False)
            self.saved_at = trainer.global_step
            if trainer.is_global_zero:
                print(f"geossl: SIGTERM received; checkpoint saved at step {trainer.global_step}, stopping", flush=True)


class ResumeMidEpoch(L.Callback):
    """Resume a checkpoint that ended part-way into an epoch (``trainer.max_steps``, ``max_minutes``) inside
    that epoch, as the data sampler does, instead of at the next one: :func:`reopen_stopped_epoch`.

    A callback's ``on_load_checkpoint`` runs after the module's ``setup`` (which knows the steps per epoch)
    and before Lightning restores its loops from the same checkpoint dict, so the fix reaches the loops."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if reopen_stopped_epoch(checkpoint, pl_module.steps_per_epoch) and trainer.is_global_zero:
            step = int(checkpoint["global_step"])
            print(f"geossl: the checkpoint ended part-way into epoch {step // pl_module.steps_per_epoch} "
                  f"(step {step}); resuming inside that epoch", file=sys.stderr, flush=True)


class _ChecksFinite(Protocol):
    """What :class:`FiniteModelCheckpoint` needs of the module (DINOModule and FineTuneModule have it)."""

    def check_finite(self) -> None: ...


class FiniteModelCheckpoint(ModelCheckpoint):
    """Lightning's periodic checkpoints, refusing to write weights after a non-finite loss, and keeping
    the newest ``keep_last`` plus every ``keep_every``-th (``trainer.keep_last``/``keep_every``; 0 = all)."""

    def __init__(self, *args: Any, keep_last: int = 0, keep_every: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_last, self.keep_every = keep_last, keep_every

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        cast(_ChecksFinite, trainer.lightning_module).check_finite()
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and self.dirpath:
            from geossl.dino.run_folder import prune_checkpoints

            prune_checkpoints(Path(self.dirpath), self.keep_last, self.keep_every,
                              self._every_n_train_steps or 0)


class FinalCheckpoint(L.Callback):
    """Save ``last.ckpt`` when training ends normally, so a finished run is recognisable and resumable."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.check_finite()
        trainer.save_checkpoint(self.checkpoint_dir / "last.ckpt", weights_only=False)


class KNNMonitor(HistoryCallback):
    """Online k-NN top-1 of the teacher's CLS features on a small labelled set, every few epochs."""

    def __init__(self, cfg: EvalConfig, bands: list[int] | None, seed: int, data_root: str | None = None) -> None:
        from geossl.data.patches import PatchDataset

        assert cfg.knn_data is not None
        source = resolve_data_path(cfg.knn_data, data_root)  # the same data root as data.paths
        self.cfg = cfg
        self.train_set = PatchDataset(source, split=cfg.knn_train_split, bands=bands, limit=cfg.knn_max_train, seed=seed)
        self.val_set = PatchDataset(source, split=cfg.knn_val_split, bands=bands, limit=cfg.knn_max_val, seed=seed,
                                    classes=self.train_set.classes)
        self.history: list[dict[str, float]] = []


    def run(self, pl_module: Any) -> float:
        from geossl.evaluation.features import extract_features
        from geossl.evaluation.knn import knn_top1

        encoder = pl_module.teacher_encoder()
        train_x, val_x = (extract_features(encoder, data, "cls", device=pl_module.device, desc="online k-NN")
                          for data in (self.train_set, self.val_set))
        return knn_top1(train_x, torch.as_tensor(self.train_set.labels), val_x, torch.as_tensor(self.val_set.labels),
                        len(self.train_set.classes), k=self.cfg.knn_k, temperature=self.cfg.knn_temperature)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % max(1, self.cfg.every_epochs) != 0 and not trainer.should_stop:
            return
        accuracy = self.run(pl_module)
        pl_module.log("eval/knn_top1", accuracy, on_epoch=True, rank_zero_only=True)
        if trainer.is_global_zero:
            self.history.append({"epoch": epoch, "step": trainer.global_step, "knn_top1": accuracy})
            print(metric_line(epoch=epoch, knn_top1=accuracy), flush=True)
