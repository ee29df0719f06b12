"""One product over all the maps of a ``geossl classify`` folder: VRTs, an optional mosaic, a STAC
Collection and the area of each class.

What a user with 2,000 scenes wants at the end is one thing to open, not 2,000 COGs. After every run the
folder's finished maps (the manifest's ``done`` scenes whose files are present) are gathered into

- ``classes.vrt`` (and ``probs.vrt`` when probabilities were written): a GDAL virtual mosaic over the class
  maps, one per CRS (``classes_epsg32614.vrt``... when the scenes are in several), opened by rasterio and
  QGIS like one raster. Each map is a ``ComplexSource`` with its nodata, so a scene's empty border never
  hides its neighbour where they overlap; elsewhere in an overlap the first map in the manifest's order
  wins, as in the mosaic.
- ``mosaic.tif`` with ``--mosaic``: one COG in one CRS (``--mosaic-crs``, default the CRS most maps
  are in), maps reprojected with nearest neighbour (classes are labels, not quantities), the first map in
  the manifest's order winning where maps overlap; written by :func:`rasterio.merge.merge` in windows
  (memory bounded by its ``mem_limit``), then copied to a COG, beside the final name and renamed.
- ``collection.json``: a STAC Collection (pystac) whose Items are the scene maps' own STAC Items, its extent
  the union of theirs, the model described with STAC's Machine Learning Model extension (``mlm:``).
- ``areas.csv``: pixels and hectares of each class in each map (and in the mosaic when written, where an
  overlap counts once), read in strips of rows; cell areas as :func:`geossl.predict.change_outputs.cell_area_ha`.

Why the VRT XML is written here: rasterio exposes no BuildVRT, and GDAL's Python bindings (``osgeo``) are
not a dependency; a VRT over north-up rasters of one CRS is a few lines of well-documented XML.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pystac
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.shutil import copy as copy_raster
from rasterio.vrt import WarpedVRT

from geossl.io import atomic_path, atomic_write_json, atomic_write_text
from geossl.predict.change_outputs import cell_area_ha
from geossl.predict.maps import NODATA_CLASS
from geossl.predict.stac import link_href

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
COLLECTION_NAME = "collection.json"
AREAS_NAME = "areas.csv"
MOSAIC_NAME = "mosaic.tif"  # never a scene output: those are all <stem>_<kind>.<ext>
STRIP_ROWS = 512  # rows read at a time when counting classes: memory bounded on any map size


@dataclass(frozen=True)
class SceneMap:
    """A finished map of the folder: its manifest key, stem and output files (those that exist)."""

    scene: str
    stem: str
    files: dict[str, Path]


def finished_maps(out_dir: Path, latest: dict[str, dict[str, Any]], folder: Path | None = None) -> list[SceneMap]:
    """The manifest's ``done`` scenes whose class map is present, in the manifest's order. ``folder`` is where
    that manifest's outputs lie when it is a subfolder of ``out_dir`` (one instance's share of a Processing
    job); its maps' stems then carry the subfolder (``algo-2/x``), so two instances' ``x`` stay apart."""
    folder = out_dir if folder is None else folder
    prefix = "" if folder == out_dir else f"{folder.relative_to(out_dir).as_posix()}/"
    maps = []
    for key, record in latest.items():
        if record.get("status") != "done":
            continue
        files = {kind: folder / name for kind, name in (record.get("outputs") or {}).items()
                 if isinstance(name, str) and (folder / name).is_file()}
        if "classes" in files:
            maps.append(SceneMap(key, prefix + record["stem"], files))
    return maps


def crs_label(crs: CRS | None) -> str:
    """``epsg32614``, or a short hash of the WKT for a CRS without an EPSG code: a file-name part."""
    if crs is None:
        return "nocrs"
    epsg = crs.to_epsg()
    if epsg is not None:
        return f"epsg{epsg}"

    return "crs" + hashlib.sha256(crs.to_wkt().encode()).hexdigest()[:8]


def write_vrts(out_dir: Path, maps: Sequence[SceneMap], kind: str = "classes") -> list[Path]:
    """``<kind>.vrt`` over the maps' ``kind`` rasters, one per CRS (suffixed by the CRS when several);
    maps with a rotated geotransform, or a band count or data type unlike the group's first, are left out
    of the VRT (they stay in the Collection) and named in the returned notes' place: the log."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for scene_map in maps:
        path = scene_map.files.get(kind)
        if path is None:
            continue
        with rasterio.open(path) as src:
            profile = {"crs": src.crs, "transform": src.transform, "width": src.width, "height": src.height,
                       "count": src.count, "dtypes": src.dtypes, "nodata": src.nodata,
                       "descriptions": src.descriptions}
        groups.setdefault(crs_label(profile["crs"]), []).append((path, profile))
    written = []
    for label, members in sorted(groups.items()):
        first = members[0][1]
        usable = [(p, m) for p, m in members if m["transform"].b == 0 and m["transform"].d == 0
                  and m["count"] == first["count"] and m["dtypes"] == first["dtypes"]]
        if not usable:
            continue
        name = f"{kind}.vrt" if len(groups) == 1 else f"{kind}_{label}.vrt"
        atomic_write_text(out_dir / name, vrt_xml(usable, out_dir))
        written.append(out_dir / name)
    return written


def vrt_xml(members: Sequence[tuple[Path, dict[str, Any]]], out_dir: Path) -> str:
    """The VRT document: the union of the members' bounds at the finest pixel size among them; each member
    a ``ComplexSource`` placed by its bounds (fractional offsets are allowed by the format), paths relative
    to the VRT so the folder can move."""
    xres = min(abs(m["transform"].a) for _, m in members)
    yres = min(abs(m["transform"].e) for _, m in members)
    left = min(m["transform"].c for _, m in members)
    top = max(m["transform"].f for _, m in members)
    right = max(m["transform"].c + m["width"] * m["transform"].a for _, m in members)
    bottom = min(m["transform"].f + m["height"] * m["transform"].e for _, m in members)
    width, height = math.ceil((right - left) / xres - 1e-9), math.ceil((top - bottom) / yres - 1e-9)
    first = members[0][1]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if first["crs"] is not None:
        lines.append(f"  <SRS>{escape(first['crs'].to_wkt())}</SRS>")
    lines.append(f"  <GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {-yres!r}</GeoTransform>")
    for band in range(1, first["count"] + 1):
        dtype = _VRT_TYPES[first["dtypes"][band - 1]]
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{band}">')
        description = first["descriptions"][band - 1]
        if description:
            lines.append(f"    <Description>{escape(description)}</Description>")
        if first["nodata"] is not None:
            lines.append(f"    <NoDataValue>{first['nodata']!r}</NoDataValue>")
        for path, m in reversed(members):  # GDAL draws sources in order: the first map ends on top
            t = m["transform"]
            x_off, y_off = (t.c - left) / xres, (top - t.f) / yres
            x_size, y_size = m["width"] * abs(t.a) / xres, m["height"] * abs(t.e) / yres
            rel = escape(os.path.relpath(path, out_dir))
            lines += ['    <ComplexSource resampling="nearest">',
                      f'      <SourceFilename relativeToVRT="1">{rel}</SourceFilename>',
                      f"      <SourceBand>{band}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{m["width"]}" ySize="{m["height"]}" />',
                      f'      <DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{x_size!r}" ySize="{y_size!r}" />']
            if m["nodata"] is not None:
                lines.append(f"      <NODATA>{m['nodata']!r}</NODATA>")
            lines.append("    </ComplexSource>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


_VRT_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "float32": "Float32", "float64": "Float64"}


def write_mosaic(out_dir: Path, maps: Sequence[SceneMap], crs: str | None = None) -> Path:
    """``mosaic.tif``: the class maps in one CRS (``crs``, default the most common among them) at
    the finest pixel size among them, as a COG; overlaps go to the first map in ``maps``' order."""
    from rasterio.merge import merge

    sources = [rasterio.open(m.files["classes"]) for m in maps]
    try:
        target = CRS.from_user_input(crs) if crs else _most_common_crs(sources)
        warped = [src if src.crs == target else
                  WarpedVRT(src, crs=target, resampling=Resampling.nearest, nodata=NODATA_CLASS)
                  for src in sources]
        res = min(min(abs(w.transform.a), abs(w.transform.e)) for w in warped)
        tags = sources[0].tags()
        # merge writes a tiled GeoTIFF window by window; the COG (overviews, layout) is a copy of it
        with atomic_path(out_dir / MOSAIC_NAME, ".tif") as final, \
                tempfile.TemporaryDirectory(prefix=".mosaic.", dir=out_dir) as scratch:
            tmp = Path(scratch) / "strips.tif"
            merge(warped, res=res, nodata=NODATA_CLASS, resampling=Resampling.nearest, method="first",
                  dst_path=tmp, dst_kwds={"driver": "GTiff", "tiled": True, "blockxsize": 256,
                                          "blockysize": 256, "compress": "deflate"})
            with rasterio.open(tmp, "r+") as dst:
                dst.update_tags(**{k: v for k, v in tags.items() if k in ("CLASSES", "NODATA_CLASS")})
                colormap = _colormap(sources[0])
                if colormap:
                    dst.write_colormap(1, colormap)
            copy_raster(tmp, final, driver="COG", compress="DEFLATE", overview_resampling="mode")
        return out_dir / MOSAIC_NAME
    finally:
        for src in sources:
            src.close()


def _most_common_crs(sources: Sequence[Any]) -> CRS:
    counts = Counter(src.crs.to_wkt() for src in sources if src.crs is not None)
    if not counts:
        raise ValueError("--mosaic: the class maps have no CRS to mosaic in")
    return CRS.from_wkt(counts.most_common(1)[0][0])


def _colormap(src: Any) -> dict[int, tuple[int, ...]] | None:
    try:
        return src.colormap(1)
    except ValueError:  # no colour table
        return None


def class_areas(path: Path, classes: Sequence[str]) -> list[tuple[str, int, float]]:
    """(class, pixels, hectares) of every class present in a class map, counted in strips of rows (one
    cell area per row: the same for every row in a projected CRS, geodesic per row in a geographic one)."""
    pixels = np.zeros(len(classes), dtype=np.int64)
    hectares = np.zeros(len(classes), dtype=np.float64)
    with rasterio.open(path) as src:
        projected = src.crs is not None and src.crs.is_projected
        for row0 in range(0, src.height, STRIP_ROWS):
            rows = min(STRIP_ROWS, src.height - row0)
            strip = src.read(1, window=((row0, row0 + rows), (0, src.width)))
            for i in range(rows):
                counts = np.bincount(strip[i].ravel(), minlength=256)[:len(classes)]
                if not counts.any():
                    continue
                area = cell_area_ha(src.crs, src.transform, 0 if projected else row0 + i)
                pixels += counts
                hectares += counts * area
    return [(name, int(pixels[k]), float(hectares[k])) for k, name in enumerate(classes) if pixels[k]]


def write_areas(out_dir: Path, maps: Sequence[SceneMap], classes: Sequence[str], mosaic: Path | None) -> Path:
    """``areas.csv``: ``map, class, pixels, hectares`` for every map (its stem), then the mosaic's rows
    (``mosaic``: overlaps counted once) when one was written."""
    rows = [(m.stem, *area) for m in maps for area in class_areas(m.files["classes"], classes)]
    if mosaic is not None:
        rows += [("mosaic", *area) for area in class_areas(mosaic, classes)]
    lines = [["map", "class", "pixels", "hectares"]] + [[s, c, str(p), f"{h:.4f}"] for s, c, p, h in rows]

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    atomic_write_text(out_dir / AREAS_NAME, buffer.getvalue())
    return out_dir / AREAS_NAME


def mlm_fields(meta: Any, classes: Sequence[str], model_path: str | Path, dense: bool) -> dict[str, Any]:
    """The Machine Learning Model extension's required fields (and a few optional ones) for the model that
    made the maps: name, architecture, tasks, the input (bands, window shape, normalisation) and the output
    (classes)."""
    return {
        "mlm:name": Path(str(model_path)).name or "geossl-landcover",
        "mlm:architecture": meta.timm_name,
        "mlm:tasks": ["semantic-segmentation" if dense else "classification"],
        "mlm:framework": "pytorch",
        "mlm:pretrained": True,
        "mlm:input": [{
            "name": "pixels", "bands": list(meta.bands),
            "input": {"shape": [-1, meta.in_chans, meta.img_size, meta.img_size],
                      "dim_order": ["batch", "channel", "height", "width"], "data_type": "float32"},
            "value_scaling": [{"type": "z-score", "mean": m, "stddev": s} for m, s in zip(meta.mean, meta.std,
                                                                                             strict=True)],
        }],
        "mlm:output": [{
            "name": "classes", "tasks": ["semantic-segmentation" if dense else "classification"],
            "result": {"shape": [-1, len(classes)], "dim_order": ["batch", "class"], "data_type": "float32"},
            "classification:classes": [{"value": k, "name": name} for k, name in enumerate(classes)],
        }],
    }


def write_collection(out_dir: Path, maps: Sequence[SceneMap], model_fields: dict[str, Any],
                     model_path: str | Path, extra_assets: dict[str, Path]) -> Path | None:
    """``collection.json`` over the maps' STAC Items (those written), extent from them; None without Items."""
    items = [pystac.Item.from_dict(json.loads(m.files["stac"].read_text()))
             for m in maps if "stac" in m.files]
    if not items:
        return None
    bboxes = np.array([item.bbox for item in items], dtype=float)
    times = [t for item in items for t in (item.datetime, item.common_metadata.start_datetime,
                                           item.common_metadata.end_datetime) if t is not None]
    extent = pystac.Extent(
        pystac.SpatialExtent([[float(bboxes[:, 0].min()), float(bboxes[:, 1].min()),
                               float(bboxes[:, 2].max()), float(bboxes[:, 3].max())]]),
        pystac.TemporalExtent([[min(times) if times else None, max(times) if times else None]]))
    collection = pystac.Collection(
        id=out_dir.resolve().name or "geossl-maps",
        description=f"Land-cover maps of {len(items)} scene(s) made by geossl classify "
                    f"({dt.datetime.now(dt.UTC).date().isoformat()})",
        extent=extent, license="other", stac_extensions=[MLM_SCHEMA], extra_fields=dict(model_fields))
    for name, path in extra_assets.items():
        media = "application/xml" if path.suffix == ".vrt" else "text/csv" if path.suffix == ".csv" else \
            "image/tiff; application=geotiff; profile=cloud-optimized"
        collection.add_asset(name, pystac.Asset(path.name, media_type=media, roles=["data"]))
    collection.add_asset("model", pystac.Asset(link_href(model_path), title="land-cover model folder",
                                               roles=["mlm:model"]))
    doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
    doc["links"] = [{"rel": "item", "href": f"./{m.files['stac'].relative_to(out_dir).as_posix()}",
                     "type": "application/geo+json"} for m in maps if "stac" in m.files]
    atomic_write_json(out_dir / COLLECTION_NAME, doc)
    return out_dir / COLLECTION_NAME


def write_products(out_dir: Path, latest: dict[str, dict[str, Any]], model: Any, model_path: str | Path,
                   *, dense: bool, mosaic: bool = False, mosaic_crs: str | None = None) -> str:
    """Every folder-level product over the folder's finished maps; returns the one-line summary."""
    return products_of(out_dir, finished_maps(out_dir, latest), model, model_path, dense=dense, mosaic=mosaic,
                       mosaic_crs=mosaic_crs)


def products_of(out_dir: Path, maps: list[SceneMap], model: Any, model_path: str | Path, *, dense: bool,
                mosaic: bool = False, mosaic_crs: str | None = None) -> str:
    """The folder-level products of ``out_dir`` over ``maps`` (its own, or its subfolders'); the summary line."""
    if not maps:
        return "no finished map in the folder: no VRT, Collection or areas written"
    written: dict[str, Path] = {}
    for kind in ("classes", "probs"):
        for path in write_vrts(out_dir, maps, kind):
            written[path.stem] = path
    mosaic_path = write_mosaic(out_dir, maps, mosaic_crs) if mosaic else None
    if mosaic_path is not None:
        written["mosaic"] = mosaic_path
    written["areas"] = write_areas(out_dir, maps, model.classes, mosaic_path)
    collection = write_collection(out_dir, maps, mlm_fields(model.meta, model.classes, model_path, dense),
                                  model_path, written)
    names = sorted(p.name for p in written.values()) + ([collection.name] if collection else [])
    return f"{len(maps)} map(s) in {', '.join(names)}"
