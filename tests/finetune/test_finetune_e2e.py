"""``geossl finetune`` end to end on the real EuroSAT patches: from class folders and from geodata labels,
interrupted and resumed bitwise, bad files skipped, its model used by ``classify`` on a real scene."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import geopandas as gpd
import pytest
import torch
from dino_helpers import SignalAt

from bench.label_examples import eurosat_ms_labels
from bench.synthetic import make_tiny_encoder
from geossl.cli import main
from geossl.dino.checkpoint import load_checkpoint_file
from geossl.finetune.config import load_finetune_config
from geossl.finetune.run import FinetuneOptions, run_finetune
from geossl.labels.options import LabelOptions
from geossl.models.landcover import load_landcover_model
from geossl.predict import classify_scene

pytestmark = pytest.mark.slow
FAST = ["optim.batch_size=16", "trainer.num_workers=0", "trainer.progress_bar=false", "optim.warmup_epochs=0.2",
        "trainer.checkpoint_every_steps=4"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc", 3, img_size=64, patch_size=16, depth=2,
                             gsd=10.0, mean=[87.8, 96.9, 103.9], std=[51.9, 34.8, 29.2])


@pytest.fixture(scope="module")
def small_splits(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train / 3 val / 4 test patches per class of the real EuroSAT RGB split (seeded)."""
    rows = list(csv.DictReader(open(shared_data / "eurosat-rgb" / "splits.csv", newline="")))
    random.Random(0).shuffle(rows)
    want, taken, out = {"train": 8, "val": 3, "test": 4}, {}, []
    for r in rows:
        key = (r["label"], r["split"])
        if taken.get(key, 0) < want[r["split"]]:
            taken[key] = taken.get(key, 0) + 1
            out.append(r)
    path = tmp_path_factory.mktemp("splits") / "splits.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(out)
    return path


def _opts(encoder, out, data, splits, extra=(), **kw) -> FinetuneOptions:
    return FinetuneOptions(encoder=str(encoder), out=out, cfg=load_finetune_config(None, [*FAST, *extra]),
                           data=data, splits=splits, **kw)


def test_finetune_from_class_folders_then_classify_a_real_scene(encoder, small_splits, shared_data, tmp_path):
    out = tmp_path / "ft"
    m = run_finetune(_opts(encoder, out, shared_data / "eurosat-rgb", small_splits, ["optim.epochs=2"]))
    assert m["steps"] == 10 and m["test_count"] == 40 and 0 <= m["top1"] <= 1
    assert set(m["baselines"]) == {"frozen-linear", "band-statistics"}
    for name in ("metrics.json", "confusion.csv", "confusion.png", "curves.png", "splits.csv", "config.yaml"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["top1"] == m["top1"]
    # the exported folder scores what metrics.json says, through the land-cover model classify uses
    model = load_landcover_model(out / "model")
    assert model.feature_recipe == "cls_avgpool" and model.classes[0] == "AnnualCrop"
    scene = classify_scene(model, str(shared_data / "scenes/naip_5m_north_dakota_2019.tif"), tmp_path / "map",
                           bands=[1, 2, 3], stride=64, progress=False, preview=False, stac=False)
    assert scene.class_map.is_file()
    # a finished run is never replaced without --overwrite
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_finetune(_opts(encoder, out, shared_data / "eurosat-rgb", small_splits, ["optim.epochs=2"]))


def test_sigterm_then_resume_equals_uninterrupted(encoder, small_splits, shared_data, tmp_path):
    extra = ["optim.epochs=3", "optim.mixup_alpha=0.2", "optim.cutmix_alpha=1.0"]  # 15 steps, every random op on
    data = shared_data / "eurosat-rgb"
    straight = run_finetune(_opts(encoder, tmp_path / "a", data, small_splits, extra, baselines="none"))
    stopped = run_finetune(_opts(encoder, tmp_path / "b", data, small_splits, extra, baselines="none",
                                 callbacks=[SignalAt(7)]))
    assert stopped == {"status": "interrupted", "step": 7}
    assert not (tmp_path / "b" / "model").exists()  # nothing half-trained is exported
    resumed = run_finetune(_opts(encoder, tmp_path / "b", data, small_splits, extra, baselines="none"))
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["steps"] == straight["steps"] == 15
    a = load_checkpoint_file(tmp_path / "a/checkpoints/last.ckpt")["state_dict"]
    b = load_checkpoint_file(tmp_path / "b/checkpoints/last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["top1"] == straight["top1"] and resumed["val_curve"] == straight["val_curve"]
    # another config is refused rather than mixed into the run
    shutil.rmtree(tmp_path / "b" / "model")
    (tmp_path / "b" / "metrics.json").unlink()
    with pytest.raises(ValueError, match="checkpoint was made with config"):
        run_finetune(_opts(encoder, tmp_path / "b", data, small_splits, [*extra, "optim.lr=0.01"], baselines="none"))


def test_bad_files_are_skipped_and_counted(encoder, small_splits, shared_data, tmp_path):
    rows = list(csv.DictReader(open(small_splits, newline="")))
    folder = tmp_path / "data"
    for r in rows:
        (folder / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "eurosat-rgb" / r["path"], folder / r["path"])
    bad = next(r for r in rows if r["split"] == "train")["path"]
    (folder / bad).write_bytes(b"not a jpeg")
    shutil.copyfile(small_splits, folder / "splits.csv")
    m = run_finetune(_opts(encoder, tmp_path / "ft", folder, None, ["optim.epochs=1", "trainer.max_bad_fraction=0.1"],
                           baselines="none"))
    assert m["skipped_files"]["count"] == 1 and bad.split("/")[-1] in json.dumps(m["skipped_files"])


def test_lora_and_last_n_from_the_command_line(encoder, small_splits, shared_data, tmp_path, capsys):
    for mode in ("lora", "last_n"):
        code = main(["finetune", "--encoder", str(encoder), "--out", str(tmp_path / mode), "--data",
                     str(shared_data / "eurosat-rgb"), "--splits", str(small_splits), "--baselines", "none",
                     *FAST, "optim.epochs=1", f"model.mode={mode}", "model.last_n=1"])
        assert code == 0
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        model = load_landcover_model(Path(line["model_dir"]))  # plain timm weights: LoRA merged
        assert not any("lora" in k for k in model.encoder.backbone.state_dict())
    assert main(["finetune", "--encoder", str(encoder), "--out", str(tmp_path / "x"), "model.mode=half"]) == 1
    assert "key 'model.mode'" in capsys.readouterr().err


def test_finetune_from_geodata_points(encoder, shared_data, tmp_path):
    """Points over the 13-band EuroSAT MS GeoTIFFs (scenes): chips are cut at the encoder's tile size."""
    points, _ = eurosat_ms_labels(shared_data, tmp_path / "labels")
    frame = gpd.read_file(points)
    frame = frame.groupby("label", group_keys=False).head(12)  # 12 points per class
    subset = tmp_path / "points.geojson"
    frame.to_file(subset)
    enc13 = make_tiny_encoder(tmp_path / "enc13", 13, img_size=64, patch_size=16, depth=1, gsd=10.0)
    m = run_finetune(FinetuneOptions(
        encoder=str(enc13), out=tmp_path / "ft", cfg=load_finetune_config(None, [*FAST, "optim.epochs=1"]),
        labels=LabelOptions(scenes=[str(shared_data / "eurosat-ms")], labels=subset, split="random"),
        baselines="frozen"))
    assert m["labels"]["split"]["mode"] == "random" and m["test_count"] > 0
    assert (tmp_path / "ft" / "chips.csv").is_file() and load_landcover_model(tmp_path / "ft" / "model").meta.in_chans == 13


def test_starting_from_a_probe_model_keeps_its_head(encoder, small_splits, shared_data, tmp_path):
    """LP-FT: a land-cover model folder as --encoder starts from its linear head (and its feature recipe); with a
    learning rate of ~0 the fine-tuned model predicts exactly what the probe did."""
    from geossl.probe.run import ProbeOptions, run_probe

    probe = run_probe(ProbeOptions(encoder=str(encoder), data=shared_data / "eurosat-rgb", splits=small_splits,
                                   out=tmp_path / "probe", features="cls_avgpool", weight_decays=[1e-3], max_iter=30,
                                   workers=0, random_baseline=False))
    m = run_finetune(_opts(tmp_path / "probe" / "model", tmp_path / "ft", shared_data / "eurosat-rgb", small_splits,
                           ["optim.epochs=1", "optim.lr=1e-12", "optim.min_lr=0", "model.drop_path_rate=0",
                            "model.init_head=true"],
                           baselines="none"))
    assert m["head_start"] == "probe head (LP-FT)" and m["features"] == "cls_avgpool"
    assert m["top1"] == probe["linear_top1"]
    fresh = run_finetune(_opts(tmp_path / "probe" / "model", tmp_path / "ft2", shared_data / "eurosat-rgb",
                               small_splits, ["optim.epochs=1"], baselines="none"))  # the default: a new head
    assert fresh["head_start"] == "new"
