"""geossl chips: shards whose chips equal rasterio's reads, a resumable cut, a chunk-local order that
ranks share disjointly and replay on resume, pretraining on shards (bitwise resume), and S3 (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from dino_helpers import SignalAt, tiny_config
from rasterio.windows import Window

import geossl.data.shards as shards
from geossl.cli import main
from geossl.data.shards import ChipPlan, ShardDataset, chunk_local_order, cut_shards
from geossl.dino.checkpoint import load_checkpoint_file
from geossl.dino.data import ResumableSampler
from geossl.dino.train import pretrain

NAIP = "naip_5m_north_dakota_2019.tif"
LANDSAT = "landsat7_300m_RGB.byte.tif"


def plan(scenes: list[str], **kw: object) -> ChipPlan:
    base = dict(scenes=scenes, tile_size=32, mode="random", count=60, stride=None, bands=[1, 2, 3],
                min_valid_fraction=0.5, seed=0, part_size=25)
    return ChipPlan(**{**base, **kw})  # type: ignore[arg-type]


def raw_items(folder: Path) -> list[dict]:
    ds = ShardDataset(str(folder))
    return [ds._dataset()[i] for i in range(len(ds))]


@pytest.mark.slow  # LitData workers (~4-5 s): in make test, not the fast lane
def test_chips_equal_rasterio_reads_of_their_windows(scenes_dir: Path, tmp_path: Path) -> None:
    scenes = [str(scenes_dir / NAIP), str(scenes_dir / LANDSAT)]
    meta = cut_shards(plan(scenes), tmp_path / "random", workers=2, chunk_bytes="40KB", progress=False)
    assert meta["count"] == 60 and meta["parts"] == 3 and len(meta["chunk_sizes"]) > 3
    items = raw_items(tmp_path / "random")
    for item in items:
        col, row, w, h = (int(v) for v in item["window"])
        with rasterio.open(meta["scenes"][item["scene"]]) as src:
            expected = src.read([1, 2, 3], window=Window(col, row, w, h))
            assert np.array_equal(item["image"], expected)
            assert np.allclose(item["bounds"], rasterio.windows.bounds(Window(col, row, w, h), src.transform))
            valid = (expected != 0).all(axis=0) if src.nodata == 0 else np.ones((h, w), bool)
        assert np.array_equal(item["mask"], valid) and item["mask"].mean() >= 0.5
    # grid: every whole 32 px window of Landsat at stride 32 with >= 90 % valid pixels, no other
    grid = cut_shards(plan([str(scenes_dir / LANDSAT)], mode="grid", count=None, min_valid_fraction=0.9),
                     tmp_path / "grid", workers=1, progress=False)
    with rasterio.open(scenes_dir / LANDSAT) as src:
        valid = (src.read() != 0).all(axis=0)
    starts_r = list(range(0, valid.shape[0] - 32 + 1, 32)) + [valid.shape[0] - 32]
    starts_c = list(range(0, valid.shape[1] - 32 + 1, 32)) + [valid.shape[1] - 32]
    expected_windows = {(c, r) for r in dict.fromkeys(starts_r) for c in dict.fromkeys(starts_c)
                        if valid[r : r + 32, c : c + 32].mean() >= 0.9}
    got = {(int(i["window"][0]), int(i["window"][1])) for i in raw_items(tmp_path / "grid")}
    assert got == expected_windows and grid["count"] == len(expected_windows)


def test_an_interrupted_cut_resumes_from_its_finished_parts(scenes_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    scenes = [str(scenes_dir / NAIP)]
    import litdata

    real, calls = litdata.optimize, []

    def optimize_then_fail(**kwargs: object) -> None:
        calls.append(kwargs["output_dir"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted while cutting the second part
        real(**kwargs)

    monkeypatch.setattr(litdata, "optimize", optimize_then_fail)
    with pytest.raises(KeyboardInterrupt):
        cut_shards(plan(scenes), tmp_path / "chips", progress=False)
    assert not (tmp_path / "chips" / shards.META_FILE).exists()  # nothing looks finished
    monkeypatch.setattr(litdata, "optimize", real)
    with pytest.raises(ValueError, match="other settings"):
        cut_shards(plan(scenes, seed=1), tmp_path / "chips", progress=False)
    meta = cut_shards(plan(scenes), tmp_path / "chips", progress=False)
    assert meta["resumed_parts"] == 1 and meta["count"] == 60
    straight = cut_shards(plan(scenes), tmp_path / "straight", progress=False)
    key = lambda items: sorted(tuple(int(v) for v in i["window"]) for i in items)  # noqa: E731
    assert key(raw_items(tmp_path / "chips")) == key(raw_items(tmp_path / "straight"))
    assert straight["resumed_parts"] == 0
    with pytest.raises(ValueError, match="already holds chips"):
        cut_shards(plan(scenes), tmp_path / "chips", progress=False)


def test_chunk_local_order_ranks_and_resume() -> None:
    sizes = [7, 9, 9, 3, 9, 9, 8, 9, 9, 2]
    order = chunk_local_order(sizes, seed=3, epoch=1, window=2)
    assert sorted(order) == list(range(sum(sizes))) and order == chunk_local_order(sizes, 3, 1, window=2)
    assert order != chunk_local_order(sizes, 3, 2, window=2)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    chunk_of = np.searchsorted(starts, order, side="right") - 1
    pos = 0
    while pos < len(order):  # reference: each run of 2 chunks' items is contiguous in the order
        run = set(chunk_of[pos : pos + 1].tolist())
        first = chunk_of[pos]
        same = [c for c in dict.fromkeys(chunk_of[pos:].tolist())][:2]
        n = sum(sizes[c] for c in same)
        assert set(chunk_of[pos : pos + n].tolist()) == set(same) and first in run
        pos += n
    ranks = [ResumableSampler(len(order), 3, r, 2, order=lambda s, e: chunk_local_order(sizes, s, e)) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == len(order) // 2 and not set(a) & set(b)
    ranks[0].start_at(1, 5)
    assert list(ranks[0]) == a[5:]  # a resumed epoch replays exactly the items not yet seen


@pytest.mark.slow
def test_pretraining_on_shards_resumes_bitwise(scenes_dir: Path, tmp_path: Path) -> None:
    cut_shards(plan([str(scenes_dir / NAIP)], count=32, part_size=32), tmp_path / "chips", chunk_bytes="20KB",
              progress=False)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": ["r", "g", "b"], "mean": [110.0] * 3, "std": [50.0] * 3,
                                 "p2": [0.0] * 3, "p98": [255.0] * 3, "dtype": "uint8"}))
    cfg = tiny_config(tmp_path / "chips", stats, ["data.kind=shards", "optim.epochs=3"])  # 4 steps per epoch
    straight = pretrain(cfg, tmp_path / "straight")
    assert straight["status"] == "finished" and straight["steps"] == 12
    assert pretrain(cfg, tmp_path / "resumed", callbacks=[SignalAt(6)])["status"] == "interrupted"
    assert pretrain(cfg, tmp_path / "resumed")["steps"] == 12
    a = load_checkpoint_file(tmp_path / "straight/checkpoints/last.ckpt")["state_dict"]
    b = load_checkpoint_file(tmp_path / "resumed/checkpoints/last.ckpt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_chips_cli_upload_and_read_from_s3(moto_server: str, scenes_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from geossl.data.s3 import s3_client

    s3_client().create_bucket(Bucket="shards")
    rc = main(["chips", "--scenes", str(scenes_dir / NAIP), "--bands", "1,2,3", "--out", str(tmp_path / "c"),
               "--count", "40", "--tile-size", "32", "--workers", "1", "--chunk-mb", "1",
               "--upload", "s3://shards/naip/"])
    assert rc == 0 and "chips: 40 chips of 32 px, 3 bands uint8" in capsys.readouterr().out
    local, remote = ShardDataset(str(tmp_path / "c")), ShardDataset("s3://shards/naip/", cache_dir=str(tmp_path / "cache"))
    assert len(remote) == 40
    for i in (0, 17, 39):
        assert torch.equal(local[i]["image"], remote[i]["image"]) and torch.equal(local[i]["mask"], remote[i]["mask"])


def test_sagemaker_launch_accepts_a_shard_prefix(moto_server: str, scenes_dir: Path, tmp_path: Path) -> None:
    from geossl.cloud.launcher import check_input_prefix
    from geossl.data.s3 import s3_client, upload_dir

    cut_shards(plan([str(scenes_dir / NAIP)], count=10, part_size=10), tmp_path / "chips", progress=False)
    s3_client().create_bucket(Bucket="jobs")
    upload_dir(tmp_path / "chips", "s3://jobs/chips/")
    assert check_input_prefix(s3_client(), "s3://jobs/chips/") >= 1  # no image files, but chips
