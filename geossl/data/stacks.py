"""Stacks: the scenes of one piece of ground on several dates, found from footprints and acquisition dates.

A time series arrives as loose files (the NAIP quad on nine dates, Landsat over Pucallpa on seven). Which
files show the same ground is a question of footprints, not names: two scenes belong to one stack when
their footprints (EPSG:4326, from the scene headers) overlap by at least ``min_overlap`` of the smaller one,
and stacks are the connected groups of that relation (union-find). Scenes of the same date never count as
two dates of a stack (adjacent tiles of one flight overlap at their edges).

The date of a scene, first found of: a ``--dates``/``data.dates`` CSV (``uri,date``; the file name alone
also matches), the file's ``TIFFTAG_DATETIME``, the date in its name (``_20090818``, ``1985``). A scene
with none is in no stack; it is named in the summary, not guessed.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely

# A date in a file name: 8 digits that read as YYYYMMDD (NAIP's m_..._20090818), else a year (Landsat's 1985.tif).
_DATE8 = re.compile(r"(?<!\d)(\d{8})(?!\d)")
_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|2\d\d\d)(?!\d)")


def file_stem(uri: str) -> str:
    """``/vsis3/b/x/scene.tif`` -> ``scene``."""
    name = str(uri).rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def date_in_name(uri: str) -> dt.datetime | None:
    """The acquisition date a file name carries (``_20090818`` -> 2009-08-18, ``1985`` -> 1985-01-01, UTC),
    or None. Only the name is read: series are ordered before any file is opened."""
    stem = file_stem(uri)
    for match in _DATE8.finditer(stem):
        try:
            return dt.datetime.strptime(match[1], "%Y%m%d").replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    years = _YEAR.findall(stem)
    return dt.datetime(int(years[-1]), 1, 1, tzinfo=dt.UTC) if years else None


def tiff_datetime(uri: str) -> dt.datetime | None:
    """The scene's ``TIFFTAG_DATETIME`` ("YYYY:MM:DD HH:MM:SS", as UTC), or None when absent or malformed, or
    when the file cannot be opened (reading it is what names that problem, not dating it)."""
    from geossl.data.raster import open_raster, raster_env

    try:
        with raster_env(uri), open_raster(uri) as src:
            text = (src.tags().get("TIFFTAG_DATETIME") or "").strip()
    except (OSError, ValueError):
        return None
    try:
        return dt.datetime.strptime(text, "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.UTC) if text else None
    except ValueError:
        return None


def read_dates_csv(path: str | os.PathLike[str]) -> dict[str, dt.datetime]:
    """``uri,date`` rows (ISO dates) -> {uri or file name: date}; a bad row is a one-line error naming it."""
    path = Path(path)
    dates: dict[str, dt.datetime] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"uri", "date"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a dates CSV needs the columns uri,date (has {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                when = dt.datetime.fromisoformat((row["date"] or "").strip())
            except ValueError:
                raise ValueError(f"{path}: line {line}: {row['date']!r} is not an ISO date (2019-09-04)") from None
            dates[(row["uri"] or "").strip()] = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return dates


def scene_dates(uris: Sequence[str], dates_csv: str | os.PathLike[str] | None = None,
                read_tags: bool = True) -> list[dt.datetime | None]:
    """Each scene's date: the CSV (by URI, then by file name), the TIFF tag, the file name; else None."""
    given = read_dates_csv(dates_csv) if dates_csv else {}
    out: list[dt.datetime | None] = []
    for uri in uris:
        name = str(uri).rstrip("/").rsplit("/", 1)[-1]
        date = given.get(str(uri)) or given.get(name)
        if date is None and read_tags:
            date = tiff_datetime(uri)
        out.append(date or date_in_name(uri))
    return out


@dataclass(frozen=True)
class Stacks:
    """``stack[i]``: the stack of scene ``i`` (-1: no date, or no other date of its ground); ``partners[i]``:
    the scenes of its stack on another date, oldest first."""

    stack: list[int]
    partners: list[list[int]]
    dates: list[dt.datetime | None]

    def summary(self) -> str:
        sizes = sorted((sum(s == k for s in self.stack) for k in set(self.stack) if k >= 0), reverse=True)
        undated = sum(d is None for d in self.dates)
        alone = sum(s < 0 for s in self.stack) - undated
        return (f"{len(self.stack)} scene(s) in {len(sizes)} stack(s) of {', '.join(map(str, sizes)) or 'no'} "
                f"scene(s); {alone} without another date of their ground, {undated} without a date")


def group_stacks(footprints: Sequence[Any], dates: Sequence[dt.datetime | None], min_overlap: float = 0.5) -> Stacks:
    """Stacks from footprints (shapely polygons in one CRS, None when unknown) and dates (see the module)."""
    n = len(footprints)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    usable = [i for i in range(n) if footprints[i] is not None and dates[i] is not None]
    tree = shapely.STRtree([footprints[i] for i in usable])
    for a in usable:
        for b_pos in tree.query(footprints[a], predicate="intersects"):
            b = usable[int(b_pos)]
            if b <= a:
                continue
            smaller = min(footprints[a].area, footprints[b].area)
            if smaller > 0 and footprints[a].intersection(footprints[b]).area >= min_overlap * smaller:
                parent[root(b)] = root(a)
    members: dict[int, list[int]] = {}
    for i in usable:
        members.setdefault(root(i), []).append(i)
    stack: list[int] = [-1] * n
    partners: list[list[int]] = [[] for _ in range(n)]
    for k, group in enumerate(sorted(members.values(), key=min)):
        if len({dates[i] for i in group}) < 2:
            continue
        for i in group:
            stack[i] = k
            others = [j for j in group if dates[j] != dates[i]]
            partners[i] = sorted(others, key=lambda j: (dates[j] or dt.datetime.min, j))
    ids = {k: rank for rank, k in enumerate(sorted({s for s in stack if s >= 0}))}  # numbered 0.. without gaps
    return Stacks([ids.get(s, -1) for s in stack], partners, list(dates))
