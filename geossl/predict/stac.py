"""A STAC Item beside every class map, so catalogues and viewers find the map, its source and its model.

``<scene>_classes.stac.json`` describes the map as written (read back from the COG, not from what we
meant to write): footprint and bbox in EPSG:4326, the projection extension (CRS code or WKT2, native
bbox, shape, geotransform) and the raster extension on the raster assets (data type, nodata, pixel
size). Assets: the class map, and the probabilities, tiles GeoJSON and preview when written (hrefs
relative to the item, so the folder can move). Links: ``derived_from`` the source scene and
``geossl:model`` to the model folder.

Datetime (STAC requires one): the scene's ``TIFFTAG_DATETIME`` when present (TIFF has no time zone:
read as UTC); otherwise the processing time, flagged by ``geossl:datetime_source = "processing"``, since
a map with an unknown acquisition date is still a product made at a known time. ``created`` is always
the processing time.

Change maps (``geossl change``) get ``<before>_to_<after>_change.stac.json`` built from the same parts
(:func:`raster_item`, :func:`add_assets`): it spans both dates (``start_datetime``/``end_datetime``, with
``datetime`` null as STAC allows) and links ``derived_from`` both scenes.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pystac
import rasterio
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from geossl.data.stacks import tiff_datetime
from geossl.io import atomic_write_json
from geossl.predict.geojson import footprint_lonlat

MEDIA = {".tif": "image/tiff; application=geotiff; profile=cloud-optimized", ".png": "image/png",
         ".geojson": "application/geo+json", ".csv": "text/csv"}
ROLES = {"classes": ["data"], "probs": ["data"], "geojson": ["metadata"], "preview": ["overview"]}
TITLES = {"classes": "land-cover classes", "probs": "class probabilities", "geojson": "classified windows",
          "preview": "scene and map preview"}


def scene_datetime(scene: str) -> dt.datetime | None:
    """The scene's TIFFTAG_DATETIME ("YYYY:MM:DD HH:MM:SS", as UTC), or None when absent or malformed."""
    return tiff_datetime(scene)


def href_of(uri: str | Path) -> str:
    """A link target: ``/vsis3/b/k`` -> ``s3://b/k``; a local path -> its absolute path."""
    text = str(uri)
    if text.startswith("/vsis3/"):
        return "s3://" + text[len("/vsis3/"):]
    if "://" in text or text.startswith("/vsi"):
        return text
    return str(Path(text).resolve())


def link_href(uri: str | Path) -> str:
    """A STAC link target as a URI reference: :func:`href_of`, percent-encoded (a space in a file name is
    ``%20``: STAC hrefs are URIs, and readers split unencoded ones). URLs given as URLs are kept."""
    text = href_of(uri)
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://"):].partition("/")
        return f"s3://{bucket}/{quote(key)}"
    return text if "://" in text or text.startswith("/vsi") else quote(text)


def scene_item(outputs: dict[str, Path | None], scene: str, tags: dict[str, str],
               model_path: str | Path | None, now: dt.datetime | None = None) -> dict[str, Any]:
    """The STAC Item (a dict) describing the written outputs of one scene."""
    classes_path = outputs["classes"]
    assert classes_path is not None
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    acquired = scene_datetime(scene)
    props: dict[str, Any] = {
        "created": pystac.utils.datetime_to_str(now), "geossl:datetime_source": "scene" if acquired else "processing",
        "geossl:classes": json.loads(tags["CLASSES"]), "geossl:nodata_class": int(tags["NODATA_CLASS"]),
        **{f"geossl:{k.lower()}": v for k, v in tags.items() if k in ("TILE_SIZE", "STRIDE", "BLEND", "TTA",
                                                                      "RESAMPLING", "MIN_VALID")},
    }
    item = raster_item(classes_path.stem, classes_path, acquired or now, props)
    add_assets(item, outputs, {key: (TITLES[key], ROLES[key]) for key in ("classes", "probs", "geojson", "preview")})
    item.add_link(pystac.Link("derived_from", link_href(scene), media_type="image/tiff", title="source scene"))
    if model_path is not None:
        item.add_link(pystac.Link("geossl:model", link_href(model_path), title="land-cover model folder"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def raster_item(item_id: str, raster: Path, datetime: dt.datetime | None, props: dict[str, Any]) -> Any:
    """A ``pystac.Item`` whose footprint, bbox and projection extension are read back from ``raster``.

    ``datetime`` None is allowed when ``props`` carry ``start_datetime``/``end_datetime`` (a product
    spanning two dates, such as a change map), as STAC requires."""
    with rasterio.open(raster) as m:
        crs, transform, shape, bounds = m.crs, m.transform, (m.height, m.width), m.bounds
    ring = footprint_lonlat(transform, 0, 0, shape[1], shape[0], crs)
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    item = pystac.Item(id=item_id, geometry={"type": "Polygon", "coordinates": [ring]},
                       bbox=[min(lons), min(lats), max(lons), max(lats)], datetime=datetime, properties=props)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg() if crs is not None else None
    if epsg is not None:
        proj.epsg = epsg
    else:
        proj.epsg, proj.wkt2 = None, crs.to_wkt() if crs is not None else None
    proj.bbox = [bounds.left, bounds.bottom, bounds.right, bounds.top]
    proj.shape, proj.transform = list(shape), list(transform)[:6]
    return item


def add_assets(item: Any, outputs: dict[str, Path | None], described: dict[str, tuple[str, list[str]]]) -> None:
    """One asset per written output named in ``described`` (key -> (title, roles)), href relative to the
    item; GeoTIFF assets get the raster extension's per-band description."""
    for key, (title, roles) in described.items():
        path = outputs.get(key)
        if path is None:
            continue
        asset = pystac.Asset(href=f"./{quote(path.name)}", media_type=MEDIA[path.suffix], roles=roles, title=title)
        item.add_asset(key, asset)
        if path.suffix == ".tif":
            _raster_bands(asset, path, RasterExtension, RasterBand, DataType)


def _raster_bands(asset: Any, path: Path, raster_ext: Any, band_cls: Any, data_type: Any) -> None:
    """The raster extension's per-band description of a written GeoTIFF asset."""
    with rasterio.open(path) as src:
        dtype, nodata, res, tags = src.dtypes[0], src.nodata, abs(src.transform.a), src.tags()
    scale = float(tags["PROBABILITY_SCALE"]) if "PROBABILITY_SCALE" in tags else None
    bands = [band_cls.create(nodata=nodata if nodata is None or nodata == nodata else "nan",
                             data_type=data_type(dtype), spatial_resolution=res, scale=scale)
             for _ in range(src.count)]
    raster_ext.ext(asset, add_if_missing=True).bands = bands


def write_scene_item(outputs: dict[str, Path | None], scene: str, tags: dict[str, str],
                     model_path: str | Path | None) -> Path:
    """Write the Item to ``outputs["stac"]`` atomically; returns its path."""
    path = outputs["stac"]
    assert path is not None
    atomic_write_json(path, scene_item(outputs, scene, tags, model_path))
    return path


CHANGE_ASSETS = {
    "score": ("change score: 1 - cosine similarity of the two dates' patch tokens", ["data"]),
    "fromto": ("land-cover class per patch: band 1 before, band 2 after", ["data"]),
    "transitions": ("land-cover transitions (from, to, hectares)", ["metadata"]),
    "preview": ("both dates and the change score", ["overview"]),
}


def change_item(outputs: dict[str, Path | None], before: str, after: str, tags: dict[str, str],
                dates: tuple[dt.datetime | None, dt.datetime | None], model_path: str | Path | None,
                now: dt.datetime | None = None) -> dict[str, Any]:
    """The STAC Item of a change map: it spans the two dates (``start_datetime``/``end_datetime``) when both
    are known (from the scenes' tags or file names), else it carries the processing time, flagged as for maps."""
    score = outputs["score"]
    assert score is not None
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    known = [d for d in dates if d is not None]
    props: dict[str, Any] = {
        "created": pystac.utils.datetime_to_str(now),
        "geossl:datetime_source": "scenes" if len(known) == 2 else "processing",
        **{f"geossl:{k.lower()}": v for k, v in tags.items() if k in ("TILE_SIZE", "STRIDE", "BLEND", "MIN_VALID",
                                                                      "RESAMPLING", "SCORE")},
    }
    if "CLASSES" in tags:  # a land-cover model's classes, as in a class map's Item
        props["geossl:classes"] = json.loads(tags["CLASSES"])
    if len(known) == 2:
        props["start_datetime"] = pystac.utils.datetime_to_str(min(known))
        props["end_datetime"] = pystac.utils.datetime_to_str(max(known))
    item = raster_item(score.name.removesuffix(".tif"), score, None if len(known) == 2 else now, props)
    add_assets(item, outputs, CHANGE_ASSETS)
    for scene, title in ((before, "scene before (the map's grid)"), (after, "scene after")):
        item.add_link(pystac.Link("derived_from", link_href(scene), media_type="image/tiff", title=title))
    if model_path is not None:
        item.add_link(pystac.Link("geossl:model", link_href(model_path), title="encoder or land-cover model folder"))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def write_change_item(outputs: dict[str, Path | None], before: str, after: str, tags: dict[str, str],
                      dates: tuple[dt.datetime | None, dt.datetime | None], model_path: str | Path | None) -> Path:
    """Write :func:`change_item` to ``outputs["stac"]`` atomically; returns its path."""
    path = outputs["stac"]
    assert path is not None
    atomic_write_json(path, change_item(outputs, before, after, tags, dates, model_path))
    return path
