"""One embedding per tile -> (Geo)Parquet, for similarity search, clustering or custom heads.

Inputs are tile files (one row each) and scenes (one row per grid window, at the model's GSD when the
scene is resampled, see :mod:`geossl.scene.reader`). Rows carry the source, the window in source
pixels, the source CRS, the fraction of valid pixels and the footprint in WGS84 as WKB.

The file is GeoParquet 1.1 (``geo`` metadata, WKB, OGC:CRS84 lon/lat), written in row groups as
embeddings are produced rather than collected into one GeoDataFrame for ``to_parquet``: a scene can
yield millions of rows. The ``geo`` metadata, with the bounding box known only at the end, is added
when the file is closed; geopandas.read_parquet reads it like its own output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS
from tqdm import tqdm

from geossl.data.raster import axis_plan, raster_env
from geossl.io import atomic_path, check_outputs
from geossl.models.encoder import Encoder, EncoderMeta
from geossl.predict.common import (
    ensure_out_dir,
    model_device,
    run_batches,
)
from geossl.predict.geojson import footprint_lonlat
from geossl.predict.scene import GDAL_CACHE_BYTES
from geossl.predict.tiles import iter_tiles, skipped_note, split_inputs
from geossl.scene.bands import check_statistics
from geossl.scene.reader import ModelSceneReader

ROW_GROUP = 4096


@dataclass
class Item:
    source: str
    image: np.ndarray  # (C, H, W) float32, invalid pixels filled
    window: tuple[float, float, float, float]  # col_off, row_off, width, height in source pixels
    crs: str
    valid_fraction: float
    ring: list[list[float]] | None
    date: dt.datetime | None = None  # when the source was acquired (stacks.scene_dates), None if unknown
    stack: int | None = None  # with stacks: the stack; windows are then on its first date's grid


def stack_items(uris: Sequence[str], dates: Sequence[dt.datetime | None], stack: int | None, meta: EncoderMeta,
                bands: Sequence[int] | None, tile: int, stride: int, resample: bool | None, min_valid: float,
                check_stats: bool, skipped: list[str] | None = None) -> Iterator[Item]:
    """One stack's windows on its first date's grid, each read on every date (oldest first) through the
    first date's grid, so a window's rows share their place; a date whose window is mostly nodata is left
    out for that window only. ``col_off``/``row_off`` are in the first date's pixels. A later date that
    cannot be opened is left out of the stack, printed and added to ``skipped`` (the others go on)."""
    first = uris[0]
    with raster_env(list(uris), GDAL_CACHEMAX=GDAL_CACHE_BYTES), contextlib.ExitStack() as opened:
        anchor = opened.enter_context(ModelSceneReader(first, meta, bands, resample))
        readers, kept = [anchor], [(first, dates[0])]
        for uri, date in zip(uris[1:], dates[1:], strict=True):
            try:
                readers.append(opened.enter_context(ModelSceneReader(uri, meta, bands, onto=anchor.grid(first))))
                kept.append((uri, date))
            except (OSError, ValueError) as exc:
                if skipped is None:
                    raise
                print(f"geossl embed: skipped {exc}", file=sys.stderr)
                skipped.append(str(exc))
        uris, dates = [u for u, _ in kept], [d for _, d in kept]
        if anchor.width < tile or anchor.height < tile:
            raise ValueError(f"{first}: {anchor.width}x{anchor.height} px is smaller than one {tile} px tile")
        if check_stats:
            anchor.check_statistics()
        rows, cols = axis_plan(anchor.height, tile, stride), axis_plan(anchor.width, tile, stride)
        s, crs = anchor.scale, anchor.crs.to_string()
        for row in rows.starts:
            for col in cols.starts:
                ring = footprint_lonlat(anchor.transform, col, row, tile, tile, anchor.crs)
                for uri, date, reader in zip(uris, dates, readers, strict=True):
                    image, valid = reader.read(col, row, tile, tile)
                    frac = float(valid.mean())
                    if frac >= min_valid:
                        yield Item(uri, image, (col * s, row * s, tile * s, tile * s), crs, frac, ring, date, stack)


def scene_items(uri: str, meta: EncoderMeta, bands: Sequence[int] | None, tile: int, stride: int,
                resample: bool | None, min_valid: float, check_stats: bool,
                date: dt.datetime | None = None) -> Iterator[Item]:
    """Grid windows of one scene (regular grid plus an edge-flush window), skipping mostly-nodata ones."""
    yield from stack_items([uri], [date], None, meta, bands, tile, stride, resample, min_valid, check_stats)


def tile_items(uris: Sequence[str], meta: EncoderMeta, bands: Sequence[int] | None, skipped: list[str],
               check_stats: bool) -> Iterator[Item]:
    first = True
    for tile in iter_tiles(uris, meta, bands, skipped):
        if check_stats and first:
            check_statistics(meta, tile.image[:, tile.valid], tile.uri, tile.bands)
            first = False
        _, h, w = tile.image.shape
        crs = tile.crs.to_string() if tile.georeferenced else ""
        yield Item(tile.uri, tile.image, (0, 0, w, h), crs, float(tile.valid.mean()), tile.footprint())


class GeoParquetStream:
    """Row groups of embeddings into an open ParquetWriter; ``close`` adds the GeoParquet metadata (with the
    file's bbox). ``dataset_part``: the file is one partition of a dataset, whose readers (pyarrow.dataset,
    geopandas on a folder) see only the Arrow schema's metadata: the GeoParquet metadata goes there too, from
    the start, without the bbox (an optional field)."""

    def __init__(self, path: Path, dim: int, dataset_part: bool = False) -> None:
        self.schema = pa.schema([
            ("source", pa.string()), ("col_off", pa.float64()), ("row_off", pa.float64()),
            ("width", pa.float64()), ("height", pa.float64()), ("crs", pa.string()),
            ("valid_fraction", pa.float32()), ("date", pa.timestamp("s", tz="UTC")), ("stack", pa.int32()),
            ("embedding", pa.list_(pa.float32(), dim)), ("geometry", pa.binary()),
        ])
        if dataset_part:
            self.schema = self.schema.with_metadata({"geo": json.dumps(self._geo_metadata(None))})
        self.writer = pq.ParquetWriter(str(path), self.schema, compression="zstd")
        self.dim, self.rows, self.bbox = dim, 0, [np.inf, np.inf, -np.inf, -np.inf]
        self._pending: list[tuple[Item, np.ndarray]] = []

    def add(self, item: Item, embedding: np.ndarray) -> None:
        self._pending.append((item, embedding))
        if len(self._pending) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        items = [it for it, _ in self._pending]
        emb = np.stack([e for _, e in self._pending]).astype(np.float32).reshape(-1)
        geoms = [shapely.Polygon(it.ring) if it.ring else None for it in items]
        for g in geoms:
            if g is not None:
                x0, y0, x1, y1 = g.bounds
                self.bbox = [min(self.bbox[0], x0), min(self.bbox[1], y0), max(self.bbox[2], x1), max(self.bbox[3], y1)]
        table = pa.table({
            "source": [it.source for it in items],
            "col_off": [float(it.window[0]) for it in items], "row_off": [float(it.window[1]) for it in items],
            "width": [float(it.window[2]) for it in items], "height": [float(it.window[3]) for it in items],
            "crs": [it.crs for it in items], "valid_fraction": [it.valid_fraction for it in items],
            "date": [it.date for it in items], "stack": [it.stack for it in items],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb, pa.float32()), self.dim),
            "geometry": [None if g is None else shapely.to_wkb(g) for g in geoms],
        }, schema=self.schema)
        self.writer.write_table(table)
        self.rows += len(items)
        self._pending.clear()

    @staticmethod
    def _geo_metadata(bbox: list[float] | None) -> dict[str, Any]:
        column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"],
                                  "crs": CRS.from_user_input("OGC:CRS84").to_json_dict()}
        if bbox is not None and np.isfinite(bbox).all():
            column["bbox"] = [float(v) for v in bbox]
        return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column},
                "creator": {"library": "geossl"}}

    def close(self) -> None:
        self.flush()
        self.writer.add_key_value_metadata({"geo": json.dumps(self._geo_metadata(self.bbox))})
        self.writer.close()


@dataclass
class EmbedResult:
    path: Path
    rows: int
    dim: int
    skipped: list[str]
    seconds: float

    def summary(self) -> str:
        extra = skipped_note(self.skipped)
        return f"embed: {self.rows} rows x {self.dim} dims in {self.seconds:.1f} s -> {self.path}{extra}"


def embed_inputs(
    encoder: Encoder,
    uris: Sequence[str],
    out: str | Path,
    *,
    recipe: str = "cls",
    mode: str = "auto",
    tile_size: int | None = None,
    stride: int | None = None,
    bands: Sequence[int] | None = None,
    resample: bool | None = None,
    min_valid: float = 0.5,
    batch_size: int = 64,
    overwrite: bool = False,
    check_stats: bool = True,
    progress: bool = True,
    stacks: bool = False,
    dates_csv: str | Path | None = None,
    dataset_part: bool = False,
) -> EmbedResult:
    """Embed every tile file and every scene window of ``uris`` into the Parquet file ``out``; scenes carry
    their date (:func:`geossl.data.stacks.scene_dates`). With ``stacks``, scenes of one ground on several
    dates (:func:`geossl.data.stacks.group_stacks`) give one row per window and date, on the grid of the
    stack's first date; scenes in no stack are embedded alone. ``dataset_part``: ``out`` is one partition of a
    dataset (:class:`GeoParquetStream`)."""
    start = time.perf_counter()
    out = Path(out)
    meta, device = encoder.meta, model_device(encoder)
    explicit_grid = tile_size is not None or stride is not None
    # None, not 0, means "the default": a 0 from a caller is a mistake to name, not a request for img_size
    tile = int(meta.img_size if tile_size is None else tile_size)
    stride = int(tile if stride is None else stride)
    if tile < 1 or stride < 1:
        raise ValueError(f"tile size and stride must be >= 1, got {tile} and {stride}")
    ensure_out_dir(out.parent)
    check_outputs([out], overwrite)
    dim = encoder.feature_dim(recipe)
    scenes, tiles = split_inputs(list(uris), mode, tile, explicit_grid)
    skipped: list[str] = []

    groups = scene_groups(scenes, stacks, dates_csv, skipped)

    def items() -> Iterator[Item]:
        yield from tile_items(tiles, meta, bands, skipped, check_stats)
        for stack, members in groups:
            if stack is None:
                ((scene, date),) = members
                yield from scene_items(scene, meta, bands, tile, stride, resample, min_valid, check_stats, date)
            else:
                yield from stack_items([u for u, _ in members], [d for _, d in members], stack, meta, bands, tile,
                                       stride, resample, min_valid, check_stats, skipped)

    def features(x: Any) -> Any:
        return encoder.features(x, recipe)

    with raster_env(tiles), atomic_path(out, suffix=".parquet") as tmp:
        stream = GeoParquetStream(tmp, dim, dataset_part)
        try:
            batch: list[Item] = []
            bar = tqdm(unit="tile", disable=not progress, leave=False, delay=1.0)  # no bar before an early error
            for item in itertools.chain(items(), [None]):
                if batch and (item is None or len(batch) == batch_size or batch[0].image.shape != item.image.shape):
                    emb = run_batches(features, np.stack([b.image for b in batch]), device)
                    for b, e in zip(batch, emb, strict=True):
                        stream.add(b, e)
                    bar.update(len(batch))
                    batch = []
                if item is not None:
                    batch.append(item)
            bar.close()
        finally:
            stream.close()
        if stream.rows == 0:
            raise ValueError(f"no tiles to embed among {len(uris)} input(s) (all unreadable or nodata)")
    return EmbedResult(out, stream.rows, dim, skipped, time.perf_counter() - start)


def scene_groups(scenes: Sequence[str], stacks: bool, dates_csv: str | Path | None, skipped: list[str] | None = None
                 ) -> list[tuple[int | None, list[tuple[str, dt.datetime | None]]]]:
    """(stack or None, [(scene, date), ...] oldest first) in input order of each group's first scene; with
    stacks, a scene whose header cannot be read is printed, added to ``skipped`` and left out."""
    from geossl.data.scene_index import footprint_lonlat as scene_footprint
    from geossl.data.scene_index import scene_info
    from geossl.data.stacks import group_stacks, scene_dates

    dates = scene_dates(scenes, dates_csv)
    if not stacks:
        return [(None, [(u, d)]) for u, d in zip(scenes, dates, strict=True)]
    footprints: dict[str, Any] = {}  # the readable scenes' footprints (None: no CRS, so in no stack)
    for uri in scenes:
        try:
            footprints[uri] = scene_footprint(scene_info(uri))
        except (OSError, ValueError) as exc:
            if skipped is None:
                raise
            print(f"geossl embed: skipped {exc}", file=sys.stderr)
            skipped.append(str(exc))
    dates = [d for u, d in zip(scenes, dates, strict=True) if u in footprints]
    scenes = [u for u in scenes if u in footprints]
    grouped = group_stacks([footprints[u] for u in scenes], dates)
    out: list[tuple[int | None, list[tuple[str, dt.datetime | None]]]] = []
    seen: set[int] = set()
    for i, uri in enumerate(scenes):
        k = grouped.stack[i]
        if k < 0:
            out.append((None, [(uri, dates[i])]))
        elif k not in seen:
            seen.add(k)
            members = sorted((j for j in range(len(scenes)) if grouped.stack[j] == k),
                             key=lambda j: (dates[j] or dt.datetime.min.replace(tzinfo=dt.UTC), j))
            out.append((k, [(scenes[j], dates[j]) for j in members]))
    return out
