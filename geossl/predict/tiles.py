"""Classification of tile files (patches such as EuroSAT's) into predictions.csv and predictions.geojson.

Tiles are read at their own size (the ViT takes any multiple of its patch size) in the file's raw
units, masked by the one rule of :mod:`geossl.data.raster` and filled like scene windows, and batched
while consecutive tiles share a shape. The CSV and GeoJSON are streamed into temporary files and
renamed when complete. One unreadable file in a folder of thousands is skipped and reported, not
fatal; a band mismatch is fatal (it is never just one file).
"""

from __future__ import annotations

import contextlib
import csv
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from tqdm import tqdm

from geossl.data.patches import read_pil_array
from geossl.data.raster import WindowReader, open_raster, raster_env, valid_mask
from geossl.data.uris import RASTER_EXTS, expand_inputs
from geossl.io import atomic_path, check_outputs
from geossl.models.encoder import EncoderMeta
from geossl.models.landcover import LandCoverModel
from geossl.predict.common import (
    ensure_out_dir,
    model_device,
    run_batches,
    top_k,
)
from geossl.predict.geojson import footprint_lonlat, geojson_writer
from geossl.scene.bands import check_statistics, fill_invalid, resolve_bands

IMAGE_EXTS = RASTER_EXTS + (".jpg", ".jpeg", ".png")
PIL_EXTS = (".jpg", ".jpeg", ".png")
CSV_NAME, GEOJSON_NAME = "predictions.csv", "predictions.geojson"
# A tile whose longer side is more than this many times the model's tile size gets a warning: classified
# whole, as one tile, it costs memory like a scene and gives one label (see large_tile_warning).
LARGE_TILE_FACTOR = 4


@dataclass
class Tile:
    """One tile in the model's bands: float32 (C, H, W) with invalid pixels filled, plus georeferencing."""

    uri: str
    image: np.ndarray
    valid: np.ndarray
    crs: Any = None
    transform: Affine | None = None
    bands: list[int] = field(default_factory=list)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None and self.transform != Affine.identity()

    def footprint(self) -> list[list[float]] | None:
        if not self.georeferenced:
            return None
        return footprint_lonlat(self.transform, 0, 0, self.image.shape[2], self.image.shape[1], self.crs)


def image_inputs(inputs: str | Sequence[str]) -> list[str]:
    """Expand files, folders, globs and s3:// prefixes to image URIs (GeoTIFFs and JPEG/PNG tiles)."""
    return expand_inputs(inputs, exts=IMAGE_EXTS)


def _uses_pil(uri: str) -> bool:
    return uri.lower().endswith(PIL_EXTS) and not uri.startswith("/vsi")


def image_header(uri: str) -> tuple[int, int, bool]:
    """(width, height, georeferenced) from the header only; errors name the file."""
    try:
        if _uses_pil(uri):
            with Image.open(uri) as img:
                return img.size[0], img.size[1], False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with open_raster(uri) as src:
                return src.width, src.height, src.crs is not None
    except (ValueError, UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{uri}: not a readable image ({exc})") from None


def split_inputs(uris: list[str], mode: str, tile: int, explicit_grid: bool,
                 unreadable_as_scenes: bool = False) -> tuple[list[str], list[str]]:
    """(scenes, tiles). ``auto``: a georeferenced file larger than one tile (or any georeferenced file when
    the grid was given explicitly) is a scene; JPEG/PNG chips and small files are tiles. Unreadable files
    go to tiles, where a folder skips them and a lone file fails; with ``unreadable_as_scenes`` they go to
    the scenes when there are any (classify records a broken scene as failed and maps the others)."""
    if mode != "auto":
        return (uris, []) if mode == "scene" else ([], uris)
    kinds: list[str | None] = []
    with raster_env(uris):
        for uri in uris:
            try:
                width, height, georeferenced = image_header(uri)
            except ValueError:
                if len(uris) == 1:
                    raise
                kinds.append(None)
                continue
            kinds.append("scene" if georeferenced and (explicit_grid or max(width, height) > tile) else "tile")
    broken = "scene" if unreadable_as_scenes and "scene" in kinds else "tile"
    scenes = [u for u, k in zip(uris, kinds, strict=True) if (k or broken) == "scene"]
    return scenes, [u for u, k in zip(uris, kinds, strict=True) if (k or broken) == "tile"]


@contextlib.contextmanager
def _noting_commit(writer: contextlib.AbstractContextManager[Any], final: Path, committed: list[Path]) -> Iterator[Any]:
    """``writer`` (an atomic writer of ``final``), appending ``final`` to ``committed`` once it is in place."""
    with writer as handle:
        yield handle
    committed.append(final)


class TileReadError(ValueError):
    """A file that cannot be decoded (skippable in a folder), as opposed to a band mismatch (fatal)."""


def read_tile(uri: str, meta: EncoderMeta, bands: Sequence[int] | None = None) -> Tile:
    """Read one tile in the model's bands: ValueError on a band mismatch, TileReadError if undecodable.

    GeoTIFFs go through :class:`geossl.data.raster.WindowReader` (one window: the whole file), so a tile
    is masked exactly like a scene window; JPEG/PNG chips have no nodata and get the same rule's finite test.
    A tile smaller than one patch of the model is a TileReadError too: the encoder cannot see it, and in a
    folder it must be skipped and named, not abort the batch it would have joined.
    """
    tile = _read_pil_tile(uri, meta, bands) if _uses_pil(uri) else _read_raster_tile(uri, meta, bands)
    _, height, width = tile.image.shape
    if min(height, width) < meta.patch_size:
        raise TileReadError(f"{uri}: {width}x{height} px is smaller than one {meta.patch_size} px patch of the model")
    return tile


def _read_raster_tile(uri: str, meta: EncoderMeta, bands: Sequence[int] | None) -> Tile:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain chips have no georeferencing
        try:
            src = open_raster(uri)
        except (ValueError, OSError) as exc:
            raise TileReadError(f"{uri}: not a readable image or truncated ({exc})") from None
        with src:
            used = resolve_bands(meta, src.count, uri, bands, src.descriptions)
            try:
                data, valid = WindowReader(src, used, uri).read(0, 0, src.width, src.height)
            except ValueError as exc:
                raise TileReadError(f"{uri}: not a readable image or truncated ({exc})") from None
            crs, transform = src.crs, src.transform
    image = data.astype(np.float32)
    fill_invalid(image[None], valid[None], meta.mean)
    return Tile(uri, image, valid, crs, transform, list(used))


def _read_pil_tile(uri: str, meta: EncoderMeta, bands: Sequence[int] | None) -> Tile:
    """A JPEG/PNG chip through PIL (no GDAL needed for those): no nodata, so only the finite test applies."""
    try:
        array = read_pil_array(uri)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise TileReadError(f"{uri}: not a readable image or truncated ({exc})") from None
    used = resolve_bands(meta, array.shape[0], uri, bands, ())
    data = array[[b - 1 for b in used]]
    valid = valid_mask(data, [None] * len(used))
    image = data.astype(np.float32)
    fill_invalid(image[None], valid[None], meta.mean)
    return Tile(uri, image, valid, None, None, list(used))


def large_tile_warning(tile: Tile, meta: EncoderMeta) -> str:
    """A one-line warning for a tile far larger than the model's (empty for one of about its size): it is
    still one prediction for the whole image, but the ViT sees every patch of it at once, so memory and
    time grow with its size (a 3000 x 3000 JPEG took about 2 GB), and one label is rarely what was meant.
    The way out follows classify's rule: a scene map needs georeferencing (a CRS) and ``--mode scene``."""
    _, height, width = tile.image.shape
    if max(height, width) <= LARGE_TILE_FACTOR * meta.img_size:
        return ""
    how = ("to map it window by window, pass --mode scene" if tile.georeferenced else
           "to map it window by window, georeference it (a GeoTIFF with a CRS) and pass --mode scene, "
           "or cut it into tiles")
    return (f"warning: {tile.uri}: {width}x{height} px is over {LARGE_TILE_FACTOR}x the model's {meta.img_size} px "
            f"tile, yet classified as one tile (one label, memory growing with its size); {how}")


def iter_tiles(uris: Sequence[str], meta: EncoderMeta, bands: Sequence[int] | None,
               skipped: list[str]) -> Iterator[Tile]:
    """Tiles in order; unreadable files are appended to ``skipped`` with the reason and passed over, and a
    tile far larger than the model's is named in a warning (:func:`large_tile_warning`)."""
    for uri in uris:
        try:
            tile = read_tile(uri, meta, bands)
        except TileReadError as exc:
            skipped.append(str(exc))
            print(f"warning: skipping {exc}", file=sys.stderr)
            continue
        if warning := large_tile_warning(tile, meta):
            print(warning, file=sys.stderr)
        yield tile


def skipped_note(skipped: Sequence[str]) -> str:
    """``", 2 unreadable skipped: a.tif, tiny.png"``: the summary names the files, not just a count (the
    reasons were printed as each was met); empty when nothing was skipped."""
    if not skipped:
        return ""
    names = [reason.split(": ", 1)[0] for reason in skipped[:3]]
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f", {len(skipped)} unreadable skipped: {', '.join(names)}{more}"


def batched_by_shape(tiles: Iterator[Tile], batch_size: int) -> Iterator[list[Tile]]:
    """Consecutive tiles of one shape, at most ``batch_size`` at a time (a batch is one stacked array)."""
    batch: list[Tile] = []
    for tile in tiles:
        if batch and (len(batch) == batch_size or batch[0].image.shape != tile.image.shape):
            yield batch
            batch = []
        batch.append(tile)
    if batch:
        yield batch


@dataclass
class TilesResult:
    csv: Path
    geojson: Path | None
    tiles: int
    skipped: list[str]
    class_counts: dict[str, int]
    seconds: float

    def summary(self) -> str:
        top = sorted(self.class_counts.items(), key=lambda kv: -kv[1])[:3]
        share = ", ".join(f"{k} {v}" for k, v in top if v)
        extra = skipped_note(self.skipped)
        geo = f" + {self.geojson}" if self.geojson else " (not georeferenced: no GeoJSON)"
        return f"{self.tiles} tiles in {self.seconds:.1f} s -> {self.csv}{geo} ({share}{extra})"


def classify_tiles(
    model: LandCoverModel,
    uris: Sequence[str],
    out_dir: str | Path,
    *,
    bands: Sequence[int] | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    check_stats: bool = True,
    progress: bool = True,
) -> TilesResult:
    """Classify tile files: ``predictions.csv`` (path, class, probability, top-3) and, for georeferenced
    tiles, ``predictions.geojson`` with each tile's WGS84 footprint."""
    start = time.perf_counter()
    out_dir = ensure_out_dir(out_dir)
    csv_path, gj_path = out_dir / CSV_NAME, out_dir / GEOJSON_NAME
    check_outputs([csv_path, gj_path], overwrite)
    meta, classes, device = model.meta, list(model.classes), model_device(model)
    skipped: list[str] = []
    counts = dict.fromkeys(classes, 0)
    n_geo = n = 0
    header = ["path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    committed: list[Path] = []  # outputs already under their final name (the GeoJSON commits before the CSV)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(raster_env(uris))
            tmp_csv = stack.enter_context(atomic_path(csv_path, suffix=".csv"))
            fh = stack.enter_context(open(tmp_csv, "w", newline=""))
            writer = csv.writer(fh)
            writer.writerow(header)
            gj = None  # opened at the first georeferenced tile: JPEG folders get no GeoJSON at all
            bar = stack.enter_context(tqdm(total=len(uris), unit="tile", disable=not progress, leave=False, delay=1.0))
            for batch in batched_by_shape(iter_tiles(uris, meta, bands, skipped), batch_size):
                images = np.stack([t.image for t in batch])
                if check_stats and n == 0:
                    valid = np.stack([t.valid for t in batch])
                    check_statistics(meta, images.transpose(1, 0, 2, 3)[:, valid], batch[0].uri, batch[0].bands)
                probs = run_batches(model.predict_proba, images, device)
                for tile, best in zip(batch, top_k(probs, classes), strict=True):
                    row: list[Any] = [tile.uri]
                    for name, p in best:
                        row += [name, f"{p:.4f}"]
                    writer.writerow(row + [""] * (len(header) - len(row)))
                    counts[best[0][0]] += 1
                    ring = tile.footprint()
                    if ring is not None:
                        gj = gj or stack.enter_context(_noting_commit(geojson_writer(gj_path), gj_path, committed))
                        gj.add(ring, {"path": tile.uri, "class": best[0][0], "probability": round(best[0][1], 4),
                                      "top3": [{"class": c, "probability": round(p, 4)} for c, p in best],
                                      "crs": tile.crs.to_string()})
                        n_geo += 1
                n += len(batch)
                bar.n = n + len(skipped)
                bar.refresh()
            if n == 0:
                raise ValueError(f"no readable tiles among {len(uris)} input(s): {skipped[0] if skipped else ''}")
    except BaseException:
        for path in committed:  # both tables or neither: a GeoJSON left alone would refuse the rerun
            path.unlink(missing_ok=True)
        raise
    if n_geo == 0:
        gj_path.unlink(missing_ok=True)  # a stale GeoJSON (under --overwrite) must not pass for this run's
    return TilesResult(csv_path, gj_path if n_geo else None, n, skipped, counts, time.perf_counter() - start)
