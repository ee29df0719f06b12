"""``geossl sagemaker merge`` (issue #25): the host folders of a Processing job, on a moto S3, gathered into the
products of one folder. What is checked: the areas of the merged ``areas.csv`` are each host's own rows under
the host's name, the Collection's item links reach every host's STAC Items, the VRTs read back the hosts'
pixels at their places, and only the products are uploaded (no map is replaced)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from bench.synthetic import make_tiny_model
from geossl.cli import main
from geossl.data.s3 import s3_client, upload_dir

FAST = ["--tile-size", "32", "--stride", "64", "--bands", "1,2,3", "--no-preview", "--quiet"]
LANDSAT, NAIP = "landsat7_300m_RGB.byte.tif", "naip_5m_north_dakota_2019.tif"


def _areas(path: Path) -> list[tuple[str, str, str]]:
    with path.open() as f:
        return sorted((r["map"], r["class"], r["pixels"]) for r in csv.DictReader(f))


@pytest.mark.slow  # two classify runs and a moto server: about 10 s idle
def test_merge_of_an_s3_job_gathers_every_host(scenes_dir: Path, moto_server: str, tmp_path: Path, capsys) -> None:
    model = make_tiny_model(tmp_path / "model", img_size=32)
    job = tmp_path / "job"
    for host, scene in (("algo-1", LANDSAT), ("algo-2", NAIP)):  # what two instances of the job upload
        share = tmp_path / "shares" / host
        share.mkdir(parents=True)
        shutil.copy(scenes_dir / scene, share / scene)
        assert main(["classify", "--model", str(model), "--input", str(share), "--out", str(job / host), *FAST]) == 0
    s3_client().create_bucket(Bucket="geossl-test")
    upload_dir(job, "s3://geossl-test/maps/job-1/")
    upload_dir(model, "s3://geossl-test/model/")
    before = {o["Key"] for o in s3_client().list_objects_v2(Bucket="geossl-test", Prefix="maps/")["Contents"]}
    capsys.readouterr()

    cache = tmp_path / "cache"
    assert main(["sagemaker", "merge", "--out", "s3://geossl-test/maps/job-1/", "--model", "s3://geossl-test/model/",
                 "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "merge: 2 host folder(s), 0 failed scene(s) in their manifests; 2 map(s)" in out, out

    after = {o["Key"] for o in s3_client().list_objects_v2(Bucket="geossl-test", Prefix="maps/")["Contents"]}
    new = {k.removeprefix("maps/job-1/") for k in after - before}
    assert {"collection.json", "areas.csv"} <= new and all("/" not in k for k in new), new  # top level only
    merged = cache / "job"
    expected = [(f"{host}/{m}", c, p) for host in ("algo-1", "algo-2") for m, c, p in _areas(job / host / "areas.csv")]
    assert _areas(merged / "areas.csv") == sorted(expected)

    collection = json.loads((merged / "collection.json").read_text())
    items = sorted(link["href"] for link in collection["links"] if link["rel"] == "item")
    assert [href.split("/")[1] for href in items] == ["algo-1", "algo-2"]
    assert all((merged / href).is_file() for href in items)

    vrts = sorted(merged.glob("classes*.vrt"))
    assert len(vrts) == 2  # the two scenes are in two CRSs: one VRT each
    for host in ("algo-1", "algo-2"):
        (scene_map,) = (merged / host).glob("*_classes.tif")
        with rasterio.open(scene_map) as src:
            want, bounds, crs = src.read(1), src.bounds, src.crs
        (vrt,) = [v for v in vrts if rasterio.open(v).crs == crs]
        with rasterio.open(vrt) as src:
            got = src.read(1, window=from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths())
        np.testing.assert_array_equal(got, want)


def test_merge_without_host_folders_names_the_folder(tmp_path: Path, capsys) -> None:
    model = make_tiny_model(tmp_path / "model", img_size=32)
    (tmp_path / "job").mkdir()
    assert main(["sagemaker", "merge", "--out", str(tmp_path / "job"), "--model", str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no host folder with a manifest.jsonl" in err and str(tmp_path / "job") in err
