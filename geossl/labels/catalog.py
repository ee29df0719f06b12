"""The scenes labels are cut from, as the encoder will see them: band selection and GSD applied.

Each scene is opened once through the inference :class:`~geossl.scene.reader.ModelSceneReader`, so the
grid recorded here (CRS, geotransform, size) is the grid chips are later read from, resampled to the
encoder's GSD when the scene's differs (the same automatic rule as ``geossl classify``). A scene that
cannot be opened, or does not fit the encoder (band count, no CRS), is skipped and counted: one bad
file among many never stops the probe.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import shapely
from tqdm import tqdm

from geossl.data.uris import expand_inputs
from geossl.models.encoder import EncoderMeta


@dataclass(frozen=True)
class SceneGrid:
    """One scene's read grid: pixel (col, row) -> map coordinates through ``transform``, in ``crs``."""

    uri: str
    crs: Any  # rasterio CRS
    transform: Any  # affine.Affine
    width: int
    height: int
    note: str  # how it is read (e.g. "resampled 5 m -> 10 m")

    def footprint(self) -> Any:
        """The scene's outline as a shapely polygon in its CRS."""
        corners = [self.transform @ (c, r) for c, r in ((0, 0), (self.width, 0), (self.width, self.height),
                                                        (0, self.height))]
        return shapely.Polygon(corners)


@dataclass
class SceneCatalog:
    scenes: list[SceneGrid]
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # one line per skipped scene (first few are printed)

    def by_crs(self) -> dict[str, list[int]]:
        """Scene indices grouped by CRS (WKT), so labels are reprojected once per CRS, not once per scene."""
        groups: dict[str, list[int]] = {}
        for i, scene in enumerate(self.scenes):
            groups.setdefault(scene.crs.to_wkt(), []).append(i)
        return groups


def build_catalog(
    inputs: Sequence[str], meta: EncoderMeta, bands: Sequence[int] | None = None, resample: bool | None = None
) -> SceneCatalog:
    """Open every scene once and record its read grid; unusable scenes are skipped with a reason."""
    from geossl.data.raster import raster_env
    from geossl.scene.reader import ModelSceneReader

    uris = expand_inputs(list(inputs))
    catalog = SceneCatalog(scenes=[])
    with raster_env(uris):
        for uri in tqdm(uris, desc="scenes", unit="scene", disable=len(uris) < 50, file=sys.stderr):
            try:
                with ModelSceneReader(uri, meta, bands, resample) as reader:
                    catalog.scenes.append(SceneGrid(uri, reader.crs, reader.transform, reader.width,
                                                    reader.height, reader.resample_note))
            except (ValueError, OSError) as exc:
                catalog.skipped["unusable_scene"] += 1
                catalog.problems.append(str(exc))
    if not catalog.scenes:
        first = catalog.problems[0] if catalog.problems else "no scenes"
        raise ValueError(f"none of the {len(uris)} scene(s) can be used: {first}")
    return catalog
