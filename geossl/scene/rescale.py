"""Run a model on a scene in other units: map each band's 2nd/98th percentiles onto the model's.

A model trained on 8-bit RGB (0-255) sees noise in a reflectance scene (0-10,000 or 0-1 floats), and
:func:`geossl.scene.bands.check_statistics` refuses such a scene. ``--rescale percentile`` fixes the
units with a per-band linear map ``y = a x + b`` chosen so that the scene's 2nd and 98th percentiles
(sampled through the reader, so nodata, NaN and masked pixels are ignored) land exactly on the model's
``p2`` and ``p98`` (recorded in the encoder's ``geossl.json``). Percentiles rather than min/max because
a few saturated or dead pixels must not set the scale; a linear map because it keeps the ordering and
ratios the model learnt within a band.

A band that is constant in the sample has no spread to match (p98 = p2): it is mapped to the middle of
the model's range (``a = 0``), never divided by zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geossl.choices import RESCALES
from geossl.models.encoder import EncoderMeta

LOW_PCT, HIGH_PCT = 2.0, 98.0


@dataclass(frozen=True)
class LinearRescale:
    """Per-band ``y = scale * x + offset``, with the source percentiles it was fitted on (for reports)."""

    scale: np.ndarray  # (C,) float64
    offset: np.ndarray  # (C,)
    src_low: np.ndarray  # the scene's 2nd percentiles (C,)
    src_high: np.ndarray  # the scene's 98th percentiles (C,)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Rescale a (C, ...) float32 array in place (and return it); invalid pixels are refilled later."""
        for c in range(image.shape[0]):
            image[c] *= np.float32(self.scale[c])
            image[c] += np.float32(self.offset[c])
        return image

    def note(self) -> str:
        pairs = ", ".join(f"{lo:.4g}..{hi:.4g}" for lo, hi in zip(self.src_low, self.src_high, strict=True))
        return f"rescaled by percentiles from {pairs}"


def band_percentiles(pixels: np.ndarray, nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (2nd, 98th) percentiles of (C, N) samples, ignoring NaN/inf and ``nodata`` values."""
    low, high = np.empty(pixels.shape[0]), np.empty(pixels.shape[0])
    for c, band in enumerate(np.asarray(pixels, dtype=np.float64)):
        keep = np.isfinite(band)
        if nodata is not None and np.isfinite(nodata):
            keep &= band != nodata
        if not keep.any():
            raise ValueError(f"band {c + 1} has no valid pixels to take percentiles from")
        low[c], high[c] = np.percentile(band[keep], [LOW_PCT, HIGH_PCT])
    return low, high


def fit_percentile_rescale(meta: EncoderMeta, pixels: np.ndarray, source: str,
                           nodata: float | None = None) -> LinearRescale:
    """The map sending ``pixels``' (C, N) 2nd/98th percentiles per band onto the model's p2/p98."""
    target_low, target_high = model_percentiles(meta)
    if pixels.ndim != 2 or pixels.shape[0] != len(target_low):
        raise ValueError(f"{source}: {pixels.shape[0]} bands sampled, the model reads {len(target_low)}")
    if pixels.shape[1] == 0:
        raise ValueError(f"{source}: no valid pixels to fit --rescale percentile on")
    try:
        low, high = band_percentiles(pixels, nodata)
    except ValueError as exc:
        raise ValueError(f"{source}: --rescale percentile: {exc}") from None
    spread = high - low
    flat = spread <= 1e-12 * np.maximum(np.abs(high), 1.0)
    scale = np.where(flat, 0.0, (target_high - target_low) / np.where(flat, 1.0, spread))
    offset = np.where(flat, 0.5 * (target_low + target_high), target_low - scale * low)
    return LinearRescale(scale, offset, low, high)


def model_percentiles(meta: EncoderMeta) -> tuple[np.ndarray, np.ndarray]:
    """The model's (p2, p98) per band; a one-line error when its geossl.json has none."""
    if not meta.p2 or not meta.p98:
        raise ValueError("--rescale percentile needs the model's p2/p98 band percentiles, but its encoder's "
                         "geossl.json has none (re-export the encoder with them, or convert the scene's units)")
    if len(meta.p2) != meta.in_chans or len(meta.p98) != meta.in_chans:
        raise ValueError(f"the model's p2/p98 have {len(meta.p2)}/{len(meta.p98)} entries for {meta.in_chans} bands")
    return np.asarray(meta.p2, dtype=np.float64), np.asarray(meta.p98, dtype=np.float64)


def check_rescale(rescale: str | None, meta: EncoderMeta) -> str | None:
    """Validate ``--rescale`` before any work: None/'none' -> None; 'percentile' needs the model's p2/p98."""
    if rescale in (None, "", "none"):
        return None
    if rescale not in RESCALES:
        raise ValueError(f"--rescale must be one of {RESCALES}, got {rescale!r}")
    model_percentiles(meta)
    return rescale


def scene_low_high(rescale: LinearRescale | None, indices: Sequence[int]) -> tuple[list[float], list[float]] | None:
    """The scene's own percentiles of bands ``indices`` (for a preview stretch in the scene's units)."""
    if rescale is None:
        return None
    return [float(rescale.src_low[i]) for i in indices], [float(rescale.src_high[i]) for i in indices]
