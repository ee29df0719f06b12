"""Helpers shared by classify, embed and attention about their outputs and devices: output folders and
names, batches on the model's device, top-k classes.

Every check runs before any output is created, so a folder that already holds results or cannot be
written fails in a second with one line naming it, not after an hour of inference. What concerns the
input, a scene as the model sees it (bands, statistics, invalid pixels), is :mod:`geossl.scene`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


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
    groups: dict[str, list[str]] = {}  # every input, named or not: a name depends on the inputs, not on history
    for uri in uris:
        groups.setdefault(output_stem(uri), []).append(uri)
    for stem, members in groups.items():  # plain names first, so a distinguishing name never takes one
        if len(members) == 1 and members[0] not in stems and stem not in taken:
            stems[members[0]] = stem
            taken.add(stem)
    for stem, members in groups.items():
        if all(uri in stems for uri in members):
            continue
        named = _by_parent_folders(stem, members)
        for uri in members:
            if uri in stems:
                continue
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
