"""A scene index: every scene's header read once, in parallel, into a GeoParquet reused across runs.

Start-up of a training run on an archive used to open every scene to read its header: minutes for
thousands of files, longer on S3. The index holds what planning tiles needs (size, bands, dtype, CRS,
geotransform, nodata) plus each footprint in EPSG:4326 (so it opens in any GIS and can be filtered by
area), and, for local files, size and modification time. An index is *current* when it lists exactly
the scenes asked for and no local file changed size or mtime; then nothing is opened at start-up.
S3 objects are trusted by key (listing them already cost one request per 1,000 keys; ``refresh=True``
re-reads them). Headers are read in threads: GDAL releases the GIL while it waits on disk or network.

A scene's header itself (:class:`SceneInfo`, read by :func:`scene_info`) lives here, below
:mod:`geossl.data.scenes`, whose datasets plan their tiles from the headers this module returns.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import affine
import geopandas as gpd
import shapely
from rasterio.crs import CRS
from tqdm import tqdm

from geossl.data.raster import open_raster
from geossl.data.uris import to_gdal_uri
from geossl.io import atomic_path
from geossl.settings import resolve_data_path

INDEX_COLUMNS = ("uri", "width", "height", "count", "dtype", "crs", "a", "b", "c", "d", "e", "f", "nodata",
                 "resx", "resy", "file_size", "mtime_ns")


@dataclass(frozen=True)
class SceneInfo:
    """What a scene is, from its header: enough to plan tiles without reading pixels."""

    uri: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: affine.Affine
    nodata: float | None
    res: tuple[float, float]

    @property
    def crs_string(self) -> str:
        """``"EPSG:xxxx"`` when the CRS has an authority code, else WKT ("" when the scene has no CRS)."""
        return self.crs.to_string() if self.crs else ""


def scene_info(uri: str) -> SceneInfo:
    """Header of a scene: a local path, ``/vsis3/...`` or ``s3://bucket/key`` (converted for GDAL)."""
    uri = to_gdal_uri(resolve_data_path(uri))
    with open_raster(uri) as src:
        return SceneInfo(
            uri=uri, width=src.width, height=src.height, count=src.count, dtype=src.dtypes[0],
            crs=src.crs, transform=src.transform, nodata=src.nodata, res=(float(src.res[0]), float(src.res[1])),
        )  # fmt: skip


def _stat(uri: str) -> tuple[int, int]:
    """(size, mtime_ns) of a local file; (-1, -1) for remote objects (trusted by key)."""
    if uri.startswith("/vsi") or "://" in uri:
        return -1, -1
    st = os.stat(uri)
    return st.st_size, st.st_mtime_ns


def footprint_lonlat(info: SceneInfo) -> Any:
    if info.crs is None:
        return None
    t = info.transform
    corners = [t @ (c, r) for c, r in ((0, 0), (info.width, 0), (info.width, info.height), (0, info.height))]
    try:
        return gpd.GeoSeries([shapely.Polygon(corners)], crs=info.crs).to_crs("EPSG:4326").iloc[0]
    except Exception:  # a CRS with no path to WGS 84 here: the scene is still usable, without footprint
        return None


def _row(info: SceneInfo) -> dict[str, Any]:
    t = info.transform
    size, mtime = _stat(info.uri)
    return {"uri": info.uri, "width": info.width, "height": info.height, "count": info.count, "dtype": info.dtype,
            "crs": info.crs.to_wkt() if info.crs else "", "a": t.a, "b": t.b, "c": t.c, "d": t.d, "e": t.e,
            "f": t.f, "nodata": info.nodata, "resx": info.res[0], "resy": info.res[1], "file_size": size,
            "mtime_ns": mtime}


def _info(row: Any) -> SceneInfo:
    nodata = row["nodata"]
    return SceneInfo(
        uri=row["uri"], width=int(row["width"]), height=int(row["height"]), count=int(row["count"]),
        dtype=row["dtype"], crs=CRS.from_wkt(row["crs"]) if row["crs"] else None,
        transform=affine.Affine(row["a"], row["b"], row["c"], row["d"], row["e"], row["f"]),
        nodata=None if nodata is None or nodata != nodata else float(nodata),
        res=(float(row["resx"]), float(row["resy"])),
    )  # fmt: skip


def read_headers(uris: Sequence[str], workers: int = 8) -> list[SceneInfo]:
    """Headers of ``uris`` (in order), read by ``workers`` threads, with a progress bar for long lists."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(scene_info, uris)
        return list(tqdm(it, total=len(uris), desc="scene headers", unit="scene", disable=len(uris) < 200,
                         file=sys.stderr))


def build_index(uris: Sequence[str], path: str | Path, workers: int = 8) -> list[SceneInfo]:
    """Read every header and write the GeoParquet index atomically; returns the scenes in ``uris`` order."""
    import geopandas as gpd

    infos = read_headers(uris, workers)
    frame = gpd.GeoDataFrame([_row(i) for i in infos], columns=list(INDEX_COLUMNS),
                             geometry=[footprint_lonlat(i) for i in infos], crs="EPSG:4326")
    with atomic_path(path, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return infos


def load_index(uris: Sequence[str], path: str | Path) -> list[SceneInfo] | None:
    """The scenes from a current index at ``path`` (same scenes, local files unchanged), else None."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path, columns=list(INDEX_COLUMNS)).to_pylist()
    except Exception:  # unreadable or from an older layout: rebuilt, never trusted
        return None
    rows = {r["uri"]: r for r in table}
    if len(rows) != len(uris) or any(u not in rows for u in uris):
        return None
    for uri in uris:
        size, mtime = (rows[uri]["file_size"], rows[uri]["mtime_ns"])
        if size >= 0:
            try:
                if _stat(uri) != (size, mtime):
                    return None
            except OSError:
                return None
    return [_info(rows[u]) for u in uris]


def scene_infos(uris: Sequence[str], index: str | os.PathLike[str] | None = None, workers: int = 8,
                refresh: bool = False) -> tuple[list[SceneInfo], str]:
    """Scene headers, from a current index when there is one; ("built" | "reused" | "read", ...)."""
    if index is None:
        return read_headers(uris, workers), "read"
    index_path = Path(index)
    if not refresh and (infos := load_index(uris, index_path)) is not None:
        return infos, "reused"
    return build_index(uris, index_path, workers), "built"
