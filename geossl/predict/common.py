"""Checks and helpers shared by classify, embed and attention: bands, statistics, outputs, devices.

Every check runs before any output is created, so a wrong band count or a folder that already holds
results fails in a second with one line naming the file, not after an hour of inference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

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
            "(for scenes, --rescale percentile maps the scene's 2nd/98th percentiles onto the model's; "
            "--no-check-stats runs anyway)"
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


def ensure_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create the output folder and prove it is writable (a probe file), before any work starts."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None
    return out_dir




def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def run_batches(fn: torch.nn.Module | object, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Apply ``fn`` (raw pixels -> tensor) to a float32 numpy batch; bf16 autocast on GPUs for speed."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(x)  # type: ignore[operator]
    else:
        out = fn(x)  # type: ignore[operator]
    return out.float().cpu().numpy()


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable (class, probability) pairs, best first."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]


def output_stem(uri: str) -> str:
    """``/vsis3/b/x/scene.tif`` -> ``scene``: output names derive from the input's file name."""
    name = str(uri).rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def unique_stems(uris: Sequence[str], reserved: Mapping[str, str] | None = None) -> dict[str, str]:
    """An output stem per URI that no other input, nor any scene ``reserved`` (URI -> stem, e.g. from an
    output folder's manifest), uses.

    A URI with a reserved stem keeps it (a rerun finds its outputs under the same names). Otherwise the
    file stem, as always, when it is free (existing outputs stay valid); files that share a stem get it
    plus the shortest run of parent folders that tells them apart (``2019/x.tif``, ``2020/x.tif`` ->
    ``x_2019``, ``x_2020``), and only where folders cannot (``x.tif`` beside ``x.tiff``), a short hash of
    the URI. Pass absolute paths or ``s3://`` URIs: the folders are then the same whatever the working folder.
    """
    reserved = dict(reserved or {})
    taken = {stem for uri, stem in reserved.items() if uri not in uris}  # other scenes' outputs in the folder
    stems: dict[str, str] = {}
    for uri in uris:
        stem = reserved.get(uri)
        if stem is not None and stem not in taken:
            stems[uri] = stem
            taken.add(stem)
    groups: dict[str, list[str]] = {}
    for uri in uris:
        if uri not in stems:
            groups.setdefault(output_stem(uri), []).append(uri)
    for stem, members in groups.items():  # plain names first, so a distinguishing name never takes one
        if len(members) == 1 and stem not in taken:
            stems[members[0]] = stem
            taken.add(stem)
    for stem, members in groups.items():
        if members[0] in stems:
            continue
        named = _by_parent_folders(stem, members)
        for uri in members:
            name = named[uri]
            if name in taken or list(named.values()).count(name) > 1:
                name = f"{stem}_{hashlib.sha256(uri.encode()).hexdigest()[:8]}"
            stems[uri] = name
            taken.add(name)
    return {uri: stems[uri] for uri in uris}


def _by_parent_folders(stem: str, uris: Sequence[str]) -> dict[str, str]:
    """``stem`` plus the last k parent folders of each URI, k the smallest that makes the names differ."""
    parents = [[re.sub(r"[^\w.-]+", "-", p) for p in str(u).split("://", 1)[-1].split("/")[:-1] if p]
               for u in uris]
    depth = max((len(p) for p in parents), default=0)
    names: list[str] = [stem] * len(uris)
    for k in range(1, depth + 1):
        names = ["_".join([stem, *p[-k:]]) for p in parents]
        if len(set(names)) == len(names):
            break
    return dict(zip(uris, names, strict=True))
