"""Every shipped config loads strictly: pretraining configs read their data on the real data, fine-tuning
configs (``finetune_*``) load with the fine-tuning loader."""

from pathlib import Path

import pytest

from geossl.config import load_config
from geossl.dino.data import build_pretrain_dataset, dataset_band_count

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")
                 if not p.name.startswith(("sagemaker", "finetune_")))
FINETUNE_CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("finetune_*.yaml"))
EXPECTED_BANDS = {"demo": 3, "eurosat_vits8": 3, "gpu_suite": 3, "scenes_naip": 4, "eurosat_ms": 13,
                  "continue_eurosat_ms": 13}


def test_all_pretraining_configs_are_covered():
    assert {p.stem for p in CONFIGS} == set(EXPECTED_BANDS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_reads_its_data(path, shared_data):
    cfg = load_config(path, [f"data.root={shared_data}"])
    dataset = build_pretrain_dataset(cfg)
    assert dataset_band_count(dataset) == EXPECTED_BANDS[path.stem]
    sample = dataset[0]
    assert sample["image"].shape == (EXPECTED_BANDS[path.stem], cfg.data.tile_size, cfg.data.tile_size)
    assert cfg.augment.global_size % (cfg.model.patch_size or 16) == 0


@pytest.mark.parametrize("path", FINETUNE_CONFIGS, ids=lambda p: p.stem)
def test_finetune_config_loads(path):
    from geossl.finetune.config import load_finetune_config

    cfg = load_finetune_config(path)
    assert cfg.optim.epochs > cfg.optim.warmup_epochs and cfg.model.mode == "full"


def test_finetune_configs_exist():
    assert {p.stem for p in FINETUNE_CONFIGS} == {"finetune_demo", "finetune_gpu"}
