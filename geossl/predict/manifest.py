"""The run manifest of a ``geossl classify`` output folder, ``manifest.jsonl``: what each scene's outputs
were made from, so running the same command again maps only what is new, changed or failed.

One JSON line per scene attempt; a scene's latest line wins. A line names the scene (absolute path or
``s3://`` URI), the output stem chosen for it (:func:`geossl.predict.common.unique_stems`), its status
(``started``, ``done``, or ``failed`` with the one-line reason), the input's size and modification time,
the model folder and its hash (:func:`geossl.models.landcover.model_hash`), the options that change the
pixels, and the outputs' file names. With it a rerun

- skips a scene that is done and current: same input size and time, same model hash, same options,
  every output present (an input whose size and time cannot be read is never current);
- retries a failed (or interrupted: ``started``) scene and redoes one whose input or model changed,
  replacing its outputs without ``--overwrite``: the manifest proves they are this folder's outputs of
  that scene, made with the same options;
- still needs ``--overwrite`` for outputs made with other options, and for files it did not write
  (the rule of :func:`geossl.io.check_outputs`).

Lines are appended and fsynced one at a time while the folder's :class:`geossl.io.RunLock` is held, so
no two writers interleave. A line torn by a crash is ignored when read (and the next line starts on a
fresh one): the worst a crash costs is that scene being redone, or refused until ``--overwrite``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rasterio.errors import RasterioError

from geossl.data.s3 import s3_client
from geossl.io import check_outputs, naming_write_errors
from geossl.predict.common import unique_stems
from geossl.predict.stac import href_of

MANIFEST_NAME = "manifest.jsonl"
# What a scene that cannot be mapped (or embedded) raises: recorded as failed, the run goes on.
SCENE_ERRORS = (ValueError, OSError, RuntimeError, RasterioError)
UNKNOWN_INPUT: dict[str, Any] = {"size": None, "mtime": None}

log = logging.getLogger("geossl")


def pixel_options(*, tile_size: int, stride: int, bands: Sequence[int] | None, resample: bool | None,
                  min_valid: float, blend: str, tta: bool, rescale: str, dense: bool, probs: bool,
                  probs_dtype: str) -> dict[str, Any]:
    """The options that change a scene's output pixels (or which rasters exist), resolved (the tile size
    the model's default gave, not None) and in their JSON form, so a record read back compares equal."""
    options = {"tile_size": tile_size, "stride": stride, "bands": list(bands) if bands else None,
               "resample": "auto" if resample is None else resample, "min_valid": min_valid, "blend": blend,
               "tta": tta, "rescale": rescale, "dense": dense, "probs": probs,
               "probs_dtype": probs_dtype if probs else None}  # the dtype of probabilities not written is moot
    return json.loads(json.dumps(options))


def input_signature(uri: str) -> dict[str, Any]:
    """``{"size", "mtime"}`` of a scene (local stat, or one S3 HEAD request adding the ETag); None values
    where they cannot be had cheaply (HTTP, other /vsi paths, no permission)."""
    if uri.startswith("/vsis3/"):
        return _s3_signature(uri)
    if "://" in uri or uri.startswith("/vsi"):
        return dict(UNKNOWN_INPUT)
    try:
        st = os.stat(uri)
    except OSError:
        return dict(UNKNOWN_INPUT)
    mtime = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=st.st_mtime_ns // 1000)
    return {"size": st.st_size, "mtime": mtime.isoformat()}


def _s3_signature(uri: str) -> dict[str, Any]:
    bucket, _, key = uri[len("/vsis3/"):].partition("/")
    try:
        head = s3_client().head_object(Bucket=bucket, Key=key)
    except Exception:  # noqa: BLE001 (no credentials or permission: unknown, so the scene is redone)
        return dict(UNKNOWN_INPUT)
    modified = head.get("LastModified")
    return {"size": int(head.get("ContentLength", 0)), "mtime": modified.isoformat() if modified else None,
            "etag": head.get("ETag")}


def _known(signature: dict[str, Any]) -> bool:
    return signature.get("size") is not None and signature.get("mtime") is not None


@dataclass
class ScenePlan:
    """One scene of a run: where it is read, its manifest key and output names, and what to do with it."""

    uri: str  # as GDAL reads it (/vsis3/... for S3)
    key: str  # absolute path or s3:// URI: the scene's identity in the manifest
    stem: str
    outputs: dict[str, Path | None]
    signature: dict[str, Any] = field(default_factory=dict)
    current: bool = False  # done with these inputs, model and options, outputs present: skip
    replace: bool = False  # may replace existing outputs (--overwrite, or the manifest shows they are its own)


class Manifest:
    """The manifest of one output folder: the latest record per scene, and appending new ones."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / MANIFEST_NAME
        self.latest: dict[str, dict[str, Any]] = {}
        self._torn = False
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        self._torn = bool(data) and not data.endswith(b"\n")
        bad = 0
        for line in data.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("scene"), str) and isinstance(record.get("stem"), str):
                self.latest[record["scene"]] = record
            elif line.strip():
                bad += 1
        if bad:
            log.warning("%s: %d unreadable line(s) ignored (a crash mid-write?)", self.path, bad)

    def stems(self) -> dict[str, str]:
        """Scene key -> the output stem it was given: kept by reruns, taken from other scenes."""
        return {key: record["stem"] for key, record in self.latest.items()}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (one line, flushed and fsynced) and make it the scene's latest."""
        text = ("\n" if self._torn else "") + json.dumps(record) + "\n"  # never glue a record onto a torn line
        self._torn = True  # until the line is down: a failed write (a full disk) may leave part of it
        with naming_write_errors(self.path), open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        self._torn = False
        self.latest[record["scene"]] = record


def plan_scenes(manifest: Manifest, uris: Sequence[str], outputs_of: Callable[[str, str], dict[str, Path | None]],
                model_hash: str, options: dict[str, Any], overwrite: bool) -> list[ScenePlan]:
    """A plan per scene (unique stems, current or not, may it replace its outputs); refuses, in one line
    and before any work, existing outputs neither ``overwrite`` nor the manifest allows replacing."""
    keys = [href_of(uri) for uri in uris]
    stems = unique_stems(keys, manifest.stems())
    plans, refused, notes = [], [], []
    for uri, key in zip(uris, keys, strict=True):
        plan = ScenePlan(uri, key, stems[key], outputs_of(uri, stems[key]), input_signature(uri))
        record = manifest.latest.get(key)
        paths = [p for p in plan.outputs.values() if p is not None]
        existing = [p for p in paths if p.exists()]
        same = record is not None and record.get("options") == options and record.get("stem") == plan.stem
        recorded = set((record or {}).get("outputs", {}).values())
        plan.current = (same and record is not None and record.get("status") == "done"
                        and _known(plan.signature) and record.get("input") == plan.signature
                        and (record.get("model") or {}).get("hash") == model_hash
                        and len(existing) == len(paths) and {p.name for p in paths} <= recorded)
        plan.replace = overwrite or not existing or (same and {p.name for p in existing} <= recorded)
        if not plan.replace:
            refused += existing
            if record is not None and record.get("options") != options:
                notes.append(_option_change(record.get("options") or {}, options))
        plans.append(plan)
    note = f"made with other options: {notes[0]}" if notes else ""
    check_outputs(refused, overwrite=False, note=note)
    return plans


def _option_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``stride 64 -> 32, tta false -> true``: what differs between two option sets."""
    changed = [f"{k} {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
               for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed)


def scene_record(plan: ScenePlan, status: str, model: dict[str, Any], options: dict[str, Any],
                 reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest line of one scene attempt (``extra``: e.g. windows and seconds of a finished map)."""
    return {
        "scene": plan.key, "stem": plan.stem, "status": status, "reason": reason, "input": plan.signature,
        "model": model, "options": options,
        "outputs": {kind: path.name for kind, path in plan.outputs.items() if path is not None},
        "time": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(), **extra,
    }


def one_line_reason(exc: BaseException, uri: str) -> str:
    """The failure as one line that names the scene (GDAL's messages can span lines or omit the file)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:  # "[Errno 28] ..." -> the path and the problem
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return text if uri in text else f"{uri}: {text}"
