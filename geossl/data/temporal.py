"""Temporal views for DINO: a random window of a scene and the same ground on another date of its stack.

SSL4EO-S12 showed that the same place in another season, used as a positive view, teaches features that
ignore season and illumination while keeping what the land is. Each item of :class:`TemporalTileDataset` is
a tile of a scene that has another date (:mod:`geossl.data.stacks`), drawn as :class:`RandomTileDataset`
draws, plus ``image_other``: the same pixels' ground on another date of the stack, read *onto the first
scene's grid* through a GDAL ``WarpedVRT`` (any CRS, origin or pixel size; bilinear, or averaging where the
other date is finer), so both tiles cover the same coordinates. The validity rule applies per date: a date
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
from rasterio.enums import MaskFlags, Resampling
from rasterio.vrt import WarpedVRT

from geossl.data.handles import DEFAULT_MAX_OPEN
from geossl.data.raster import WindowReader, open_raster
from geossl.data.scene_index import SceneInfo, footprint_lonlat, scene_info
from geossl.data.scenes import RandomTileDataset, to_compact_tensor
from geossl.data.stacks import Stacks, group_stacks, scene_dates
from geossl.data.uris import expand_inputs

MAX_OTHER_DATES = 4  # other dates tried per item before the item's own date serves as the second view


class _Onto:
    """One date read onto another scene's grid: the source file, its ``WarpedVRT`` and a window reader."""

    def __init__(self, other: SceneInfo, grid: SceneInfo, indexes: Sequence[int]) -> None:
        from rasterio.warp import calculate_default_transform

        self.src = open_raster(other.uri)
        own, _, _ = calculate_default_transform(self.src.crs, grid.crs, self.src.width, self.src.height,
                                                *self.src.bounds)
        finer = abs(own.a) < abs(grid.transform.a)
        # Outside the other date's footprint must read as invalid: its nodata value says so where it has one
        # (GDAL fills with it), else an added alpha band does (a scene's own alpha or mask is warped by GDAL).
        add_alpha = self.src.nodata is None and not any(MaskFlags.alpha in f for f in self.src.mask_flag_enums)
        self.vrt = WarpedVRT(self.src, crs=grid.crs, transform=grid.transform, width=grid.width,
                             height=grid.height, resampling=Resampling.average if finer else Resampling.bilinear,
                             src_nodata=self.src.nodata, nodata=self.src.nodata, add_alpha=add_alpha)
        self.reader = WindowReader(self.vrt, indexes, other.uri, alpha_band=self.vrt.count if add_alpha else None,
                                   own_env=True)

    def close(self) -> None:
        self.vrt.close()
        self.src.close()


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

    def _onto(self, other: int, grid: int) -> WindowReader:
        key = ("onto", other, grid, tuple(self.bands or ()))
        onto = self.pool.get(key, lambda: _Onto(self.scenes[other], self.scenes[grid],
                                                self._readers[other].indexes))
        return onto.reader

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
                data, other_valid = self._onto(other, s).read(col, row, size, size)
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
