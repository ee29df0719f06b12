"""Per-band statistics (mean, std, 2nd/98th percentiles) in raw pixel units, shared by training and inference."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

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
    # Patch files left out of the sample as bad (path -> "kind: problem"); older files have none.
    skipped_files: dict[str, str] = field(default_factory=dict)

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


# --- computing statistics from a sample of the data -------------------------------------------------

SourceLike = str | Path | list[str]



class _SampledTiles(Protocol):
    """What the statistics read from each kind of source (patches, scene tiles, shard chips)."""

    @property
    def band_count(self) -> int: ...

    @property
    def dtype(self) -> str: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

def detect_kind(source: SourceLike) -> str:
    """"patches" for a CSV, a folder with labels.csv/splits.csv, or class folders of images; else "scenes"."""
    from geossl.data.patches import IMAGE_EXTS, LABELS_FILE, SPLITS_FILE
    from geossl.data.uris import RASTER_EXTS
    from geossl.settings import resolve_data_path

    if isinstance(source, list):
        if len(source) != 1:
            return "scenes"
        source = source[0]
    path = Path(resolve_data_path(source))
    if path.suffix.lower() == ".csv":
        return "patches"
    if not path.is_dir():
        return "scenes"
    if (path / LABELS_FILE).is_file() or (path / SPLITS_FILE).is_file():
        return "patches"
    if any(p.is_file() and p.name.lower().endswith(RASTER_EXTS) for p in path.iterdir()):
        return "scenes"
    for sub in path.iterdir():
        if sub.is_dir() and any(p.name.lower().endswith(IMAGE_EXTS) for p in sub.iterdir()):
            return "patches"
    return "scenes"


class _Accumulator:
    """Exact per-band mean/std (Chan's parallel merge) and a bounded random sample for percentiles."""

    def __init__(self, n_bands: int, values_per_item: int, seed: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_bands)
        self.m2 = np.zeros(n_bands)
        self.values_per_item = values_per_item
        self.samples: list[np.ndarray] = []
        self.rng = np.random.default_rng(seed)

    def add(self, image: np.ndarray, valid: np.ndarray) -> None:
        """``image`` (C,H,W), ``valid`` (H,W) bool; invalid and non-finite pixels are ignored."""
        pixels = image.reshape(image.shape[0], -1).astype(np.float64)
        keep = valid.reshape(-1) & np.isfinite(pixels).all(axis=0)
        pixels = pixels[:, keep]
        n = pixels.shape[1]
        if n == 0:
            return
        mean = pixels.mean(axis=1)
        m2 = ((pixels - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        if n > self.values_per_item:
            pixels = pixels[:, self.rng.choice(n, self.values_per_item, replace=False)]
        self.samples.append(pixels.astype(np.float32) if image.dtype.itemsize <= 4 else pixels)

    def result(self) -> tuple[list[float], list[float], list[float], list[float]]:
        values = np.concatenate(self.samples, axis=1)
        # One band at a time in float64: exact interpolation, bounded extra memory.
        p2, p98 = np.array([np.percentile(band.astype(np.float64), [2, 98]) for band in values]).T
        std = np.sqrt(self.m2 / self.count)
        return self.mean.tolist(), std.tolist(), p2.tolist(), p98.tolist()


def compute_stats(
    source: SourceLike,
    kind: str = "auto",
    bands: list[int] | None = None,
    n_tiles: int = 256,
    tile_size: int = 64,
    seed: int = 0,
    max_values: int = 4_000_000,
    max_bad_fraction: float = 0.01,
    bad_fraction_setting: str = "max_bad_fraction",
) -> BandStats:
    """Per-band mean, std, 2nd/98th percentiles in raw units over a sample, ignoring nodata/NaN pixels.

    Scenes: ``n_tiles`` random tiles of ``tile_size`` px (any tile, however little of it is valid).
    Patches: a seeded class-balanced subset of ``n_tiles`` patches. Mean and std are exact over the
    sample; percentiles use at most ``max_values`` pixels per band (a random subset), so memory stays
    bounded whatever the tile size. A bad patch file (unreadable, truncated, another band count, dtype or
    mode) is left out and listed in ``skipped_files``; more than ``max_bad_fraction`` of the sample stops
    with the list. ``bad_fraction_setting`` is how the caller's user sets that share (``--max-bad-fraction``
    for ``geossl stats``, ``data.max_bad_fraction`` for pretraining): the error names it, so its hint is
    always a setting the command that printed it has.
    """
    from geossl.data.patches import BadPatchError, PatchDataset, bad_files_message

    kind = detect_kind(source) if kind == "auto" else kind
    if kind == "patches":
        if isinstance(source, list) and len(source) != 1:
            raise ValueError(f"patches: expected one folder or CSV, got {len(source)} inputs: {source}")
        patch_source = source[0] if isinstance(source, list) else source
        dataset: _SampledTiles = PatchDataset(patch_source, bands=bands, limit=n_tiles, seed=seed)
        sources = [str(patch_source)]
    elif kind == "scenes":
        # Imported here: scenes need rasterio/GDAL, JPEG patches must not (the GPU host has no GDAL).
        from geossl.data.scenes import RandomTileDataset

        tiles = RandomTileDataset(
            source if isinstance(source, list) else str(source), tile_size=tile_size, length=n_tiles,
            bands=bands, min_valid_fraction=0.0, seed=seed,
        )  # fmt: skip
        _refuse_mixed_dtypes(tiles.scenes)
        dataset, sources = tiles, [s.uri for s in tiles.scenes]
    elif kind == "shards":
        from geossl.data.shards import ShardDataset, ShardSample

        if isinstance(source, list) and len(source) != 1:
            raise ValueError(f"shards: expected one chips folder or s3:// prefix, got {len(source)}: {source}")
        shards = ShardDataset(str(source[0] if isinstance(source, list) else source))
        dataset = ShardSample(shards, n_tiles)
        sources, bands = [shards.input_dir], bands or shards.meta.get("bands")
    else:
        raise ValueError(f"kind must be 'auto', 'scenes', 'patches' or 'shards', got {kind!r}")

    n_items = len(dataset)
    acc = _Accumulator(dataset.band_count, max(1, max_values // n_items), seed)
    skipped: dict[str, str] = {}
    for i in range(n_items):
        try:
            item = dataset[i]
        except BadPatchError as exc:  # patches only: scenes report their own read problems
            skipped[str(exc.path)] = f"{exc.kind}: {exc.problem}"
            if len(skipped) > max_bad_fraction * n_items:
                raise ValueError(bad_files_message(skipped, n_items, max_bad_fraction, bad_fraction_setting,
                                                   "sampled patch files")) from None
            continue
        image = item["image"].numpy()
        valid = item["mask"].numpy() if "mask" in item else np.ones(image.shape[1:], dtype=bool)
        acc.add(image, valid)
    if acc.count == 0:
        raise ValueError(f"{', '.join(sources[:3])}: no valid pixels in {n_items} sampled {kind}")
    mean, std, p2, p98 = acc.result()
    band_indexes = bands or list(range(1, dataset.band_count + 1))
    return BandStats(
        bands=[f"band_{b}" for b in band_indexes], mean=mean, std=std, p2=p2, p98=p98,
        dtype=dataset.dtype, n_pixels=int(acc.count), sources=sources, skipped_files=skipped,
    )  # fmt: skip


def _refuse_mixed_dtypes(scenes: list[Any]) -> None:
    """One set of statistics holds one unit: a uint8 scene (0-255) beside a uint16 one (reflectance x 10000)
    would give a mean and percentiles that fit neither, and training would normalise both wrongly."""
    first = scenes[0]
    other = next((s for s in scenes if s.dtype != first.dtype), None)
    if other is not None:
        raise ValueError(f"{first.uri} is {first.dtype} but {other.uri} is {other.dtype}: one set of statistics "
                         "cannot mix pixel units; compute statistics for each dtype separately")
