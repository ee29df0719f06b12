"""Tiny DINO configs, synthetic patch folders (clean or salted with bad files) and a free local port, shared by
the data, DINO and fine-tuning tests (kept small for 2 CPU cores)."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import lightning as L
import numpy as np
from PIL import Image

from geossl.config import Config, load_config

TINY = [
    "model.arch=vit_tiny_patch16_224", "model.patch_size=8", "model.extra={depth: 2, embed_dim: 48, num_heads: 3}",
    "model.drop_path_rate=0.1", "augment.global_size=32", "augment.local_size=16", "augment.n_local=2",
    "head.out_dim=64", "head.hidden_dim=32", "head.bottleneck_dim=16", "data.tile_size=32",
    "data.batch_size=8", "data.num_workers=0", "data.split=null", "optim.epochs=2", "optim.warmup_epochs=1",
    "trainer.accelerator=cpu", "trainer.progress_bar=false", "trainer.log_every_steps=2",
    "trainer.checkpoint_every_steps=1000",
]


def tiny_config(data_dir: Path, stats_path: Path, extra: list[str] | None = None) -> Config:
    return load_config(None, TINY + [f"data.paths=[{data_dir}]", f"data.stats={stats_path}"] + (extra or []))


def make_patch_folder(root: Path, n_per_class: int = 16, size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """Two classes of random RGB PNG patches (class-folder layout) plus a stats JSON."""
    rng = np.random.default_rng(seed)
    for cls, base in (("bright", 170), ("dark", 60)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{cls}_{i}.png")
    stats = root.parent / f"{root.name}_stats.json"
    stats.write_text(json.dumps({"bands": ["r", "g", "b"], "mean": [115.0] * 3, "std": [70.0] * 3,
                                 "p2": [0.0] * 3, "p98": [255.0] * 3, "dtype": "uint8"}))
    return root, stats


class SignalAt(L.Callback):
    """Sends this process a real signal before step ``k`` runs (SIGTERM: what SageMaker does on a spot
    interruption; SIGINT: Ctrl-C)."""

    def __init__(self, k: int, signum: int = signal.SIGTERM) -> None:
        self.k, self.signum = k, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        if trainer.global_step == self.k - 1:
            os.kill(os.getpid(), self.signum)


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def salt(root: Path, size: int = 32) -> dict[str, str]:
    """Write eight bad files into the class folders of ``root``; returns {absolute path: expected kind}.

    Two sort first in their class, so the dataset's first file is bad (not an image) and so is its second
    (RGBA among RGB). A 16-bit PNG is grayscale: Pillow reads 16-bit RGB PNGs as 8-bit RGB.
    """
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    jpeg, png = _encoded(rgb, "JPEG"), _encoded(rgb, "PNG")
    files: dict[str, tuple[bytes, str]] = {
        "bright/000_text.png": (b"this is a text file, not a png\n", "unreadable"),
        "bright/001_rgba.png": (_encoded(np.dstack([rgb, rgb[..., :1]]), "PNG"), "bands"),
        "bright/truncated.jpg": (jpeg[: len(jpeg) // 2], "unreadable"),
        "dark/truncated.png": (png[: len(png) // 2], "unreadable"),
        "dark/empty.png": (b"", "unreadable"),
        "dark/gray.png": (_encoded(rgb[..., 0], "PNG"), "bands"),
        "dark/deep16.png": (_encoded(rgb[..., 0].astype(np.uint16) * 257, "PNG"), "bands"),  # mode I;16
        "dark/small.png": (_encoded(rgb[: size - 8, : size - 8], "PNG"), "size"),
    }
    expected = {}
    for name, (data, kind) in files.items():
        (root / name).write_bytes(data)
        expected[str(root / name)] = kind
    return expected


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
