"""Checkpoints that survive interruption: atomic writes, safe loading, and finding the newest complete one."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geossl.io import atomic_path

log = logging.getLogger(__name__)

# SageMaker marks files still being synced to S3 with this suffix; they are never complete checkpoints.
UPLOADING_SUFFIX = ".sagemaker-uploading"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, fsync, rename: a SIGTERM or crash mid-write never leaves a broken
    ``last.ckpt`` behind. Load with ``weights_only=True``: checkpoints hold tensors and plain types only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_path(path, suffix=".ckpt") as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint without unpickling arbitrary objects; errors name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


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
