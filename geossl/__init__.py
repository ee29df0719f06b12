"""geossl: DINO self-supervised pretraining on satellite imagery, land-cover probes and maps."""

from __future__ import annotations

from typing import Any

__all__ = ["Encoder", "load_encoder", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: importing geossl.data in DataLoader workers must not pay for timm/torch model imports.
    if name in ("Encoder", "load_encoder"):
        from geossl.models import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'geossl' has no attribute {name!r}")
