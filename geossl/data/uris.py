"""Turn user inputs (files, folders, globs, S3 prefixes) into a sorted list of GDAL-readable raster URIs.

One function so every command accepts the same kinds of input; S3 objects become ``/vsis3/bucket/key``
so rasterio/GDAL stream them with range requests instead of downloading whole scenes.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from geossl.data.s3 import is_s3, list_objects, split_s3_uri
from geossl.settings import resolve_data_path

RASTER_EXTS = (".tif", ".tiff", ".vrt", ".jp2", ".img")
_GLOB_CHARS = ("*", "?", "[")


def to_gdal_uri(uri: str | os.PathLike[str]) -> str:
    """``s3://b/k`` -> ``/vsis3/b/k``; local paths and existing ``/vsi...`` paths are returned as strings."""
    text = str(uri)
    if is_s3(text):
        bucket, key = split_s3_uri(text)
        return f"/vsis3/{bucket}/{key}"
    return text


def _has_ext(name: str, exts: tuple[str, ...]) -> bool:
    return name.lower().endswith(exts)


def _walk(folder: Path, exts: tuple[str, ...]) -> list[str]:
    """Raster files below ``folder`` (recursive), hidden files and folders skipped, sorted.

    Symlinked folders are followed (a dataset assembled from links to other disks is a folder like any
    other; ``os.walk`` would skip them silently), each real folder once, so a link to an ancestor or two
    links to one folder neither loop nor list a file twice.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # sorted: the same link wins each run
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and _has_ext(f, exts))
    return sorted(found)


def _list_s3(uri: str, exts: tuple[str, ...]) -> list[str]:
    bucket, key = split_s3_uri(uri)
    if _has_ext(key, exts):
        return [f"/vsis3/{bucket}/{key}"]
    prefix = key if not key or key.endswith("/") else key + "/"
    try:
        objects = list_objects(bucket, prefix)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{uri}: {str(exc).partition(': ')[2]}") from None
    return [f"/vsis3/{bucket}/{obj['Key']}" for obj in objects if _has_ext(obj["Key"], exts)]


def _expand_one(item: str, exts: tuple[str, ...]) -> list[str]:
    if is_s3(item):
        return _list_s3(item, exts)
    if item.startswith("/vsi") or "://" in item:
        return [item]  # already GDAL-readable (/vsis3/, /vsicurl/, https://...): let GDAL judge it
    if any(c in item for c in _GLOB_CHARS):
        found: list[str] = []
        for match in sorted(glob.glob(os.path.expanduser(item), recursive=True)):
            if os.path.isdir(match):
                found.extend(_walk(Path(match), exts))
            elif _has_ext(match, exts):
                found.append(match)
        return found
    path = Path(item).expanduser()
    if path.is_dir():
        return _walk(path, exts)
    if path.is_file():
        return [str(path)]  # named explicitly: taken whatever its extension
    raise FileNotFoundError(f"{item}: no such file or folder")


def expand_inputs(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                  exts: tuple[str, ...] = RASTER_EXTS) -> list[str]:
    """Files, folders (recursive), globs, ``s3://bucket/prefix`` and ``s3://bucket/key.tif`` -> URIs.

    Order is stable (sorted within each input, inputs in the order given); duplicates are dropped.
    Each input must match something: a typo fails here, naming the input, not later as "0 tiles".
    ``$GEOSSL_DATA``-style prefixes are expanded (see :func:`geossl.settings.resolve_data_path`).
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not items:
        raise ValueError("no inputs given")
    exts = tuple(e.lower() for e in exts)
    uris: list[str] = []
    for raw in items:
        item = resolve_data_path(raw)
        found = _expand_one(item, exts)
        if not found:
            raise FileNotFoundError(f"{item}: nothing matches (looked for {', '.join(exts)} files)")
        uris.extend(found)
    return list(dict.fromkeys(uris))
