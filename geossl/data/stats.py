"""Per-band statistics (mean, std, 2nd/98th percentiles) in raw pixel units, shared by training and inference."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geossl.io import atomic_write_json, read_json


@dataclass
class BandStats:
    """Statistics of each band, in the units stored in the files (e.g. 0-255, reflectance x 10,000)."""

    bands: list[str]
    mean: list[float]
    std: list[float]
    p2: list[float]
    p98: list[float]
    dtype: str = "float32"
    n_pixels: int = 0
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.bands)
        for key in ("mean", "std", "p2", "p98"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"band statistics: '{key}' has {len(getattr(self, key))} values for {n} bands")

    @property
    def count(self) -> int:
        return len(self.bands)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> BandStats:
        data = read_json(path)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a band statistics file ({exc})") from None
