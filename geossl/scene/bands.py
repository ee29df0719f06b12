"""A scene's bands as the model expects them: which bands, on the model's scale, invalid pixels filled.

Every check runs before any output is created, so a wrong band count or a scene in other units fails in
a second with one line naming the file, not after an hour of inference. Shared by everything that feeds a
scene or a tile to a model: prediction (:mod:`geossl.predict`), label chips (:mod:`geossl.labels`) and
the scene reader (:class:`geossl.scene.reader.ModelSceneReader`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from geossl.models.encoder import EncoderMeta

STATS_Z_LIMIT = 10.0  # band medians further than this many model stds from the model mean are a mismatch

log = logging.getLogger("geossl")


def resolve_bands(
    meta: EncoderMeta, count: int, source: str, bands: Sequence[int] | None = None,
    descriptions: Sequence[str | None] | None = None,
) -> list[int]:
    """The 1-based bands of ``source`` to feed the model, in the model's order; else a clear error.

    Explicit ``bands`` win; otherwise a file whose band descriptions name all the model's bands is
    matched by name, and a file with exactly the model's band count is taken as it is.
    """
    need = meta.in_chans
    expects = f"the model expects {need} bands {meta.bands}"
    if bands is not None:
        bands = [int(b) for b in bands]
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise ValueError(f"{source}: band {bad[0]} requested but the file has {count} bands (1..{count})")
        if len(bands) != need:
            raise ValueError(f"{source}: --bands selects {len(bands)} bands {bands}, {expects}")
        return bands
    names = [(d or "").strip().lower() for d in (descriptions or [])]
    wanted = [b.strip().lower() for b in meta.bands]
    if names and all(w in names for w in wanted) and count != need:
        return [names.index(w) + 1 for w in wanted]
    trained = list(meta.band_indices or [])
    if count != need and len(trained) == need and max(trained) <= count:
        log.info("%s: using bands %s, the bands of the files the encoder was trained on", source, trained)
        return trained
    if count != need:
        hint = f"; select and order them with --bands (e.g. --bands {','.join(str(i) for i in range(1, need + 1))})"
        raise ValueError(f"{source}: has {count} bands, {expects}" + (hint if count > need else ""))
    return list(range(1, count + 1))


def check_statistics(meta: EncoderMeta, pixels: np.ndarray, source: str, bands: Sequence[int]) -> None:
    """Fail when the input's values are on another scale than the model's training data.

    ``pixels`` is (C, N) valid samples. A median many standard deviations from the model's mean means
    other units (reflectance x 10,000 vs 8-bit, or 0-1 floats): the model would see noise.
    """
    if pixels.size == 0:
        raise ValueError(f"{source}: no valid pixels (everything is nodata or NaN)")
    median = np.median(pixels.astype(np.float64), axis=1)
    mean, std = np.asarray(meta.mean, dtype=np.float64), np.maximum(np.asarray(meta.std, dtype=np.float64), 1e-6)
    z = np.abs(median - mean) / std
    worst = int(np.argmax(z))
    if z[worst] > STATS_Z_LIMIT:
        raise ValueError(
            f"{source}: band {bands[worst]} values (median {median[worst]:.4g}) do not match the model's "
            f"band {meta.bands[worst]!r} (mean {mean[worst]:.4g}, std {std[worst]:.4g}): the model expects "
            f"{meta.bands} with means {[round(m, 4) for m in meta.mean]}; wrong bands or units? "
            # --rescale is classify's alone (embed, change, probe and finetune reach this line too): named with it
            "(for scenes, geossl classify --rescale percentile maps the scene's 2nd/98th percentiles onto the "
            "model's; --no-check-stats runs anyway)"
        )


def fill_invalid(images: np.ndarray, valid: np.ndarray, fill: Sequence[float]) -> np.ndarray:
    """Replace nodata/NaN pixels by the model's band means (zero after normalisation), in place."""
    fill_arr = np.asarray(fill, dtype=images.dtype)
    bad = ~valid
    if bad.any():
        for c in range(images.shape[1]):
            band = images[:, c]
            band[bad] = fill_arr[c]
    return images
