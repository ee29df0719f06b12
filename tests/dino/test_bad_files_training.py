"""Pretraining never dies on one bad file among many: skipped, counted, reported, stopped above the fraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dino_helpers import TINY, SignalAt, make_patch_folder, salt, tiny_config

from geossl.cli import main
from geossl.dino.bad_files import SkippingDataset
from geossl.dino.checkpoint import load_checkpoint_file
from geossl.dino.data import build_pretrain_dataset, resolve_stats
from geossl.dino.train import pretrain


@pytest.fixture()
def salted(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """24 good PNGs + 8 bad files = 32 files = 4 batches of 8: one epoch draws every file."""
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=12)
    return data, stats, salt(data)


def test_bad_files_are_replaced_by_the_next_good_one(salted):
    data, stats, bad = salted
    dataset = build_pretrain_dataset(tiny_config(data, stats))  # its first two files are bad
    assert isinstance(dataset, SkippingDataset) and len(dataset) == 32
    first = dataset[0]  # 000_text.png and 001_rgba.png skipped: bright_0.png serves
    assert first["image"].shape == (3, 32, 32)
    assert first["skipped"][:3].tolist() == [0, 1, -1]
    assert {str(dataset.path_of(i)) for i in first["skipped"][:2].tolist()} <= set(bad)
    assert dataset[2]["skipped"].tolist() == [-1] * 8  # a good file skips nothing


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_pretraining_skips_counts_and_reports(salted, tmp_path, capsys, workers):
    """With DataLoader workers (separate processes) the skips reach the main process inside the batches."""
    data, stats, bad = salted
    cfg = tiny_config(data, stats, ["optim.epochs=1", "data.max_bad_fraction=0.3", f"data.num_workers={workers}"])
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 4
    skipped = summary["skipped_files"]
    assert skipped["count"] == 8 and skipped["fraction"] == 0.25 and skipped["max_fraction"] == 0.3
    assert set(skipped["files"]) == set(bad) and set(skipped["reasons"]) == set(bad)
    for path, kind in bad.items():
        assert skipped["reasons"][path].startswith(f"{kind}: "), (path, skipped["reasons"][path])
    assert skipped["kinds"] == {"unreadable": 4, "bands": 3, "size": 1}
    assert "is 24x24 px but data.tile_size is 32" in skipped["reasons"][str(data / "dark/small.png")]
    assert json.loads((tmp_path / "run/summary.json").read_text())["skipped_files"] == skipped
    err = [line for line in capsys.readouterr().err.splitlines() if "bad patch file" in line]
    assert len(err) == 1 and "skipped 8 bad patch file(s) of 32 (25.00%, data.max_bad_fraction=0.3)" in err[0]


def test_a_clean_run_reports_none(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)
    summary = pretrain(tiny_config(data, stats, ["optim.epochs=1"]), tmp_path / "run")
    assert summary["skipped_files"]["count"] == 0 and summary["skipped_files"]["files"] == []


def test_above_the_fraction_the_run_stops_with_the_list(salted, tmp_path, capsys):
    data, stats, bad = salted
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    args = ["pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"), *TINY,
            f"data.paths=[{data}]", f"data.stats={stats}", "optim.epochs=1", "data.max_bad_fraction=0.1"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "geossl pretrain: error: at least " in err and "of 32 patch files" in err
    assert "more than data.max_bad_fraction=0.1 allows" in err and "raise data.max_bad_fraction" in err
    named = [path for path in bad if path in err]
    assert len(named) >= 4, err  # more than 0.1 x 32 = 3.2 files, each named
    assert not (tmp_path / "run/summary.json").exists()


def test_statistics_computed_for_pretraining_name_its_config_key(salted):
    """Without data.stats, pretraining samples the statistics first; too many bad files there are refused
    naming data.max_bad_fraction (the key a pretraining user can raise), not the compute_stats argument."""
    data, stats, _ = salted
    cfg = tiny_config(data, stats, ["data.stats=null", "data.max_bad_fraction=0.1"])
    with pytest.raises(ValueError, match=r"more than data\.max_bad_fraction=0\.1 allows: .*or raise "
                                         r"data\.max_bad_fraction$"):
        resolve_stats(cfg, 3)


def test_zero_fraction_stops_at_the_first_batch_with_a_bad_file(salted, tmp_path):
    data, stats, _ = salted
    with pytest.raises(ValueError, match=r"at least \d+ of 32 patch files .*data.max_bad_fraction=0 allows"):
        pretrain(tiny_config(data, stats, ["optim.epochs=1", "data.max_bad_fraction=0"]), tmp_path / "run")


@pytest.mark.slow  # two tiny runs and a resume (~4-5 s): in make test, not the fast lane
def test_resume_with_bad_files_is_bitwise_and_keeps_the_count(salted, tmp_path):
    """Substitution is a function of the index, and findings travel in the checkpoint: an interrupted and
    resumed run equals an uninterrupted one and reports the same files, found before and after."""
    data, stats, bad = salted
    cfg = tiny_config(data, stats, ["optim.epochs=1", "data.max_bad_fraction=0.3"])
    straight = pretrain(cfg, tmp_path / "straight")
    interrupted = pretrain(cfg, tmp_path / "resumed", callbacks=[SignalAt(2)])
    assert interrupted["status"] == "interrupted" and 0 < interrupted["skipped_files"]["count"] < 8
    saved = load_checkpoint_file(tmp_path / "resumed/checkpoints/last.ckpt")["callbacks"]["BadFileMonitor"]
    assert len(saved["found"]) == interrupted["skipped_files"]["count"]
    resumed = pretrain(cfg, tmp_path / "resumed")
    assert resumed["status"] == "finished" and resumed["steps"] == 4
    assert resumed["skipped_files"] == straight["skipped_files"] and resumed["skipped_files"]["count"] == 8
    a = load_checkpoint_file(tmp_path / "straight/checkpoints/last.ckpt")["state_dict"]
    b = load_checkpoint_file(tmp_path / "resumed/checkpoints/last.ckpt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_of_the_wrong_size_is_still_refused_at_once(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=4, size=24)
    with pytest.raises(ValueError, match=r"patches: patches are 24 px but data.tile_size is 32"):
        build_pretrain_dataset(tiny_config(data, stats))


@pytest.mark.slow
def test_real_eurosat_jpegs_with_one_truncated_copy(shared_data, tmp_path, capsys):
    """40 real EuroSAT RGB JPEGs (4 per class), one of them truncated; stats computed from the same folder."""
    data = tmp_path / "eurosat"
    for class_dir in sorted(p for p in (shared_data / "eurosat-rgb").iterdir() if p.is_dir()):
        (data / class_dir.name).mkdir(parents=True)
        for jpg in sorted(class_dir.glob("*.jpg"))[:4]:
            shutil.copy(jpg, data / class_dir.name / jpg.name)
    victim = sorted((data / "Forest").glob("*.jpg"))[1]
    victim.write_bytes(victim.read_bytes()[:700])
    cfg = tiny_config(data, tmp_path / "unused.json", ["data.stats=null", "data.tile_size=64", "optim.epochs=1",
                                                       "data.max_bad_fraction=0.05"])
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 5
    assert summary["skipped_files"]["count"] == 1 and summary["skipped_files"]["files"] == [str(victim)]
    assert summary["skipped_files"]["reasons"][str(victim)].startswith("unreadable: not a readable image or truncated")
    run_stats = json.loads((tmp_path / "run/stats.json").read_text())  # computed at start, skipping it too
    assert list(run_stats["skipped_files"]) == [str(victim)]
    assert "skipped 1 bad patch file(s) of 40" in capsys.readouterr().err
