"""``geossl embed --stacks`` (issue #26): one row per window and date on the grid of the stack's first date,
with the date and the stack; a scene of no stack is embedded alone with its date; the first date's rows are
exactly what a plain ``embed`` of that scene gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from bench.synthetic import make_tiny_encoder
from geossl.cli import main

FAST = ["--tile-size", "32", "--stride", "96", "--bands", "1,2,3", "--quiet"]


def test_stacks_give_one_row_per_window_and_date(shared_data: Path, tmp_path: Path) -> None:
    encoder = make_tiny_encoder(tmp_path / "enc", img_size=32)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    naip = sorted((shared_data / "timeseries" / "naip_north_dakota").glob("*.tif"))
    for path in (naip[0], naip[-1]):  # 2009 and 2020
        shutil.copy(path, scenes / path.name)
    shutil.copy(shared_data / "scenes" / "landsat7_300m_RGB.byte.tif", scenes / "landsat_1999.tif")  # elsewhere
    out = tmp_path / "stacks.parquet"
    assert main(["embed", "--encoder", str(encoder), "--input", str(scenes), "--out", str(out), "--stacks", *FAST]) == 0
    rows = gpd.read_parquet(out)

    stacked = rows[rows["stack"].notna()]
    assert set(stacked["stack"]) == {0}
    assert sorted(stacked["date"].dt.year.unique()) == [2009, 2020]
    by_window = stacked.groupby(["col_off", "row_off"])
    assert by_window.size().eq(2).all()  # every window on both dates (the quad is valid everywhere)
    for _, pair in by_window:
        first, second = pair.sort_values("date").geometry.tolist()
        assert first.equals(second)  # the same ground: the second date is read on the first date's grid
    alone = rows[rows["stack"].isna()]
    assert set(alone["source"]) == {str(scenes / "landsat_1999.tif")}
    assert (alone["date"] == pd.Timestamp("1999-01-01", tz="UTC")).all()

    plain = tmp_path / "plain.parquet"
    assert main(["embed", "--encoder", str(encoder), "--input", str(scenes / naip[0].name), "--out", str(plain),
                 *FAST]) == 0
    reference = gpd.read_parquet(plain).sort_values(["row_off", "col_off"])
    first_date = stacked[stacked["date"].dt.year == 2009].sort_values(["row_off", "col_off"])
    assert len(reference) == len(first_date)
    np.testing.assert_array_equal(np.stack(first_date["embedding"]), np.stack(reference["embedding"]))
    assert reference["stack"].isna().all() and (reference["date"].dt.year == 2009).all()


def test_an_unreadable_date_is_skipped_and_counted(shared_data: Path, tmp_path: Path, capsys) -> None:
    encoder = make_tiny_encoder(tmp_path / "enc", img_size=32)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    naip = sorted((shared_data / "timeseries" / "naip_north_dakota").glob("*.tif"))
    for path in naip[:2]:
        shutil.copy(path, scenes / path.name)
    (scenes / "m_4709963_se_14_1_20190904.tif").write_bytes(b"not a tiff")
    out = tmp_path / "stacks.parquet"
    assert main(["embed", "--encoder", str(encoder), "--input", str(scenes), "--out", str(out), "--stacks", *FAST]) == 0
    captured = capsys.readouterr()
    assert "1 unreadable skipped: " in captured.out and "m_4709963_se_14_1_20190904.tif" in captured.out
    rows = gpd.read_parquet(out)
    assert sorted(rows["date"].dt.year.unique()) == [2009, 2012] and set(rows["stack"]) == {0}
