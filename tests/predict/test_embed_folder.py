"""``geossl embed --out FOLDER`` (issue #25): many real scenes, one GeoParquet each as a dataset partitioned by
scene, with classify's run manifest: a bad scene is recorded and the others go on, a rerun does no work, the
partitions read back as one table whose rows equal a plain one-file ``embed`` of each scene."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from bench.synthetic import make_tiny_encoder
from geossl.cli import main
from geossl.predict.embed_folder import DATASET_DIR
from geossl.predict.manifest import Manifest

FAST = ["--tile-size", "32", "--stride", "96", "--bands", "1,2,3", "--quiet"]
LANDSAT, NAIP = "landsat7_300m_RGB.byte.tif", "naip_5m_north_dakota_2019.tif"


@pytest.fixture()
def archive(scenes_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    for folder, name in (("a", LANDSAT), ("b", LANDSAT), ("a", NAIP)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scenes_dir / name, root / folder / ("x.tif" if name == LANDSAT else "naip.tif"))
    (root / "b" / "broken.tif").write_bytes((scenes_dir / NAIP).read_bytes()[:200_000])  # truncated
    return root


def test_a_folder_of_scenes_becomes_a_partitioned_dataset(archive: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    encoder = make_tiny_encoder(tmp_path / "enc", img_size=32)
    out = tmp_path / "emb"
    command = ["embed", "--encoder", str(encoder), "--input", str(archive / "*" / "*.tif"), "--out", str(out), *FAST]
    assert main(command) == 1  # one scene failed
    captured = capsys.readouterr()
    assert "3 done, 0 skipped as current, 1 failed" in captured.out
    assert captured.err.count("geossl embed: error:") == 1 and "broken.tif" in captured.err
    statuses = {Path(key).parent.name + "/" + Path(key).name: r["status"] for key, r in Manifest(out).latest.items()}
    assert statuses == {"a/x.tif": "done", "b/x.tif": "done", "a/naip.tif": "done", "b/broken.tif": "failed"}

    table = gpd.read_parquet(out / DATASET_DIR)  # every partition as one GeoDataFrame
    assert sorted(table["scene"].astype(str).unique()) == ["naip", "x_a", "x_b"]
    for scene, stem in ((archive / "a" / "x.tif", "x_a"), (archive / "a" / "naip.tif", "naip")):
        one_file = tmp_path / f"{stem}.parquet"
        assert main(["embed", "--encoder", str(encoder), "--input", str(scene), "--out", str(one_file), *FAST]) == 0
        alone = gpd.read_parquet(one_file)
        part = table[table["scene"].astype(str) == stem].sort_values(["row_off", "col_off"])
        alone = alone.sort_values(["row_off", "col_off"])
        assert len(part) == len(alone) > 0
        np.testing.assert_array_equal(np.stack(part["embedding"]), np.stack(alone["embedding"]))
        assert part.geometry.reset_index(drop=True).equals(alone.geometry.reset_index(drop=True))

    capsys.readouterr()
    assert main(command) == 1  # the same command again: only the failed scene is tried
    assert "0 done, 3 skipped as current, 1 failed" in capsys.readouterr().out


def test_a_folder_is_refused_for_stacks_and_for_tiles(archive: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    encoder = make_tiny_encoder(tmp_path / "enc", img_size=32)
    assert main(["embed", "--encoder", str(encoder), "--input", str(archive / "a"), "--out", str(tmp_path / "o"),
                 "--stacks", *FAST]) == 1
    assert "--stacks writes one .parquet file" in capsys.readouterr().err
    chip = tmp_path / "chip.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(chip)
    assert main(["embed", "--encoder", str(encoder), "--input", str(chip), "--out", str(tmp_path / "o2"),
                 "--mode", "tiles", *FAST]) == 1
    assert "is not a scene" in capsys.readouterr().err
