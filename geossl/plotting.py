"""One way to write a matplotlib figure: atomically (a PNG is never half-written), always closing it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI

from geossl.io import atomic_path  # noqa: E402


def save_png(fig: Any, out: str | os.PathLike[str], dpi: int = 100, **kwargs: Any) -> Path:
    """Save ``fig`` to ``out`` through a temporary file, then close it (also on error)."""
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", **kwargs)
    finally:
        plt.close(fig)
    return out
