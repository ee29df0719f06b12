"""Stacks and temporal views (issue #26): dates and stacks against hand-worked references, the other date's
tile against an independent reprojection of the same ground (across CRSs), unreadable dates skipped and
counted, the multi-crop's other-date crops against the plain crops, and a temporal pretraining on the real
NAIP series resumed bitwise."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import calculate_default_transform, reproject

from geossl.config import load_config
from geossl.config_checks import ConfigError
from geossl.data.stacks import group_stacks, read_dates_csv, scene_dates
from geossl.data.temporal import TemporalTileDataset

UTC = dt.UTC


def _date(y: int, m: int = 1, d: int = 1) -> dt.datetime:
    return dt.datetime(y, m, d, tzinfo=UTC)


def test_group_stacks_against_a_hand_worked_case() -> None:
    box = shapely.box
    footprints = [box(0, 0, 10, 10),      # 0: 2019
                  box(1, 0, 11, 10),      # 1: 2020, 90 % of 0: same ground
                  box(9, 0, 19, 10),      # 2: 2020, 10 % of 0 and 20 % of 1: a neighbour, another stack
                  box(0.5, 0, 10.5, 10),  # 3: 2019 again: in 0's stack but not another date of 0
                  box(0, 0, 10, 10),      # 4: no date: in no stack
                  box(50, 50, 60, 60),    # 5: 2018, alone
                  box(9.5, 0, 19.5, 10)]  # 6: 2021, 95 % of 2: 2 and 6 form a stack
    dates = [_date(2019), _date(2020), _date(2020), _date(2019), None, _date(2018), _date(2021)]
    stacks = group_stacks(footprints, dates, min_overlap=0.5)
    assert stacks.stack == [0, 0, 1, 0, -1, -1, 1]
    assert stacks.partners[0] == [1] and stacks.partners[3] == [1] and stacks.partners[1] == [0, 3]
    assert stacks.partners[2] == [6] and stacks.partners[6] == [2] and stacks.partners[5] == []
    assert "7 scene(s) in 2 stack(s) of 3, 2 scene(s); 1 without another date of their ground, 1 without a date" \
        == stacks.summary()


def test_dates_come_from_the_csv_then_the_tiff_tag_then_the_name(tmp_path: Path) -> None:
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "uint8", "crs": "EPSG:32632",
               "transform": from_bounds(0, 0, 40, 40, 4, 4)}
    names = ["a_20190904.tif", "b_20190904.tif", "c_2015.tif", "d.tif"]
    for name in names:
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(np.zeros((1, 4, 4), np.uint8))
            if name.startswith("b"):
                dst.update_tags(TIFFTAG_DATETIME="2020:06:01 10:30:00")
    csv = tmp_path / "dates.csv"
    csv.write_text(f"uri,date\n{tmp_path / names[0]},2018-07-16\nc_2015.tif,2016-05-02\n")
    got = scene_dates([str(tmp_path / n) for n in names], csv)
    assert got == [_date(2018, 7, 16), dt.datetime(2020, 6, 1, 10, 30, tzinfo=UTC), _date(2016, 5, 2), None]
    csv.write_text("uri,date\nx.tif,16/07/2018\n")
    with pytest.raises(ValueError, match=r"dates.csv: line 2: '16/07/2018' is not an ISO date"):
        read_dates_csv(csv)


def test_the_shared_series_form_one_stack_each(shared_data: Path) -> None:
    naip = sorted((shared_data / "timeseries" / "naip_north_dakota").glob("*.tif"))
    landsat = sorted((shared_data / "timeseries" / "landsat_pucallpa").glob("*.tif"))
    from geossl.data.scene_index import footprint_lonlat, scene_info

    uris = [str(p) for p in naip + landsat]
    stacks = group_stacks([footprint_lonlat(scene_info(u)) for u in uris], scene_dates(uris))
    assert stacks.stack == [0] * 9 + [1] * 7
    assert all(len(p) == 8 for p in stacks.partners[:9]) and all(len(p) == 6 for p in stacks.partners[9:])


def _two_dates_in_two_crs(src_path: Path, folder: Path) -> tuple[Path, Path]:
    """A real NAIP window as date 1 (its own UTM CRS) and the same ground warped to EPSG:4326 as date 2."""
    folder.mkdir(parents=True, exist_ok=True)
    first, second = folder / "quad_20190904.tif", folder / "quad_20200831.tif"
    with rasterio.open(src_path) as src:
        window = rasterio.windows.Window(100, 100, 400, 400)
        data = src.read(window=window)
        profile = {**src.profile, "width": 400, "height": 400, "transform": src.window_transform(window),
                   "driver": "GTiff", "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        with rasterio.open(first, "w", **profile) as dst:
            dst.write(data)
    with rasterio.open(first) as a:
        transform, width, height = calculate_default_transform(a.crs, "EPSG:4326", a.width, a.height, *a.bounds)
        out = np.zeros((a.count, height, width), np.uint8)
        reproject(a.read(), out, src_transform=a.transform, src_crs=a.crs, dst_transform=transform,
                  dst_crs="EPSG:4326", resampling=Resampling.bilinear, dst_nodata=0)
        with rasterio.open(second, "w", **{**a.profile, "crs": "EPSG:4326", "transform": transform, "width": width,
                                           "height": height, "nodata": 0}) as dst:
            dst.write(out)
    return first, second


def test_the_other_date_covers_the_same_ground_across_crs(shared_data: Path, tmp_path: Path) -> None:
    naip = sorted((shared_data / "timeseries" / "naip_north_dakota").glob("*.tif"))[0]
    first, second = _two_dates_in_two_crs(naip, tmp_path / "series")
    ds = TemporalTileDataset(str(tmp_path / "series"), tile_size=32, length=12, min_valid_fraction=0.9, seed=3)
    anchors = set()
    for i in range(len(ds)):
        item = ds[i]
        s, o = int(item["scene"]), int(item["scene_other"])
        assert s != o and item["dates_skipped"] == 0
        anchors.add(ds.scenes[s].uri)
        # reference: the other file reprojected (rasterio.warp, not the dataset's WarpedVRT) onto the item's bounds
        left, bottom, right, top = item["bounds"].tolist()
        dst_transform = from_bounds(left, bottom, right, top, 32, 32)
        want = np.zeros((4, 32, 32), np.float32)
        with rasterio.open(ds.scenes[o].uri) as other:
            reproject(other.read().astype(np.float32), want, src_transform=other.transform, src_crs=other.crs,
                      dst_transform=dst_transform, dst_crs=item["crs"], resampling=Resampling.bilinear,
                      src_nodata=0, dst_nodata=np.nan)
        got = item["image_other"].numpy().astype(np.float32)
        both = item["mask_other"].numpy() & np.isfinite(want).all(0)
        assert both.mean() > 0.85
        assert np.abs(got - want)[:, both].mean() < 1.0, "the other date's tile is not on the same ground"
        # and it is the same ground as the first date's own tile (the second date is a warp of the first)
        first_tile = item["image"].numpy().astype(np.float32)
        assert np.abs(got - first_tile)[:, both].mean() < 12.0
    assert anchors == {str(first), str(second)}  # both directions: UTM onto lon/lat and lon/lat onto UTM
    again = TemporalTileDataset(str(tmp_path / "series"), tile_size=32, length=12, min_valid_fraction=0.9, seed=3)
    for i in (0, 5):  # a new dataset (a resumed run) draws the same pairs
        a, b = ds[i], again[i]
        assert torch.equal(a["image_other"], b["image_other"]) and a["scene_other"] == b["scene_other"]


def test_unreadable_dates_are_skipped_and_counted(shared_data: Path, tmp_path: Path, capsys) -> None:
    series = tmp_path / "series"
    series.mkdir()
    naip = sorted((shared_data / "timeseries" / "naip_north_dakota").glob("*.tif"))
    for path in naip[:3]:
        shutil.copy(path, series / path.name)
    (series / "m_4709963_se_14_1_20170827.tif").write_bytes(b"not a tiff")  # header unreadable: out at start
    ds = TemporalTileDataset(str(series), tile_size=32, length=16, seed=0)
    assert list(ds.unreadable) == [str(series / "m_4709963_se_14_1_20170827.tif")]
    assert "skipped" in capsys.readouterr().err
    # a date whose pixels fail mid-run (truncated after the header was read) is passed over and counted
    broken = ds.scenes[1].uri
    data = Path(broken).read_bytes()
    Path(broken).write_bytes(data[: len(data) // 3])
    items = [ds[i] for i in range(len(ds))]
    assert sum(int(item["dates_skipped"]) for item in items) > 0
    assert all(1 not in (int(item["scene"]), int(item["scene_other"])) for item in items)  # never served
    err = capsys.readouterr().err
    assert err.count(f"passing over {broken}") == 1, err  # named once, counted every time


def test_other_date_crops_are_the_plain_crops_of_the_other_images() -> None:
    from geossl.config_schema import AugmentConfig
    from geossl.dino.augment import MultiCropAugment

    cfg = AugmentConfig(global_size=16, local_size=8, n_local=4, temporal=True, temporal_locals=True)
    aug = MultiCropAugment(cfg, [100.0] * 3, [50.0] * 3, (0.0, 255.0))
    a = torch.rand(2, 3, 32, 32) * 255
    b = torch.rand(2, 3, 32, 32) * 255

    def crops(images: torch.Tensor, other: torch.Tensor | None = None) -> list[torch.Tensor]:
        return aug(images, generator=torch.Generator().manual_seed(7), images_other=other)

    plain_a, plain_b, mixed = crops(a), crops(b), crops(a, b)
    assert all(torch.equal(x, y) for x, y in zip(crops(a, a), plain_a, strict=True))  # same date: unchanged
    from_b = {1, 3, 5}  # global-2, then locals 1 and 3 (crops 2.. are locals 0..)
    for k, crop in enumerate(mixed):
        assert torch.equal(crop, (plain_b if k in from_b else plain_a)[k]), k


def test_temporal_views_need_scenes() -> None:
    with pytest.raises(ConfigError, match="augment.temporal': temporal views need data.kind scenes"):
        load_config(None, ["augment.temporal=true", "data.kind=patches"])
    with pytest.raises(ConfigError, match="augment.temporal_locals': needs augment.temporal"):
        load_config(None, ["augment.temporal_locals=true", "data.kind=scenes"])


@pytest.mark.slow  # two short pretraining runs and a resume: about 20 s on 2 cores
def test_temporal_pretraining_on_the_naip_series_resumes_bitwise(shared_data: Path, tmp_path: Path, capsys) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dino_helpers import TINY, SignalAt

    from geossl.dino.checkpoint import load_checkpoint_file
    from geossl.dino.train import pretrain

    stats = tmp_path / "stats.json"
    stats.write_text('{"bands": ["r", "g", "b"], "mean": [120.0, 120.0, 110.0], "std": [50.0, 45.0, 40.0], '
                     '"p2": [0.0, 0.0, 0.0], "p98": [255.0, 255.0, 255.0], "dtype": "uint8"}')
    series = shared_data / "timeseries" / "naip_north_dakota"
    cfg = load_config(None, [*TINY, "data.kind=scenes", f"data.paths=[{series}]", "data.bands=[1,2,3]",
                             f"data.stats={stats}", "data.tiles_per_epoch=24", "optim.epochs=2",
                             "augment.temporal=true", "augment.temporal_locals=true"])  # 3 steps an epoch, 6 in all
    straight = pretrain(cfg, tmp_path / "straight")
    assert straight["status"] == "finished" and straight["steps"] == 6
    assert "temporal views: 9 scene(s) in 1 stack(s) of 9 scene(s)" in capsys.readouterr().err
    assert pretrain(cfg, tmp_path / "resumed", callbacks=[SignalAt(4)])["status"] == "interrupted"
    assert pretrain(cfg, tmp_path / "resumed")["steps"] == 6
    a = load_checkpoint_file(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint_file(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scenes_without_two_dates_of_one_ground_are_refused(shared_data: Path) -> None:
    one = sorted((shared_data / "timeseries" / "naip_north_dakota").glob("*.tif"))[0]
    with pytest.raises(ValueError, match=r"augment.temporal: no two dates of the same ground among 1 scene\(s\)"):
        TemporalTileDataset(str(one), tile_size=32, length=4)
