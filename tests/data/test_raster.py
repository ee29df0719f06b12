"""The one raster layer (geossl.data.raster): every reader agrees on pixels and validity, the rule matches
a numpy reference, and the planner reproduces the two planners it replaced."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from geossl.data import raster as raster_layer
from geossl.data import scenes
from geossl.data.raster import (
    WindowReader,
    axis_plan,
    comparable_nodata,
    parse_band_indices,
    plan_axis,
    raster_env,
    valid_mask,
)
from geossl.models.encoder import EncoderMeta
from geossl.predict.tiles import read_tile
from geossl.scene import reader as scene_reader
from geossl.scene.bands import fill_invalid

REPO = Path(__file__).resolve().parents[2]
LANDSAT = "landsat7_300m_RGB.byte.tif"
REAL_SCENES = ["naip_5m_north_dakota_2019.tif", "s2_like_10m_netherlands_cog.tif", LANDSAT]
W, H = 48, 40  # not square: a transposed window would show


def meta_for(count: int, mean: float = 100.0, gsd: float | None = None) -> EncoderMeta:
    """A model description for ``count`` bands (the readers need only its bands, means and gsd)."""
    return EncoderMeta(
        timm_name="vit_tiny_patch16_224", timm_kwargs={"in_chans": count},
        bands=[f"band_{i}" for i in range(1, count + 1)], mean=[mean + i for i in range(count)],
        std=[1.0] * count, patch_size=8, img_size=32, embed_dim=8, gsd=gsd,
    )  # fmt: skip


def reference_valid(array: np.ndarray, nodata: list[float | None], mask: np.ndarray | None = None
                    ) -> np.ndarray:
    """The rule written independently: finite in every band, not that band's nodata, explicit mask != 0."""
    valid = np.isfinite(array.astype(np.float64)).all(axis=0)
    for band, value in zip(array, nodata, strict=True):
        if value is not None and not math.isnan(value):
            valid &= band.astype(np.float64) != value
    return valid if mask is None else valid & (mask != 0)


def padded(full: np.ndarray, col: int, row: int, width: int, height: int, fill: float) -> np.ndarray:
    """The window of ``full`` (C, H, W) with everything outside it set to ``fill``: numpy, no GDAL."""
    out = np.full((full.shape[0], height, width), fill, dtype=full.dtype)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + width, full.shape[2]), min(row + height, full.shape[1])
    if c1 > c0 and r1 > r0:
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = full[:, r0:r1, c0:c1]
    return out


def write_window_tile(src: rasterio.DatasetReader, path: Path, col: int, row: int, fill: float) -> str:
    """The window as its own GeoTIFF via rasterio's boundless read; outside pixels get an internal mask."""
    window = Window(col, row, W, H)
    data = src.read(window=window, boundless=True, fill_value=fill)
    inside = padded(np.ones((1, src.height, src.width), np.uint8), col, row, W, H, 0)[0]
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=W, height=H, count=src.count, dtype=src.dtypes[0], crs=src.crs,
        transform=rasterio.windows.transform(window, src.transform), nodata=src.nodata,
    ) as dst:  # fmt: skip
        dst.write(data)
        if not inside.all():
            dst.write_mask(inside * 255)
    return str(path)


def windows_for(width: int, height: int, full: np.ndarray, nodata: float | None) -> list[tuple[int, int]]:
    """Inside, across each edge, two corners, and (when there is one) around a pixel that is nodata in
    some bands only: the pixel the old inference rule called valid."""
    origins = [(10, 12), (-20, 30), (width - 30, 30), (30, -15), (30, height - 25), (-7, -9)]
    origins.append((width - 20, height - 11))
    if nodata is not None:
        some = (full == nodata).any(axis=0) & ~(full == nodata).all(axis=0)
        if some.any():
            r, c = np.argwhere(some)[0]
            origins.append((int(c) - W // 2, int(r) - H // 2))
    return origins


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_SCENES)
def test_training_inference_and_tile_readers_agree(scenes_dir: Path, name: str, tmp_path: Path) -> None:
    uri = str(scenes_dir / name)
    with rasterio.open(uri) as src:
        full, nodata, count = src.read(), src.nodata, src.count
        fill = nodata if nodata is not None else 0
        meta = meta_for(count, mean=float(np.median(full)))
        training = scenes.SceneReader(scenes.scene_info(uri))
        with scene_reader.ModelSceneReader(uri, meta, resample=False) as inference:
            assert inference.target_res is None
            assert (inference.width, inference.height) == (src.width, src.height)
            for k, (col, row) in enumerate(windows_for(src.width, src.height, full, nodata)):
                data, valid = training.read(col, row, W, H)
                expected = padded(full, col, row, W, H, fill)
                inside = padded(np.ones((1, *full.shape[1:]), bool), col, row, W, H, False)[0]
                ref = reference_valid(expected, list(src.nodatavals)) & inside
                assert data.dtype == full.dtype and np.array_equal(data, expected), (col, row)
                assert np.array_equal(valid, ref), (col, row)
                image = data.astype(np.float32)
                fill_invalid(image[None], valid[None], meta.mean)
                inf_image, inf_valid = inference.read(col, row, W, H)
                assert np.array_equal(inf_valid, valid) and np.array_equal(inf_image, image), (col, row)
                tile = read_tile(write_window_tile(src, tmp_path / f"w{k}.tif", col, row, fill), meta)
                assert np.array_equal(tile.valid, valid) and np.array_equal(tile.image, image), (col, row)
    ds = scenes.RandomTileDataset(uri, tile_size=32, length=3, min_valid_fraction=0.0, seed=2)
    for i in range(3):  # the training dataset's own path: same pixels and mask as the inference reader
        _, window, data, valid = ds.draw(i)
        with scene_reader.ModelSceneReader(uri, meta, resample=False) as inference:
            inf_image, inf_valid = inference.read(int(window.col_off), int(window.row_off), 32, 32)
        image = data.astype(np.float32)
        fill_invalid(image[None], valid[None], meta.mean)
        assert np.array_equal(inf_valid, valid) and np.array_equal(inf_image, image)


@pytest.mark.slow
def test_landsat_pixels_nodata_in_some_bands_are_now_invalid_at_inference(scenes_dir: Path) -> None:
    """Behaviour change: inference dropped a pixel only when ALL bands were nodata (training: any band)."""
    uri = str(scenes_dir / LANDSAT)
    with rasterio.open(uri) as src:
        full = src.read()
    with scene_reader.ModelSceneReader(uri, meta_for(3), resample=False) as inference:
        _, valid = inference.read(0, 0, inference.width, inference.height)
    any_band, all_bands = (full == 0).any(axis=0), (full == 0).all(axis=0)
    assert (any_band & ~all_bands).sum() > 100  # the scene has such pixels
    assert np.array_equal(valid, ~any_band)


def write(path: Path, array: np.ndarray, nodata: float | None = None, mask: np.ndarray | None = None,
          res: float = 10.0, **creation: object) -> str:
    """A small GeoTIFF; ``mask`` (True = valid) becomes an internal GDAL mask."""
    count, height, width = array.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=array.dtype,
        crs="EPSG:32631", transform=from_origin(400_000, 5_600_000, res, res), nodata=nodata, **creation,
    ) as dst:  # fmt: skip
        dst.write(array)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return str(path)


def per_band_nodata_vrt(path: Path, base: str, array: np.ndarray, nodata: list[float | None]) -> str:
    """GeoTIFF holds one nodata for all bands; a VRT can give each band its own (as other formats do)."""
    count, height, width = array.shape
    bands = []
    for b, value in enumerate(nodata, start=1):
        nd = f"<NoDataValue>{value}</NoDataValue>" if value is not None else ""
        bands.append(
            f'<VRTRasterBand dataType="UInt16" band="{b}">{nd}<SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{base}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/></SimpleSource></VRTRasterBand>'
        )
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:32631</SRS>'
        f"<GeoTransform>400000, 10, 0, 5600000, 0, -10</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return str(path)


def all_readers(uri: str, count: int, col: int, row: int, width: int, height: int) -> list[np.ndarray]:
    """The (h, w) masks the training reader, the inference reader and read_tile give one window."""
    _, train = scenes.SceneReader(scenes.scene_info(uri)).read(col, row, width, height)
    with scene_reader.ModelSceneReader(uri, meta_for(count), resample=False) as inference:
        _, infer = inference.read(col, row, width, height)
    masks = [train, infer]
    if (col, row) == (0, 0):
        masks.append(read_tile(uri, meta_for(count)).valid)
    return masks


def test_rule_float32_nan_inf_and_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(0, 1, (3, 30, 40)).astype(np.float32)
    array[0, 1, 2] = np.nan
    array[1, 3, 4] = np.inf
    array[2, 5, 6] = -np.inf
    array[1, 7, 8] = -9999.0  # nodata in one band only: the pixel is invalid
    array[:, 9, 10] = -9999.0
    uri = write(tmp_path / "f32.tif", array, nodata=-9999.0)
    ref = reference_valid(array, [-9999.0] * 3)
    assert ref.sum() == 30 * 40 - 5
    for mask in all_readers(uri, 3, 0, 0, 40, 30):
        assert np.array_equal(mask, ref)
    data, _ = scenes.SceneReader(scenes.scene_info(uri)).read(0, 0, 40, 30)
    assert np.isfinite(data).all() and data[0, 1, 2] == data[1, 3, 4] == -9999.0  # non-finite -> nodata
    nan_nodata = write(tmp_path / "nan.tif", array, nodata=float("nan"))  # the finite test covers it
    for mask in all_readers(nan_nodata, 3, -5, -3, 20, 20):
        assert np.array_equal(mask[3:, 5:], reference_valid(array[:, :17, :15], [None] * 3))
        assert not mask[:3].any() and not mask[:, :5].any()


def test_rule_uint16_per_band_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(1, 60_000, (3, 25, 35), dtype=np.uint16)
    array[0, 2, 3] = 0  # band 1's nodata
    array[1, 4, 5] = 65535  # band 2's nodata; band 1 is valid there: invalid
    array[2, 6, 7] = 0  # band 3 has no nodata: 0 is a value, valid
    array[1, 8, 9] = 0  # band 2's nodata is 65535, not 0: valid
    base = write(tmp_path / "base.tif", array)
    nodata = [0.0, 65535.0, None]
    uri = per_band_nodata_vrt(tmp_path / "perband.vrt", base, array, nodata)
    with rasterio.open(uri) as src:
        assert src.nodatavals == (0.0, 65535.0, None)
    ref = reference_valid(array, nodata)
    assert not ref[2, 3] and not ref[4, 5] and ref[6, 7] and ref[8, 9]
    for mask in all_readers(uri, 3, 0, 0, 35, 25):
        assert np.array_equal(mask, ref)
    _, mask = scenes.SceneReader(scenes.scene_info(uri), bands=[3]).read(0, 0, 35, 25)
    assert mask.all()  # band selection: only the selected bands' nodata counts
    data, _ = scenes.SceneReader(scenes.scene_info(uri)).read(30, 20, 10, 10)
    fills = [(data[b, 5:] == v).all() for b, v in enumerate([0, 65535, 0])]
    assert all(fills)  # outside the raster each band holds its own nodata (0 without one)


def test_rule_without_nodata_and_with_explicit_masks(tmp_path: Path) -> None:
    array = np.zeros((2, 16, 16), dtype=np.uint8)
    array[1, ::2] = 7
    plain = write(tmp_path / "plain.tif", array)  # no nodata: zeros are values
    for mask in all_readers(plain, 2, 0, 0, 16, 16):
        assert mask.all()
    explicit = np.ones((16, 16), bool)
    explicit[:4, :8] = False
    masked = write(tmp_path / "masked.tif", array + 1, nodata=8, mask=explicit)  # internal mask AND nodata
    ref = reference_valid(array + 1, [8.0, 8.0], explicit)
    assert not ref[0, 0] and not ref[6, 0] and ref[5, 0]
    for mask in all_readers(masked, 2, 0, 0, 16, 16):
        assert np.array_equal(mask, ref)
    rgba = np.concatenate([np.full((3, 16, 16), 50, np.uint8), explicit[None].astype(np.uint8) * 200])
    alpha = write(tmp_path / "alpha.tif", rgba, photometric="RGB", alpha="YES")
    _, train = scenes.SceneReader(scenes.scene_info(alpha), bands=[1, 2, 3]).read(0, 0, 16, 16)
    with scene_reader.ModelSceneReader(alpha, meta_for(3), bands=[1, 2, 3], resample=False) as inference:
        _, infer = inference.read(0, 0, 16, 16)
    assert np.array_equal(train, explicit) and np.array_equal(infer, explicit)


def test_resampled_reads_keep_the_explicit_mask(tmp_path: Path) -> None:
    """Through the WarpedVRT (5 m -> 10 m), an internal mask survives as the VRT's alpha, read as the mask."""
    array = np.full((3, 40, 40), 120, np.uint8)
    explicit = np.ones((40, 40), bool)
    explicit[:20, :10] = False
    uri = write(tmp_path / "five.tif", array, mask=explicit, res=5.0)
    with scene_reader.ModelSceneReader(uri, meta_for(3, gsd=10.0)) as inference:
        assert inference.target_res == 10.0 and (inference.width, inference.height) == (20, 20)
        _, valid = inference.read(-2, 0, 20, 20)
    expected = np.zeros((20, 20), bool)
    expected[:, 2:] = explicit[::2, ::2][:, :18]
    assert np.array_equal(valid, expected)


def test_valid_mask_and_comparable_nodata_directly() -> None:
    data = np.array([[[1.0, np.nan], [5.0, 2.0]], [[5.0, 1.0], [3.0, np.inf]]], dtype=np.float32)
    assert valid_mask(data, [None, None]).tolist() == [[True, False], [True, False]]
    assert valid_mask(data, [np.float32(5.0), None]).tolist() == [[True, False], [False, False]]
    assert valid_mask(data, [np.float32(5.0)] * 2).tolist() == [[False, False], [False, False]]
    explicit = np.array([[0, 255], [255, 255]])
    assert valid_mask(data, [None, None], explicit).tolist() == [[False, False], [True, False]]
    u8, u16, i16 = np.dtype("uint8"), np.dtype("uint16"), np.dtype("int16")
    assert comparable_nodata(300.0, u8) is None and comparable_nodata(-1.0, u16) is None  # cannot be held
    assert comparable_nodata(2.5, i16) is None and comparable_nodata(0.0, u8) == 0
    assert comparable_nodata(float("nan"), np.dtype("float32")) is None
    big = comparable_nodata(-3.40282346638529e38, np.dtype("float32"))  # GDAL's text form of -FLT_MAX
    assert big == np.finfo(np.float32).min


# Frozen copies of the two planners raster.plan_axis replaced, as they were before the merge.
def old_offsets(extent: int, size: int, stride: int, edge: str) -> list[int]:
    if edge == "pad":
        return [k * stride for k in range(math.ceil(max(extent - size, 0) / stride) + 1)]
    starts = list(range(0, extent - size + 1, stride))
    if starts[-1] + size < extent:
        starts.append(extent - size)
    return starts


def old_axis_plan(length: int, tile: int, stride: int) -> tuple[list[int], list[list[list[int]]]]:
    n_cells = length // stride
    starts, cells = [], []
    covered = np.zeros(n_cells, dtype=bool)

    def add(start: int, ks: np.ndarray) -> None:
        ks = ks[(ks >= 0) & (ks < n_cells)]
        if ks.size == 0:
            return
        lo, hi = np.clip(ks * stride - start, 0, tile), np.clip((ks + 1) * stride - start, 0, tile)
        starts.append(start)
        cells.append(np.stack([ks, lo, hi], axis=1).tolist())
        covered[ks] = True

    per_window = max(1, math.ceil(tile / stride - 0.5))
    j = 0
    while j * stride + tile <= length and j < n_cells:
        add(j * stride, np.arange(j, j + per_window))
        j += 1
    if not covered.all():
        start = length - tile
        centres = (np.arange(n_cells) + 0.5) * stride
        add(start, np.flatnonzero(((centres >= start) & (centres < length)) | ~covered))
    return starts, cells


CASES = [(100, 64, 32), (110, 64, 16), (100, 10, 40), (100, 64, 40), (934, 32, 32), (100, 32, 24),
         (64, 64, 64), (97, 32, 7), (723, 48, 48), (791, 100, 250), (343, 32, 16), (206, 32, 16),
         (718, 33, 17), (10, 4, 4), (10, 1, 4), (33, 33, 1), (1, 1, 1), (120, 32, 32), (90, 32, 32),
         (120, 32, 16), (99, 98, 97)]


@pytest.mark.parametrize("length,tile,stride", CASES)
def test_planner_matches_the_old_planners(length: int, tile: int, stride: int) -> None:
    assert plan_axis(length, tile, stride, edge="shift").starts == old_offsets(length, tile, stride, "shift")
    assert plan_axis(length, tile, stride, edge="pad").starts == old_offsets(length, tile, stride, "pad")
    if length >= stride:  # classify/embed refuse a scene smaller than one stride before planning
        plan = axis_plan(length, tile, stride)
        assert (plan.starts, [c.tolist() for c in plan.cells]) == old_axis_plan(length, tile, stride)


def test_planner_sweep_of_small_sizes() -> None:
    for length in range(1, 41):
        for tile in range(1, min(length, 12) + 1):
            for stride in range(1, 16):
                assert plan_axis(length, tile, stride).starts == old_offsets(length, tile, stride, "shift")
                padded_starts = plan_axis(length, tile, stride, edge="pad").starts
                assert padded_starts == old_offsets(length, tile, stride, "pad")
                if length >= stride:
                    plan = axis_plan(length, tile, stride)
                    old = old_axis_plan(length, tile, stride)
                    assert (plan.starts, [c.tolist() for c in plan.cells]) == old


def test_planner_length_smaller_than_tile() -> None:
    """shift: a clear error (GridTiles, classify and embed all refuse such scenes before planning; the old
    map planner returned a negative start); pad: one window at 0, as GridTiles(edge="pad") always gave."""
    assert old_axis_plan(20, 32, 16)[0] == [-12]
    with pytest.raises(ValueError, match="20 px is smaller than one 32 px window"):
        axis_plan(20, 32, 16)
    with pytest.raises(ValueError, match="smaller than one 32 px window"):
        plan_axis(20, 32, 16, edge="shift")
    assert plan_axis(20, 32, 16, edge="pad").starts == old_offsets(20, 32, 16, "pad") == [0]
    with pytest.raises(ValueError, match="no whole 50 px cell"):
        axis_plan(40, 32, 50)
    with pytest.raises(ValueError, match="edge must be one of"):
        plan_axis(40, 32, 16, edge="wrap")


def test_raster_layer_imports_without_gdal() -> None:
    """The rule and the planner are numpy: a host without rasterio can import and use them."""
    script = (
        "import importlib.abc, sys\n"
        "class NoGeo(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'rasterio', 'affine', 'pyproj', 'osgeo'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoGeo())\n"
        "import numpy as np\n"
        "from geossl.data.raster import parse_band_indices, plan_axis, valid_mask\n"
        "assert plan_axis(10, 4, 4).starts == [0, 4, 6]\n"
        "assert parse_band_indices('4,3,2') == [4, 3, 2]\n"
        "assert valid_mask(np.zeros((1, 2, 2), np.uint8), [0]).sum() == 0\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_band_numbers_have_one_strict_parser() -> None:
    """Every --bands/--rgb-bands (stats, chips, probe, classify, change, embed, attention) parses here."""
    assert parse_band_indices("4,3,2") == [4, 3, 2]
    assert parse_band_indices(" 4, 3 ,2 ") == [4, 3, 2]
    assert parse_band_indices([2, 1]) == [2, 1]  # the Python API passes numbers through the same checks
    assert parse_band_indices(None) is None and parse_band_indices("") is None  # all bands
    for text in ("1,,2", "4,3,2,", ",1", " ", "1,x", "1.5"):
        with pytest.raises(ValueError, match=r"^--rgb-bands: expected comma-separated 1-based band numbers") as exc:
            parse_band_indices(text, "--rgb-bands")
        assert len(str(exc.value).splitlines()) == 1 and repr(text) in str(exc.value)
    with pytest.raises(ValueError, match=r"^--bands: band numbers start at 1, got '0,1'"):
        parse_band_indices("0,1")


def test_stats_command_refuses_an_empty_band_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geossl.cli import main

    out = tmp_path / "stats.json"
    assert main(["stats", "--input", str(tmp_path), "--out", str(out), "--bands", "1,,2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("geossl stats: error: --bands: expected comma-separated") and "'1,,2'" in err
    assert not out.exists()


def test_raster_env_sets_gdal_options_for_local_files_and_hot_paths_skip_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with raster_env(str(tmp_path / "a.tif"), GDAL_CACHEMAX=4 << 20):
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 4 << 20
    with raster_env([tmp_path / "a.tif", tmp_path / "b.tif"]):  # a caller's env around many local reads
        assert rasterio.env.hasenv()
    path = tmp_path / "x.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:32618",
                       transform=from_origin(0, 4, 1, 1)) as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))

    def no_env(uri: object, **options: object) -> None:
        raise AssertionError(f"a local read opened a GDAL environment for {uri}")

    monkeypatch.setattr(raster_layer, "raster_env", no_env)  # open and per-read envs are for /vsis3/ only
    ds = raster_layer.open_raster(str(path))
    reader = raster_layer.WindowReader(ds, [1], str(path), own_env=True)
    assert reader.read(0, 0, 4, 4)[1].all()
    reader.close()


def test_a_truncated_tiff_names_the_file_and_gdals_reason(tmp_path: Path) -> None:
    """Regression (#23 sweep): rasterio's "Read failed. See previous exception for details." hid GDAL's words."""
    whole, cut = tmp_path / "whole.tif", tmp_path / "cut.tif"
    with rasterio.open(whole, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", tiled=True,
                       blockxsize=64, blockysize=64, crs="EPSG:32633", transform=from_origin(0, 0, 10, 10)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, 256, 256), dtype=np.uint8))
    cut.write_bytes(whole.read_bytes()[:5000])  # the header and the first tiles' offsets, not their bytes
    with rasterio.open(cut) as ds:
        reader = WindowReader(ds, [1, 2, 3], str(cut))
        with pytest.raises(ValueError) as caught:
            reader.read(0, 0, 256, 256)
    message = str(caught.value)
    assert message.startswith(f"{cut}: cannot read window (0, 0, 256, 256) (")
    assert "See previous exception" not in message and "failed" in message.split("(0, 0, 256, 256)")[1]
