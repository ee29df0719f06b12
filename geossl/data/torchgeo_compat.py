"""The same scenes as a torchgeo ``RasterDataset``, for users who prefer torchgeo's samplers and transforms.

Why our own fast path (:class:`geossl.data.scenes.RandomTileDataset`) exists: ``RasterDataset`` warps
every read to one common CRS and resolution through a WarpedVRT and merges overlapping files. That is
the right tool for stacking co-registered layers (labels on imagery, time series), but it costs
~30x per core, and self-supervision needs none of it: a tile only has to be a real piece of one scene.
So we read windows directly, in each scene's own CRS, without reprojection. Both read the same files
(``expand_inputs``), so they stay interchangeable; ``bench/tiles.py`` compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchgeo.datasets import RasterDataset

from geossl.data.scene_index import scene_info
from geossl.data.uris import expand_inputs


def band_names(count: int) -> tuple[str, ...]:
    """Names for 1-based band indices, as torchgeo selects bands by name."""
    return tuple(f"band_{i}" for i in range(1, count + 1))


def torchgeo_raster_dataset(
    scenes: str | list[str],
    bands: list[int] | None = None,
    crs: Any | None = None,
    res: float | tuple[float, float] | None = None,
    transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> RasterDataset:
    """A ``RasterDataset`` over the scenes ``expand_inputs`` finds (files, folders, globs, s3://).

    ``bands`` are 1-based indices, as everywhere in geossl. CRS and resolution default to the first
    scene's (torchgeo's rule); every other scene is warped to them on read.
    """
    uris = expand_inputs(scenes)
    count = scene_info(uris[0]).count

    class GeosslScenes(RasterDataset):
        filename_glob = "*"
        is_image = True
        separate_files = False
        all_bands = band_names(count)

    if bands and not all(1 <= b <= count for b in bands):
        raise ValueError(f"{uris[0]}: band index {bands} out of range: the scene has {count} bands")
    names = [GeosslScenes.all_bands[b - 1] for b in bands] if bands else None
    return GeosslScenes(paths=uris, crs=crs, res=res, bands=names, transforms=transforms)
