"""Temporal views for DINO: a random window of a scene and the same ground on another date of its stack.

SSL4EO-S12 showed that the same place in another season, used as a positive view, teaches features that
ignore season and illumination while keeping what the land is. Each item of :class:`TemporalTileDataset` is
a tile of a scene that has another date (:mod:`geossl.data.stacks`), drawn as :class:`RandomTileDataset`
draws, plus ``image_other``: the same pixels' ground on another date of the stack, read *onto the first
scene's grid* (:func:`read_onto`: any CRS, origin or pixel size; bilinear, or averaging where the other
date is finer), so both tiles cover the same coordinates. The validity rule applies per date: a date
whose window has too few valid pixels where the first date is valid is passed over for the next one, and
a date that cannot be read (a truncated file, a read error) is passed over, counted in ``dates_skipped``
and named once on stderr. Every choice is a function of (seed, epoch, item), so a resumed run reads the
same pairs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from affine import Affine
from rasterio.enums import Resampling

from geossl.data.handles import DEFAULT_MAX_OPEN
from geossl.data.scene_index import SceneInfo, footprint_lonlat, scene_info
from geossl.data.scenes import RandomTileDataset, SceneReader, to_compact_tensor
from geossl.data.stacks import Stacks, group_stacks, scene_dates
from geossl.data.uris import expand_inputs

MAX_OTHER_DATES = 4  # other dates tried per item before the item's own date serves as the second view


def read_onto(reader: SceneReader, other: SceneInfo, grid: SceneInfo, col: int, row: int,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and validity of ``other`` on the window (col, row, size) of ``grid``'s pixels (any CRS).

    The other date's pixels around the window's footprint (a margin of 2 of its pixels for the resampling
    kernel) are read through its own pooled reader, then :func:`rasterio.warp.reproject` resamples them onto
    the window: bilinear, averaging where the other date is finer; a pixel is valid where at least half of
    what it is resampled from is, and nothing outside the other date is valid. Per-tile and in memory, because a ``WarpedVRT`` over the whole
    grid warps GDAL's 512 x 128 blocks for every 64 px tile (ten times slower here)."""
    from rasterio.transform import array_bounds
    from rasterio.warp import reproject, transform_bounds

    dst_transform = grid.transform @ Affine.translation(col, row)
    left, bottom, right, top = transform_bounds(grid.crs, other.crs, *array_bounds(size, size, dst_transform),
                                                densify_pts=9)
    inverse = ~other.transform
    xs, ys = zip(*(inverse @ corner for corner in ((left, top), (right, top), (left, bottom), (right, bottom))),
                 strict=True)
    c0, c1 = int(np.floor(min(xs))) - 2, int(np.ceil(max(xs))) + 2
    r0, r1 = int(np.floor(min(ys))) - 2, int(np.ceil(max(ys))) + 2
    data, valid = reader.read(c0, r0, c1 - c0, r1 - r0)
    src_transform = other.transform @ Affine.translation(c0, r0)
    finer = abs(other.transform.a) * 1.01 < abs(grid.transform.a) and other.crs == grid.crs
    # One warp for the bands and the validity (the last band, 1 valid / 0 not; 0 outside the other date): a
    # pixel is valid where at least half of what it is resampled from is.
    source = np.concatenate([data.astype(np.float32), valid[None].astype(np.float32)])
    warped = np.zeros((source.shape[0], size, size), np.float32)
    reproject(source, warped, src_transform=src_transform, src_crs=other.crs, dst_transform=dst_transform,
              dst_crs=grid.crs, resampling=Resampling.average if finer else Resampling.bilinear, dst_nodata=0)
    out, out_valid = warped[:-1], warped[-1] >= 0.5
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(data.dtype), out_valid


def readable_scenes(uris: Sequence[str], workers: int = 8) -> tuple[list[str], dict[str, str]]:
    """(the URIs whose header reads, {unreadable URI: one-line reason}): one bad date must not end a run."""
    def check(uri: str) -> str | None:
        try:
            scene_info(uri)
        except (OSError, ValueError) as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(uris)))) as pool:
        reasons = list(pool.map(check, uris))
    return [u for u, r in zip(uris, reasons, strict=True) if r is None], \
        {u: r for u, r in zip(uris, reasons, strict=True) if r is not None}


class TemporalTileDataset(RandomTileDataset):
    """:class:`RandomTileDataset` over the scenes that have another date, each item with ``image_other``
    and ``mask_other`` (the other date on the same pixels), ``date``/``date_other`` (days since 1970) and
    ``dates_skipped`` (unreadable dates passed over for this item)."""

    def __init__(self, scenes: str | list[str], tile_size: int, length: int, bands: list[int] | None = None,
                 min_valid_fraction: float = 0.9, seed: int = 0, max_open: int = DEFAULT_MAX_OPEN,
                 index: str | os.PathLike[str] | None = None, dates_csv: str | os.PathLike[str] | None = None,
                 min_overlap: float = 0.5) -> None:
        uris, self.unreadable = readable_scenes(expand_inputs(scenes))
        for uri, reason in self.unreadable.items():
            print(f"geossl: temporal views: skipped {uri}: {reason}", file=sys.stderr)
        if not uris:
            raise ValueError(f"augment.temporal: none of the {len(self.unreadable)} scene(s) could be read")
        super().__init__(uris, tile_size, length, bands=bands, min_valid_fraction=min_valid_fraction, seed=seed,
                         max_open=max_open, index=index)
        dates = scene_dates([info.uri for info in self.scenes], dates_csv)
        self.stacks: Stacks = group_stacks([footprint_lonlat(info) for info in self.scenes], dates, min_overlap)
        if not any(self.stacks.partners):
            raise ValueError(f"augment.temporal: no two dates of the same ground among {len(self.scenes)} scene(s) "
                             f"({self.stacks.summary()}); give dates with data.dates (a uri,date CSV) or a "
                             "folder holding one place on several dates")
        print(f"geossl: temporal views: {self.stacks.summary()}", file=sys.stderr)
        # Tiles are drawn only where another date exists, in proportion to each such scene's area.
        size = tile_size
        positions = np.array([(s.width - size + 1) * (s.height - size + 1) if self.stacks.partners[k] else 0
                              for k, s in enumerate(self.scenes)], float)
        self._cumulative = (np.cumsum(positions) / positions.sum()).tolist()
        self._days = [float(d.timestamp() / 86400) if d is not None else float("nan") for d in dates]
        self._warned: set[str] = set()

    def _warn(self, uri: str, reason: str) -> None:
        """One line per unreadable date and process; the count travels with the items."""
        if uri not in self._warned:
            self._warned.add(uri)
            print(f"geossl: temporal views: passing over {uri}: {reason.splitlines()[0]}", file=sys.stderr)

    def other_date(self, i: int, s: int, col: int, row: int, valid: np.ndarray,
                   epoch: int | None = None) -> tuple[int, np.ndarray, np.ndarray, int]:
        """(scene, pixels, valid mask, unreadable dates passed over) of another date of scene ``s``'s stack
        on the window (col, row) of ``s``'s grid; ``s`` itself when no other date serves."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng((self.seed, epoch, i, 1))  # its own stream: the tile's draw is unchanged
        partners = self.stacks.partners[s]
        skipped, size = 0, self.tile_size
        for j in rng.permutation(len(partners))[:MAX_OTHER_DATES].tolist():
            other = partners[j]
            try:
                data, other_valid = read_onto(self._readers[other], self.scenes[other], self.scenes[s], col, row,
                                              size)
            except (OSError, ValueError) as exc:
                skipped += 1
                self._warn(self.scenes[other].uri, str(exc))
                continue
            both = np.count_nonzero(other_valid & valid) / valid.size
            if both >= self.min_valid_fraction:
                return other, data, other_valid, skipped
        data, valid_s = self._readers[s].read(col, row, size, size)
        return s, data, valid_s, skipped

    def __getitem__(self, i: int) -> dict[str, Any]:
        # A tile whose own date fails to read is served by the next item's (i+1, i+2, ... wrapping), the rule
        # bad patch files follow: deterministic, so a resumed run reads the same pairs; each failure counts.
        failed = 0
        for attempt in range(MAX_OTHER_DATES):
            index = (int(i) + attempt) % self.length
            try:
                s, window, first, valid = self.draw(index)
                break
            except ValueError as exc:
                if "cannot read window" not in str(exc) or attempt == MAX_OTHER_DATES - 1:
                    raise
                failed += 1
                self._warn(str(exc).split(":", 1)[0], str(exc))
        item = self.item_of(s, window, first, valid)
        col, row = int(window.col_off), int(window.row_off)
        other, data, other_valid, skipped = self.other_date(index, s, col, row, valid)
        skipped += failed
        if data.dtype != self.np_dtype:
            data = data.astype(self.np_dtype)
        item.update(image_other=to_compact_tensor(data), mask_other=torch.from_numpy(other_valid),
                    date=self._days[s], date_other=self._days[other], scene_other=other,
                    dates_skipped=skipped)
        return item
