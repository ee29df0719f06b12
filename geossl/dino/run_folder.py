"""The pretraining run folder: one writer at a time, no leftovers, bounded checkpoints, logs kept across resumes.

- :class:`~geossl.io.RunLock` (re-exported here): an ``fcntl`` lock on ``RUN/.lock`` held for the whole run.
- :func:`clean_partial_files`: temporary ``.*.partial`` files an atomic write left behind when the
  process died mid-write; never a resume point, removed at start.
- :func:`check_writable`: a read-only folder or a full disk is one line naming the path, before any work.
- :func:`prune_checkpoints`: keep the newest N periodic checkpoints plus every K-th (``trainer.keep_last``,
  ``trainer.keep_every``); ``last.ckpt`` is never touched.
- :class:`AppendingCSVLogger`: Lightning's CSV writer deletes ``metrics.csv`` when a run resumes; this
  one keeps the earlier rows (dropping those logged after the checkpoint the run resumes from).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path
from typing import Any, cast

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from geossl.io import RunLock, describe_os_error

__all__ = ["RunLock", "check_writable", "clean_partial_files", "is_launching_process", "prune_checkpoints"]

log = logging.getLogger("geossl")
STEP_CHECKPOINT = re.compile(r"step-(\d+)\.ckpt$")


def is_launching_process() -> bool:
    """True in the process that owns the run folder: not a DDP worker spawned by Lightning or torchrun."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0"


def clean_partial_files(*folders: Path) -> int:
    """Remove the ``.NAME.*.partial`` files atomic writes leave when the process dies mid-write."""
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.glob(".*.partial"):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d partial file(s) left by an interrupted write", removed)
    return removed


def check_writable(*folders: Path, create: bool = True) -> None:
    """Create each folder and write a probe file in it; a read-only folder or a full disk names the path.

    ``create=False`` (the encoder's export folder: one that exists must hold a working encoder) leaves a
    missing folder missing and probes the nearest folder above it that exists, where it will be made.
    """
    for folder in folders:
        try:
            target = folder
            if create:
                folder.mkdir(parents=True, exist_ok=True)
            else:
                while not target.is_dir() and target.parent != target:
                    target = target.parent
            probe = target / f".write-test-{os.getpid()}.partial"
            probe.write_bytes(b"0" * 4096)
            probe.unlink()
        except OSError as exc:
            raise OSError(exc.errno, f"{folder}: cannot write here ({describe_os_error(exc)})") from None


def prune_checkpoints(directory: Path, keep_last: int, keep_every: int, every_steps: int) -> list[Path]:
    """Delete periodic ``step-*.ckpt`` beyond the newest ``keep_last``, sparing multiples of ``keep_every``
    checkpoints (``keep_every`` x ``every_steps`` steps); 0 keeps all. Returns what was deleted."""
    if keep_last <= 0:
        return []
    found = sorted((int(m.group(1)), p) for p in directory.glob("step-*.ckpt") if (m := STEP_CHECKPOINT.search(p.name)))
    deleted = []
    for step, path in found[:-keep_last]:
        if keep_every > 0 and every_steps > 0 and step % (keep_every * every_steps) == 0:
            continue
        path.unlink(missing_ok=True)
        deleted.append(path)
    return deleted


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (rows before ``resume_step``) instead of deleting it."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows, keys = list(reader), list(reader.fieldnames or [])
        if self._resume_step is None:  # a fresh start in a folder with old logs: they belong to no run
            path.unlink()
            return
        kept = [r for r in rows if r.get("step", "") == "" or int(float(r["step"])) < self._resume_step]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = sorted(keys)


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger whose ``metrics.csv`` survives resumes (see :class:`_AppendingWriter`)."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._resume_step)
        # Lightning types the slot as fabric's base writer; only pytorch ExperimentWriters are stored in it.
        return cast(ExperimentWriter, self._experiment)


OWNER_FILE = ".geossl-run"  # in a checkpoint folder outside its run folder: which run it belongs to


def claim_outside_folders(run_dir: Path, checkpoint_dir: Path, export_dir: Path,
                          new_run: str | None = None) -> list[RunLock]:
    """Locks and checks for ``--checkpoint-dir`` / ``--export-dir`` outside the run folder (SageMaker's
    layout); the caller releases the returned locks.

    The run folder's lock alone did not cover them: a new run whose ``--checkpoint-dir`` was another run's
    resumed that run (finished or not) and rewrote its ``last.ckpt``, and an ``--export-dir`` holding
    another run's encoder was overwritten at the end. A checkpoint folder records the run folder that owns
    it (``.geossl-run``, written on first use; the same run folder on a restarted spot job matches) and is
    refused to any other; an export folder that already holds an encoder is refused before any training.
    The refusals name ``--checkpoint-dir`` / ``--export-dir`` (``geossl pretrain``'s options), or ``new_run``
    when the caller's command has no such option (a SageMaker job: a new run_name).
    """
    run_dir = Path(run_dir).resolve()
    locks: list[RunLock] = []
    try:
        checkpoint_dir = Path(checkpoint_dir).resolve()
        if not checkpoint_dir.is_relative_to(run_dir):
            locks.append(RunLock(checkpoint_dir, "geossl pretrain", "--checkpoint-dir"))
            locks[-1].acquire()
            owner_file = checkpoint_dir / OWNER_FILE
            owner = owner_file.read_text().strip() if owner_file.is_file() else None
            if owner is None and any(STEP_CHECKPOINT.search(p.name) or p.name == "last.ckpt"
                                     for p in checkpoint_dir.iterdir()):
                owner = "an unknown run"  # checkpoints without an owner: not provably this run's
            if owner is not None and owner != str(run_dir):
                raise FileExistsError(f"--checkpoint-dir {checkpoint_dir}: holds the checkpoints of {owner}, not "
                                      f"of {run_dir}; use {new_run or 'another --checkpoint-dir'} "
                                      "(nothing was changed)")
            owner_file.write_text(f"{run_dir}\n")
        export_dir = Path(export_dir).resolve()
        held = [name for name in ("geossl.json", "model.safetensors") if (export_dir / name).exists()]
        if not export_dir.is_relative_to(run_dir) and held:
            raise FileExistsError(f"--export-dir {export_dir}: already holds an encoder ({held[0]}); use "
                                  f"{new_run or 'another --export-dir'} (nothing was overwritten)")
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks
