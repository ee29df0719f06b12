"""The STAC Item beside a class map: core schema (validated offline against pystac's bundled STAC 1.1.0
item schema), projection and raster extensions read back through pystac's own accessors, datetime rules."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
import rasterio
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from bench.synthetic import make_tiny_model, write_synthetic_scene
from geossl.models.landcover import load_landcover_model
from geossl.predict.scene import classify_scene


def validate_core_offline(item: dict) -> None:
    """pystac's validator with only its bundled (local) schemas: the core Item schema, no network.
    The extension schemas are not bundled, so they are checked through pystac's accessors instead."""
    validator = JsonSchemaSTACValidator()
    validator.validate_core(item, pystac.STACObjectType.ITEM, item["stac_version"], href="item.json")


def test_item_beside_the_map(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "m", img_size=32)
    scene = write_synthetic_scene(tmp_path / "s.tif", 128, 96, nodata=0, border=10)
    with rasterio.open(scene, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2019:07:15 10:30:00")
    res = classify_scene(load_landcover_model(model_dir), str(scene), tmp_path / "o", stride=16, probs=True,
                         probs_dtype="uint8", progress=False, model_path=model_dir)
    assert res.stac == tmp_path / "o" / "s_classes.stac.json"
    data = json.loads(res.stac.read_text())
    validate_core_offline(data)
    item = pystac.Item.from_dict(data)
    assert item.datetime is not None and item.datetime.isoformat() == "2019-07-15T10:30:00+00:00"
    assert item.properties["geossl:datetime_source"] == "scene" and item.properties["geossl:blend"] == "mean"
    proj = ProjectionExtension.ext(item)
    assert proj.epsg == 32632 and proj.shape == [6, 8]
    with rasterio.open(res.class_map) as m:
        assert proj.transform == list(m.transform)[:6] and proj.bbox == list(m.bounds)
    lon0, lat0, lon1, lat1 = item.bbox
    assert 8.9 < lon0 < lon1 < 9.1 and 45.0 < lat0 < lat1 < 45.2  # UTM 32N, 500 km E: near 9 deg E
    ring = item.geometry["coordinates"][0]
    assert ring[0] == ring[-1] and min(p[0] for p in ring) == lon0 and max(p[1] for p in ring) == lat1
    assert set(item.assets) == {"classes", "probs", "geojson", "preview"}
    for key, asset in item.assets.items():
        assert (res.stac.parent / asset.href).is_file(), key
    bands = RasterExtension.ext(item.assets["classes"]).bands
    assert bands is not None and len(bands) == 1 and bands[0].nodata == 255 and bands[0].data_type == "uint8"
    probs = RasterExtension.ext(item.assets["probs"]).bands
    assert probs is not None and len(probs) == 10 and probs[0].scale == pytest.approx(1 / 254)
    links = {link.rel: link.href for link in item.links}
    assert links["derived_from"] == str(scene.resolve()) and links["geossl:model"] == str(model_dir.resolve())
    assert not [p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]


def test_datetime_falls_back_to_processing_time_and_can_be_skipped(tmp_path: Path) -> None:
    model = load_landcover_model(make_tiny_model(tmp_path / "m", img_size=32))
    scene = write_synthetic_scene(tmp_path / "s.tif", 64, 64, nodata=None, crs="EPSG:3035")
    res = classify_scene(model, str(scene), tmp_path / "o", preview=False, progress=False)
    data = json.loads(res.stac.read_text())
    validate_core_offline(data)
    assert data["properties"]["datetime"] == data["properties"]["created"]
    assert data["properties"]["geossl:datetime_source"] == "processing"
    assert "geossl:model" not in {link["rel"] for link in data["links"]}
    assert set(data["assets"]) == {"classes", "geojson"}
    bad = dict(data, properties={k: v for k, v in data["properties"].items() if k != "datetime"})
    with pytest.raises(pystac.errors.STACValidationError):  # the validator really checks the core rules
        validate_core_offline(bad)
    res2 = classify_scene(model, str(scene), tmp_path / "n", preview=False, progress=False, stac=False)
    assert res2.stac is None and not (tmp_path / "n" / "s_classes.stac.json").exists()
