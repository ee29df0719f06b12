"""Label files made from the shared data, for the README's worked example and the tests of labels as geodata.

    python bench/label_examples.py --out runs/labels

writes, from ``$GEOSSL_DATA`` (default ``../shared/data``):

- ``eurosat_ms_points.geojson``: the centre of every EuroSAT MS patch (EPSG:4326) with its class and file;
- ``eurosat_ms_footprints.gpkg``: the same patches' footprints as polygons (EPSG:4326);
- ``naip_landcover.tif``: a 3-class map over the NAIP scene (1 water: NIR < 60; 2 vegetation: NDVI > 0.3;
  3 other), reprojected to EPSG:3857 at 7 m, so it shares neither CRS nor grid with the scene;
- ``naip_fields.geojson``: square polygons over the NAIP scene in EPSG:4326 (field ``landcover``): Water
  where that map's majority is water, else Land.

The EuroSAT MS patches are georeferenced GeoTIFFs in several UTM zones: taken as scenes, their centre
points reproduce the class-folder dataset exactly, which is what the equality test checks.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from geossl.settings import data_root

NAIP = "scenes/naip_5m_north_dakota_2019.tif"
NAIP_CLASSES = {1: "Water", 2: "Vegetation", 3: "Other"}


def eurosat_ms_labels(root: Path, out: Path) -> tuple[Path, Path]:
    """Centre points (GeoJSON) and footprints (GeoPackage) of the EuroSAT MS patches, in EPSG:4326, in
    ``labels.csv`` order."""
    ms = root / "eurosat-ms"
    with open(ms / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    points, footprints = [], []
    for row in rows:
        with rasterio.open(ms / row["path"]) as src:
            centre = shapely.Point(src.transform @ (src.width / 2, src.height / 2))
            points.append(gpd.GeoSeries([centre], crs=src.crs).to_crs(4326).iloc[0])
            footprints.append(gpd.GeoSeries([shapely.box(*src.bounds)], crs=src.crs).to_crs(4326).iloc[0])
    attrs = {"label": [r["label"] for r in rows], "file": [r["path"] for r in rows]}
    out.mkdir(parents=True, exist_ok=True)
    points_path, polygons_path = out / "eurosat_ms_points.geojson", out / "eurosat_ms_footprints.gpkg"
    gpd.GeoDataFrame(attrs, geometry=points, crs=4326).to_file(points_path, driver="GeoJSON")
    gpd.GeoDataFrame(attrs, geometry=footprints, crs=4326).to_file(polygons_path, driver="GPKG")
    return points_path, polygons_path


def naip_classes(image: np.ndarray) -> np.ndarray:
    """1 water, 2 vegetation, 3 other (uint8), from the NAIP R, G, B, NIR bands; 0 where any band is 0."""
    red, nir = image[0].astype(np.float64), image[3].astype(np.float64)
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    classes = np.full(red.shape, 3, dtype=np.uint8)
    classes[ndvi > 0.3] = 2
    classes[nir < 60] = 1
    classes[(image == 0).any(axis=0)] = 0
    return classes


def naip_label_raster(root: Path, out_path: Path, crs: str = "EPSG:3857", res: float = 7.0) -> Path:
    """The NAIP scene's 3-class map, reprojected (nearest) to ``crs`` at ``res`` units, nodata 0."""
    with rasterio.open(root / NAIP) as src:
        classes = naip_classes(src.read())
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds,
                                                               resolution=res)
        dst = np.zeros((height, width), dtype=np.uint8)
        reproject(classes, dst, src_transform=src.transform, src_crs=src.crs, src_nodata=0, dst_transform=transform,
                  dst_crs=crs, dst_nodata=0, resampling=Resampling.nearest)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
                   transform=transform, nodata=0, compress="deflate")
    with rasterio.open(out_path, "w", **profile) as dst_file:
        dst_file.write(dst, 1)
    return out_path


def naip_fields(root: Path, out_path: Path, size_m: float = 400.0, step_m: float = 700.0) -> Path:
    """Square "fields" on a regular grid over the NAIP scene (EPSG:4326), Water where the map under one is
    mostly water, else Land: polygons several chips large, for the polygon path and its splits."""
    with rasterio.open(root / NAIP) as src:
        classes = naip_classes(src.read())
        left, bottom, right, top = src.bounds
        polys, labels = [], []
        for x in np.arange(left + 100, right - size_m, step_m):
            for y in np.arange(bottom + 100, top - size_m, step_m):
                box = shapely.box(x, y, x + size_m, y + size_m)
                r0, c0 = src.index(x, y + size_m)
                r1, c1 = src.index(x + size_m, y)
                values = classes[r0:r1, c0:c1]
                values = values[values > 0]
                labels.append("Water" if np.bincount(values).argmax() == 1 else "Land")
                polys.append(box)
        frame = gpd.GeoDataFrame({"landcover": labels}, geometry=polys, crs=src.crs).to_crs(4326)
    frame.to_file(out_path, driver="GeoJSON")
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="data root (default: $GEOSSL_DATA or ../shared/data)")
    args = parser.parse_args()
    root = args.data or data_root()
    points, polygons = eurosat_ms_labels(root, args.out)
    raster = naip_label_raster(root, args.out / "naip_landcover.tif")
    fields = naip_fields(root, args.out / "naip_fields.geojson")
    print(json.dumps({"points": str(points), "polygons": str(polygons), "label_raster": str(raster),
                      "fields": str(fields), "class_names": ",".join(f"{k}={v}" for k, v in NAIP_CLASSES.items())}))


if __name__ == "__main__":
    main()
