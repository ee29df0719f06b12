"""Chips cut once from any number of scenes into LitData shards, and read back for pretraining.

Why shards: random tiles straight from thousands of scenes pay a file open (or S3 requests) per scene
touched; cutting valid chips once into large sequential chunk files (what SSL4EO did with LMDB) makes
training I/O a few big reads, whatever the scene count, locally or from S3. Why LitData: it is the
Lightning ecosystem's streaming format (geossl trains with Lightning), it writes chunks in parallel
processes, merges datasets, and reads items by index from a local folder or from ``s3://`` with a
bounded local chunk cache (WebDataset reads tar streams sequentially only, which would force another
sampler and another resume story on training).

Each item keeps a chip's raw pixels (the scenes' dtype), its valid mask, window, bounds and CRS and
its scene (an index into ``geossl_chips.json``'s scene list), so a chip can always be traced back.

Resumable: the chips are cut in *parts* (each a complete LitData dataset once its ``index.json``
exists); an interrupted ``geossl chips`` reruns only the parts without one, then merges them. A part
with one is checked first (each chunk's size against ``index.json``, its sha256 against the part's
``geossl_checksums.json``) and cut again when a chunk does not match: LitData would trust it and fail
only when training reads it.

Reading is map-style (:class:`ShardDataset`), so the pretraining sampler's seeded per-epoch order,
mid-epoch resumption and DDP sharding apply unchanged; its order is *chunk-local*
(:func:`chunk_local_order`): chunks are shuffled, items shuffled within a window of a few chunks, and
each DDP rank takes a contiguous slice, so it reads mostly its own chunks. Shards on S3 are mirrored to
the node's disk once (only new or changed chunks), then read locally.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossl.data.handles import DEFAULT_MAX_OPEN
from geossl.data.patches import compact_torch_dtype, to_compact_tensor
from geossl.data.raster import plan_axis
from geossl.data.s3 import sync_prefix
from geossl.data.scene_index import SceneInfo
from geossl.data.scenes import RandomTileDataset, SceneReader, georef
from geossl.io import atomic_write_json

META_FILE = "geossl_chips.json"
INDEX_FILE = "index.json"  # LitData's: present = a complete dataset
PARTS_DIR = ".parts"
CHECKSUMS_FILE = "geossl_checksums.json"  # in each part: sha256 of its chunks, checked on resume
FORMAT = "geossl-chips"


@dataclass(frozen=True)
class ChipPlan:
    """Everything the chips depend on: a rerun with the same plan resumes, another plan is refused."""

    scenes: list[str]
    tile_size: int
    mode: str  # "random" (count chips drawn like RandomTileDataset) | "grid" (every valid window)
    count: int | None
    stride: int | None
    bands: list[int] | None
    min_valid_fraction: float
    seed: int
    part_size: int


class ChipCutter:
    """The picklable function LitData calls per chip spec in its worker processes (handles per process)."""

    def __init__(self, dataset: RandomTileDataset) -> None:
        self.dataset = dataset
        self.readers = [SceneReader(info, dataset.bands, dataset.pool) for info in dataset.scenes]

    def __call__(self, spec: int | tuple[int, int, int]) -> dict[str, Any] | None:
        ds = self.dataset
        size = ds.tile_size
        if isinstance(spec, int):  # random: the tile RandomTileDataset serves as item ``spec`` of epoch 0
            s, window, data, valid = ds.draw(spec, epoch=0)
            col, row = int(window.col_off), int(window.row_off)
        else:
            s, col, row = spec
            data, valid = self.readers[s].read(col, row, size, size)
            if np.count_nonzero(valid) < ds.min_valid_fraction * valid.size:
                return None  # LitData writes nothing for None: grid chips below min_valid are dropped
        bounds, _ = georef(col, row, size, size, ds.scenes[s].transform)
        return {"image": np.ascontiguousarray(data.astype(ds.np_dtype, copy=False)), "mask": valid,
                "bounds": bounds.numpy(), "window": np.array([col, row, size, size], dtype=np.int64),
                "crs": ds.crs_strings[s], "scene": int(s)}


def chip_specs(plan: ChipPlan, scenes: list[SceneInfo]) -> list[Any]:
    """Random: item indices; grid: (scene, col, row) of every whole window (stride ``plan.stride``)."""
    if plan.mode == "random":
        return list(range(int(plan.count or 0)))
    specs: list[Any] = []
    stride = plan.stride or plan.tile_size
    for s, info in enumerate(scenes):
        rows = plan_axis(info.height, plan.tile_size, stride).starts
        cols = plan_axis(info.width, plan.tile_size, stride).starts
        specs.extend((s, int(c), int(r)) for r in rows for c in cols)
    return specs


def _part_done(folder: Path) -> bool:
    return (folder / INDEX_FILE).is_file()


def _record_checksums(folder: Path) -> None:
    """Write the sha256 of each chunk of a just-cut part, so a resumed run can tell a damaged chunk."""
    from geossl.data.fetch import file_hash

    chunks = json.loads((folder / INDEX_FILE).read_text()).get("chunks") or []
    atomic_write_json(folder / CHECKSUMS_FILE,
                      {c["filename"]: file_hash(folder / c["filename"], "sha256") for c in chunks})


def _damaged_chunks(folder: Path) -> int:
    """How many chunks of a finished part are missing, of another size than ``index.json`` records, or
    (where the part has :data:`CHECKSUMS_FILE`) of another sha256: LitData trusts ``index.json`` and
    would fail only when training reads the chunk. A part without checksums (cut before they were
    recorded) gets them now, after its sizes are checked."""
    from geossl.data.fetch import file_hash

    try:
        chunks = json.loads((folder / INDEX_FILE).read_text()).get("chunks") or []
    except (OSError, ValueError):
        return 1  # an unreadable index: the part is cut again
    sums_file = folder / CHECKSUMS_FILE
    sums = json.loads(sums_file.read_text()) if sums_file.is_file() else None
    damaged = 0
    for chunk in chunks:
        path = folder / chunk["filename"]
        if _size_problem(path, int(chunk["chunk_bytes"])) or (
                sums is not None and sums.get(chunk["filename"]) != file_hash(path, "sha256")):
            damaged += 1
    if not damaged and sums is None:
        _record_checksums(folder)
    return damaged


def _size_problem(path: Path, expected: int) -> str | None:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    return None if size == expected else f"{size} bytes where index.json records {expected}"


def check_chunk_sizes(folder: Path) -> None:
    """Refuse a chips folder with a missing, truncated or grown chunk, naming it, before training reads it:
    LitData trusts ``index.json`` and waits for the missing bytes until it times out minutes later."""
    chunks = json.loads((folder / INDEX_FILE).read_text()).get("chunks") or []
    problems = [(folder / c["filename"], _size_problem(folder / c["filename"], int(c["chunk_bytes"])))
                for c in chunks]
    bad = [(path, problem) for path, problem in problems if problem]
    if bad:
        path, problem = bad[0]
        more = f" (and {len(bad) - 1} more of {len(chunks)} chunks)" if len(bad) > 1 else ""
        raise ValueError(f"{path}: damaged chips chunk, {problem}{more}; cut the chips again "
                         "(geossl chips ... --overwrite)")


def _has_chunks(folder: Path) -> bool:
    index = json.loads((folder / INDEX_FILE).read_text())
    return bool(index.get("config")) and bool(index.get("chunks"))


def _start_or_resume(out: Path, plan: ChipPlan, overwrite: bool) -> Path:
    """The parts folder; refuses a finished output (without overwrite) and a different plan's parts."""
    parts = out / PARTS_DIR
    if overwrite:
        for name in (INDEX_FILE, META_FILE):
            (out / name).unlink(missing_ok=True)
        for chunk in out.glob("chunk-*.bin"):
            chunk.unlink()
        shutil.rmtree(parts, ignore_errors=True)
    elif (out / META_FILE).is_file():
        raise ValueError(f"{out}: already holds chips (pass --overwrite to replace them)")
    plan_file = parts / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != asdict(plan):
        raise ValueError(f"{out}: holds parts of chips cut with other settings ({plan_file}); pass --overwrite "
                         "to start again")
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_file, asdict(plan))
    return parts


def cut_shards(plan: ChipPlan, out: str | os.PathLike[str], *, workers: int = 1, chunk_bytes: str = "64MB",
               max_open: int = DEFAULT_MAX_OPEN, index: str | os.PathLike[str] | None = None,
               overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Cut the plan's chips into LitData shards in ``out``; returns (and writes) ``geossl_chips.json``."""
    import litdata

    out = Path(out)
    dataset = RandomTileDataset(plan.scenes, tile_size=plan.tile_size, length=max(1, plan.count or 1),
                                bands=plan.bands, min_valid_fraction=plan.min_valid_fraction, seed=plan.seed,
                                max_open=max_open, index=index)
    specs = chip_specs(plan, dataset.scenes)
    if not specs:
        raise ValueError("no chip to cut: --count is 0, or every scene is smaller than --tile-size")
    parts = _start_or_resume(out, plan, overwrite)
    cutter = ChipCutter(dataset)
    n_parts = math.ceil(len(specs) / plan.part_size)
    done_before = recut_chunks = 0
    for k in range(n_parts):
        folder = parts / f"part-{k:05d}"
        if _part_done(folder):
            damaged = _damaged_chunks(folder)
            if not damaged:
                done_before += 1
                continue
            recut_chunks += damaged  # a truncated or altered chunk: its whole part is cut again
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted part is cut again from its start
        sigint = signal.getsignal(signal.SIGINT)
        try:
            litdata.optimize(fn=cutter, inputs=specs[k * plan.part_size : (k + 1) * plan.part_size],
                             output_dir=str(folder), chunk_bytes=chunk_bytes, num_workers=max(1, workers),
                             verbose=progress, reorder_files=False, start_method="fork")
        except RuntimeError as exc:
            cause = worker_error(exc)
            if cause is None:
                raise
            raise ValueError(cause) from None
        finally:
            # LitData's DataProcessor installs its own SIGINT handler and never puts the caller's back
            signal.signal(signal.SIGINT, sigint)
        _record_checksums(folder)
    # a part whose windows were all below min_valid holds no chunk (LitData leaves its config empty)
    folders = [str(parts / f"part-{k:05d}") for k in range(n_parts) if _has_chunks(parts / f"part-{k:05d}")]
    if not folders:
        named = ", ".join(scene.uri for scene in dataset.scenes[:3]) + (", ..." if len(dataset.scenes) > 3 else "")
        raise ValueError(f"no chip of the {len(dataset.scenes)} scene(s) ({named}) has {plan.min_valid_fraction:.0%} "
                         "valid pixels; lower --min-valid or check the scenes' nodata value")
    if len(folders) == 1:
        for item in Path(folders[0]).iterdir():
            if item.name != CHECKSUMS_FILE:
                os.replace(item, out / item.name)
    else:
        litdata.merge_datasets(folders, str(out), max_workers=max(1, workers))
    meta = _describe(out, plan, dataset, resumed_parts=done_before, parts=n_parts)
    meta["recut_chunks"] = recut_chunks
    atomic_write_json(out / META_FILE, meta)
    shutil.rmtree(parts, ignore_errors=True)
    return meta


_ERROR_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception): (.+)$", re.MULTILINE)


def worker_error(exc: BaseException) -> str | None:
    """The message of the error a LitData worker raised, or None when ``exc`` is not one.

    LitData hands a worker's failure to the caller as a RuntimeError whose text is the worker's whole
    formatted traceback; in a chained traceback the original error is printed first, so its
    ``SomeError: message`` line (which names the scene, see :meth:`RandomTileDataset.draw`) is the first."""
    text = str(exc)
    if "Traceback (most recent call last)" not in text:
        return None
    match = _ERROR_LINE.search(text)
    return match.group(1).strip() if match else None


def _describe(out: Path, plan: ChipPlan, dataset: RandomTileDataset, resumed_parts: int,
              parts: int) -> dict[str, Any]:
    index = json.loads((out / INDEX_FILE).read_text())
    chunk_sizes = [int(c["chunk_size"]) for c in index["chunks"]]
    return {"format": FORMAT, "version": 1, "count": int(sum(chunk_sizes)), "chunk_sizes": chunk_sizes,
            "tile_size": plan.tile_size, "band_count": dataset.band_count, "dtype": dataset.dtype,
            "bands": plan.bands, "scenes": [s.uri for s in dataset.scenes],
            "crs": sorted(set(dataset.crs_strings)), "plan": asdict(plan), "parts": parts,
            "resumed_parts": resumed_parts}


def read_shard_meta(input_dir: str) -> dict[str, Any]:
    """``geossl_chips.json`` of a local folder or an ``s3://`` prefix; errors name the place."""
    if input_dir.startswith("s3://"):
        from geossl.data.s3 import s3_client, split_s3_uri

        bucket, key = split_s3_uri(input_dir.rstrip("/") + "/" + META_FILE)
        try:
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise FileNotFoundError(f"{input_dir}: no {META_FILE} ({exc}); cut chips with geossl chips") from None
        meta = json.loads(body)
    else:
        path = Path(input_dir) / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{input_dir}: no {META_FILE}: not a finished geossl chips folder")
        meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{input_dir}: {META_FILE} is not a geossl chips description")
    return meta


def chunk_local_order(chunk_sizes: list[int], seed: int, epoch: int, window: int = 4) -> list[int]:
    """A permutation of all items for ``epoch``: chunks permuted (seeded by seed and epoch), then items
    shuffled within each run of ``window`` consecutive chunks of that order. A contiguous slice of it
    (what each DDP rank takes) touches few chunks, and a reader holds about ``window`` at a time."""
    starts = np.concatenate([[0], np.cumsum(chunk_sizes)]).astype(np.int64)
    chunks = np.random.default_rng((seed, epoch)).permutation(len(chunk_sizes))
    order: list[int] = []
    for w in range(0, len(chunks), window):
        items = np.concatenate([np.arange(starts[c], starts[c + 1]) for c in chunks[w : w + window]])
        order.extend(items[np.random.default_rng((seed, epoch, w)).permutation(items.size)].tolist())
    return order


class ShardSample(torch.utils.data.Dataset):
    """Evenly spaced items of a :class:`ShardDataset` (band statistics sample a few hundred chips)."""

    def __init__(self, dataset: ShardDataset, n: int) -> None:
        self.dataset = dataset
        self.indices = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).astype(np.int64).tolist()
        self.band_count, self.dtype = dataset.band_count, dataset.dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.indices[i]]


class ShardDataset(torch.utils.data.Dataset):
    """Chips from ``geossl chips`` output (a folder or ``s3://`` prefix), by index, as training items:
    ``image`` (raw units, compact dtype), ``mask``, ``bounds``, ``crs``, ``scene`` like RandomTileDataset."""

    def __init__(self, input_dir: str, cache_dir: str | None = None) -> None:
        self.input_dir = str(input_dir)
        self.meta = read_shard_meta(self.input_dir)
        self.cache_dir = cache_dir  # s3:// shards: where they are mirrored (default ~/.cache/geossl/shards)
        self.chunk_sizes = [int(n) for n in self.meta["chunk_sizes"]]
        self._pid, self._ds = -1, None
        if not self.input_dir.startswith("s3://"):
            check_chunk_sizes(Path(self.input_dir))  # an s3:// prefix: its mirror, once synced (_local_dir)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pid"], state["_ds"] = -1, None
        return state

    def _dataset(self) -> Any:
        """One LitData reader per process (its state does not survive a fork), over a local folder."""
        if self._pid != os.getpid():
            import litdata

            # batch_decode off: LitData's default decodes a window of items per access, which the
            # sampler's shuffled order would redo for every item (~100x slower, measured)
            self._ds = litdata.StreamingDataset(self._local_dir(), shuffle=False, batch_decode=False)
            self._pid = os.getpid()
        return self._ds

    def _local_dir(self) -> str:
        """The folder itself, or for ``s3://`` a local mirror synced once per node (only new or changed
        chunks are downloaded; a lock keeps DataLoader workers and ranks on one node from racing).

        LitData's own remote reads fetch each randomly accessed item with a range request (measured on a
        local S3 server: about 10 items/s per core), so shards are mirrored whole before training reads
        them: the archive must fit on the node's disk (``cache_dir``), as with SageMaker's File mode.
        """
        if not self.input_dir.startswith("s3://"):
            return self.input_dir

        root = Path(self.cache_dir or Path.home() / ".cache" / "geossl" / "shards")
        local = root / hashlib.sha256(self.input_dir.encode()).hexdigest()[:16]
        local.mkdir(parents=True, exist_ok=True)
        with open(local.parent / f"{local.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sync_prefix(self.input_dir.rstrip("/") + "/", local)
        check_chunk_sizes(local)
        return str(local)

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def band_count(self) -> int:
        return int(self.meta["band_count"])

    @property
    def dtype(self) -> str:
        return str(self.meta["dtype"])

    @property
    def torch_dtype(self) -> torch.dtype:
        return compact_torch_dtype(np.dtype(self.dtype))

    def epoch_order(self, seed: int, epoch: int) -> list[int]:
        return chunk_local_order(self.chunk_sizes, seed, epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._dataset()[int(i)]
        return {"image": to_compact_tensor(np.asarray(item["image"])),
                "mask": torch.from_numpy(np.asarray(item["mask"])),
                "bounds": torch.from_numpy(np.asarray(item["bounds"], dtype=np.float64)),
                "crs": str(item["crs"]), "scene": int(item["scene"])}
