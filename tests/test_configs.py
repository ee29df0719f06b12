"""Every shipped pretraining config loads strictly and its data matches its model on the real data."""

from pathlib import Path

import pytest

from geossl.config import load_config
from geossl.dino.data import build_pretrain_dataset, dataset_band_count

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml") if not p.name.startswith("sagemaker"))
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
