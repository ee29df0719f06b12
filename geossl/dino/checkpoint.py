"""Checkpoints that survive interruption: atomic writes, safe loading, and finding the newest complete one."""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geossl.io import as_write_error, atomic_path

log = logging.getLogger(__name__)

# SageMaker marks files still being synced to S3 with this suffix; they are never complete checkpoints.
UPLOADING_SUFFIX = ".sagemaker-uploading"
# Where pickles name numpy's array/scalar reconstructors: numpy 2 writes numpy._core, numpy 1 numpy.core.
_NUMPY_CORE = ("numpy._core", "numpy.core")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, fsync, rename: a SIGTERM or crash mid-write never leaves a broken
    ``last.ckpt`` behind; a failed write (a full disk) is one :class:`~geossl.io.WriteError` naming the
    checkpoint. Load with ``weights_only=True``: checkpoints hold tensors and plain types only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_path(path, suffix=".ckpt") as tmp:
            try:
                torch.save(checkpoint, tmp)
            except RuntimeError as exc:  # torch's C++ writer: "[enforce fail at inline_container.cc:672] .
                # unexpected pos 576 vs 534", no path and no errno even for a full disk
                raise as_write_error(exc, Path(path), tmp) from exc

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path)


@functools.cache
def numpy_safe_globals() -> tuple[Any, ...]:
    """What unpickling plain numpy scalars, arrays and dtypes needs, for ``weights_only=True`` loading.

    Callbacks (ours or a user's, via ``pretrain(callbacks=...)``) may keep numpy values in their
    ``state_dict``; Lightning saves those in the checkpoint, and without these globals the newest
    checkpoint would be refused and resume would silently restart at step 0. Allowed: the array and
    scalar reconstructors (``_reconstruct`` can only build the allowed ``ndarray`` class, ``scalar`` only
    reads bytes into an allowed dtype), ``ndarray``, ``dtype`` and the dtype classes of the plain kinds
    (bool, ints, floats, complex, bytes, str, datetime). Not the object or void (structured) dtypes, no
    ndarray subclass, no numpy function: an object array would unpickle Python objects, the rest is code.
    Plus ``bytes``: torch pickles with protocol 2, which writes an empty array's (empty) data buffer as a
    call ``bytes()``; the type only ever builds an immutable byte string. The reconstructors are listed
    under both module paths, so checkpoints written with numpy 1 load too.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # a numpy without the numpy._core alias
        from numpy.core import multiarray  # type: ignore[no-redef]  # the same module, older path

    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"] if code not in "OV"}
    named = [(multiarray._reconstruct, f"{module}.multiarray._reconstruct") for module in _NUMPY_CORE]
    named += [(multiarray.scalar, f"{module}.multiarray.scalar") for module in _NUMPY_CORE]
    return (bytes, np.ndarray, np.dtype, *sorted(dtype_classes, key=lambda t: t.__name__), *named)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint without unpickling arbitrary objects (``weights_only=True``, plus plain
    numpy values: :func:`numpy_safe_globals`); any failure is a one-line ValueError naming the file."""
    # Only what is not allowed already: leaving the context removes what it added, and must not remove
    # what the caller allowed globally with torch.serialization.add_safe_globals.
    allowed = set(torch.serialization.get_safe_globals())
    extra = [g for g in numpy_safe_globals() if g not in allowed]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    """The gist of a load error on one line: torch's weights-only refusal is many lines of advice (to
    load with ``weights_only=False``, which we never do) around one line saying what was refused."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split(" Please use ", 1)[0]
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ANSI colour codes
    return " ".join(text.split())[:500]


def find_resume_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``directory`` that loads completely, or None.

    Skips temporary files, files SageMaker is still uploading, and truncated files (with a warning),
    so an interrupted upload or write never becomes the resume point.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = []
    for path in directory.glob("*.ckpt"):
        if path.name.startswith(".") or Path(str(path) + UPLOADING_SUFFIX).exists():
            continue
        candidates.append(path)
    best: tuple[int, float, Path] | None = None
    for path in candidates:
        try:
            step = int(load_checkpoint_file(path).get("global_step", -1))
        except ValueError as exc:
            log.warning("ignoring incomplete checkpoint: %s", exc)
            continue
        key = (step, path.stat().st_mtime, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def reopen_stopped_epoch(checkpoint: dict[str, Any], steps_per_epoch: int) -> bool:
    """Make a checkpoint written after a stop part-way into an epoch resume that epoch; True if it changed.

    geossl resumes from the global step: the :class:`~geossl.dino.data.ResumableSampler` replays exactly the
    samples of the epoch not yet seen, and the schedules are functions of the step. When training ends
    part-way into an epoch for a reason other than a stop signal (``trainer.max_steps``, ``max_minutes``),
    Lightning closes the epoch before ``last.ckpt`` is written at the end of training, so its loop state says
    the epoch is done. Resumed into a longer run (more epochs, no ``max_steps``), Lightning then started the
    next epoch while the rest of the stopped one was never trained: 7 of 8 steps, reported "finished".

    The epoch is reopened by rewriting the fit loop's progress to what a stop signal's ``last.ckpt`` holds at
    that same step (saved at the step's end, before Lightning counts the batch and the epoch as complete),
    the state that resumes bitwise. Only that exact shape is changed (the step is mid-epoch, the epoch and
    every batch in it are counted complete); any other checkpoint is left alone.
    """
    fit_loop = checkpoint.get("loops", {}).get("fit_loop")
    epoch, into = divmod(int(checkpoint.get("global_step", 0)), max(1, steps_per_epoch))
    if not isinstance(fit_loop, dict) or into == 0:
        return False
    epochs = fit_loop.get("epoch_progress")
    batches = fit_loop.get("epoch_loop.batch_progress")
    if not isinstance(epochs, dict) or not isinstance(batches, dict):
        return False
    counters = ("ready", "started", "processed", "completed")

    def closed(progress: dict[str, Any], count: int | None = None) -> bool:
        values = {progress.get(name) for name in counters}
        return len(values) == 1 and isinstance(progress.get("ready"), int) and count in (None, progress["ready"])

    if not (closed(epochs.get("total", {})) and closed(epochs.get("current", {}), epoch + 1)
            and closed(batches.get("total", {})) and closed(batches.get("current", {}), into)):
        return False
    for part in ("total", "current"):
        epochs[part]["processed"] -= 1
        epochs[part]["completed"] -= 1
        batches[part]["completed"] -= 1
    loop_state = fit_loop.get("epoch_loop.state_dict", {})
    if isinstance(loop_state.get("_batches_that_stepped"), int):
        loop_state["_batches_that_stepped"] -= 1
    checkpoint["epoch"] = epoch
    return True
