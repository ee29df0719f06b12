"""Process-wide settings: where the data lives.

The data root is a setting, never a literal: ``GEOSSL_DATA`` wins, then a config's ``data.root``,
then ``../shared/data`` beside the checkout, then ``./data``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """Return the root folder of the default datasets (EuroSAT, scenes)."""
    env = os.environ.get("GEOSSL_DATA")
    if env:
        return Path(env).expanduser()
    if configured:
        return Path(configured).expanduser()
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return REPO_ROOT / "data"


def resolve_data_path(path: str | os.PathLike[str], configured_root: str | None = None) -> str:
    """Expand ``${GEOSSL_DATA}``/``$DATA`` prefixes in config paths; leave URIs and absolute paths alone."""
    text = str(path)
    root = str(data_root(configured_root))
    for token in ("${GEOSSL_DATA}", "$GEOSSL_DATA", "${DATA}", "$DATA"):
        if text.startswith(token):
            return root + text[len(token) :]
    return text
