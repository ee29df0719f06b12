"""S3 against a local moto server (127.0.0.1): upload a real scene, read tiles through /vsis3, sync a prefix."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import rasterio
import torch

from geossl.data.raster import raster_env
from geossl.data.s3 import gdal_s3_options, s3_client, sync_prefix, upload_dir
from geossl.data.scene_index import scene_info
from geossl.data.scenes import GridTiles, RandomTileDataset
from geossl.data.uris import expand_inputs

SCENE = "landsat7_300m_RGB.byte.tif"


@pytest.fixture()
def bucket(moto_server: str, scenes_dir: Path, tmp_path: Path) -> str:
    """A bucket holding one real scene and a small text file, uploaded with upload_dir."""
    s3_client().create_bucket(Bucket="geo-data")
    staging = tmp_path / "staging"
    (staging / "nested").mkdir(parents=True)
    (staging / SCENE).symlink_to(scenes_dir / SCENE)  # upload without copying the real data
    (staging / "nested" / "notes.txt").write_text("hello")
    uploaded = upload_dir(staging, "s3://geo-data/scenes")
    assert uploaded == [f"s3://geo-data/scenes/{SCENE}", "s3://geo-data/scenes/nested/notes.txt"]
    return "geo-data"


@pytest.mark.slow
def test_tiles_over_vsis3_equal_local(bucket: str, scenes_dir: Path) -> None:
    uris = expand_inputs("s3://geo-data/scenes")
    assert uris == [f"/vsis3/geo-data/scenes/{SCENE}"]  # the .txt is not a raster
    local = str(scenes_dir / SCENE)
    assert scene_info(f"s3://geo-data/scenes/{SCENE}").transform == scene_info(local).transform
    remote_ds = RandomTileDataset("s3://geo-data/scenes", tile_size=32, length=6, seed=4)
    local_ds = RandomTileDataset(local, tile_size=32, length=6, seed=4)
    for i in range(6):
        remote, here = remote_ds[i], local_ds[i]
        assert torch.equal(remote["image"], here["image"]) and torch.equal(remote["mask"], here["mask"])
        assert torch.equal(remote["bounds"], here["bounds"]) and remote["crs"] == "EPSG:32618"
    remote_grid = GridTiles(uris[0], tile_size=256, stride=256)
    local_grid = GridTiles(local, tile_size=256, stride=256)
    assert remote_grid.windows == local_grid.windows
    for k in (0, len(local_grid) - 1):
        assert torch.equal(remote_grid[k]["image"], local_grid[k]["image"])
        assert torch.equal(remote_grid[k]["transform"], local_grid[k]["transform"])


def test_raster_env_derives_gdal_endpoint_from_aws_endpoint_url(
    bucket: str, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
        monkeypatch.delenv(name, raising=False)  # only AWS_ENDPOINT_URL is left, as boto3 users have
    assert gdal_s3_options() == {
        "AWS_S3_ENDPOINT": moto_server.removeprefix("http://"), "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
    }  # fmt: skip
    uri = f"/vsis3/geo-data/scenes/{SCENE}"
    with raster_env(uri), rasterio.open(uri) as src:
        assert src.count == 3 and src.read(1, window=((300, 302), (300, 302))).shape == (2, 2)
    # with GDAL options too (classify's block cache), and a list of paths of which one is on S3
    with raster_env(["/tmp/local.tif", uri], GDAL_CACHEMAX=8 << 20), rasterio.open(uri) as src:
        config = rasterio.env.getenv()
        assert config["GDAL_CACHEMAX"] == 8 << 20 and config["AWS_HTTPS"] == "NO"
        assert config["AWS_VIRTUAL_HOSTING"] == "FALSE" and src.count == 3
    tiles = RandomTileDataset(f"s3://geo-data/scenes/{SCENE}", tile_size=16, length=2)
    assert tiles[1]["image"].shape == (3, 16, 16)


def test_sync_prefix_downloads_only_new_or_changed(bucket: str, tmp_path: Path, scenes_dir: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "mirror"
    caplog.set_level(logging.INFO, logger="geossl.data.s3")
    paths = sync_prefix("s3://geo-data/scenes", target)
    assert paths == [target / SCENE, target / "nested" / "notes.txt"]
    assert (target / SCENE).read_bytes() == (scenes_dir / SCENE).read_bytes()
    assert "2 of 2 objects downloaded" in caplog.text
    before = os.stat(target / SCENE).st_mtime_ns

    caplog.clear()
    s3_client().put_object(Bucket="geo-data", Key="scenes/nested/notes.txt", Body=b"changed!")
    s3_client().put_object(Bucket="geo-data", Key="scenes/new.txt", Body=b"new")
    paths = sync_prefix("s3://geo-data/scenes/", target)
    assert "2 of 3 objects downloaded" in caplog.text
    assert (target / "nested" / "notes.txt").read_text() == "changed!" and (target / "new.txt").read_text() == "new"
    assert os.stat(target / SCENE).st_mtime_ns == before and len(paths) == 3
    assert not list(target.rglob("*.partial"))

    single = sync_prefix(f"s3://geo-data/scenes/{SCENE}", tmp_path / "one")
    assert single == [tmp_path / "one" / SCENE]
    with pytest.raises(FileNotFoundError, match=r"s3://geo-data/nothing-here: no objects"):
        sync_prefix("s3://geo-data/nothing-here", tmp_path / "x")


def test_s3_errors_name_the_uri(bucket: str) -> None:
    with pytest.raises(FileNotFoundError, match=r"s3://geo-data/empty-prefix: nothing matches"):
        expand_inputs("s3://geo-data/empty-prefix")
    with pytest.raises(FileNotFoundError, match=r"s3://no-such-bucket/x: cannot list"):
        expand_inputs("s3://no-such-bucket/x")
    with pytest.raises(FileNotFoundError, match=r"/vsis3/geo-data/missing\.tif: cannot open as a raster"):
        scene_info("s3://geo-data/missing.tif")
