"""Every file a SageMaker job config names by default is shipped in the repo (and the training one loads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geossl.cloud.job_config import JobConfig, load_job_config, task_section
from geossl.cloud.launcher import resolve_training_config
from geossl.config import load_config
from geossl.finetune.config import load_finetune_config

REPO = Path(__file__).resolve().parents[2]
FILE_SUFFIXES = (".yaml", ".yml", ".json", ".py", ".txt", ".toml")


def _string_values(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string in a (nested) dataclass, lists and dicts included."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _string_values(getattr(obj, f.name), f"{prefix}{f.name}.")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _string_values(value, f"{prefix}{key}.")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _string_values(value, f"{prefix}{i}.")
    elif isinstance(obj, str):
        yield prefix.rstrip("."), obj


def _default_paths(cfg: JobConfig) -> dict[str, str]:
    """Values that name a file: a relative path with a file suffix (not s3://, ARNs or plain words)."""
    return {key: value for key, value in _string_values(cfg)
            if key != "source" and "://" not in value and value.lower().endswith(FILE_SUFFIXES)}


def test_every_default_path_exists_in_the_repo() -> None:
    paths = _default_paths(JobConfig())
    assert "pretrain.config" in paths  # the walk finds the one we know of
    missing = {key: value for key, value in paths.items() if not (REPO / value).is_file()}
    assert not missing, f"job config defaults name files that are not shipped: {missing}"


@pytest.mark.parametrize("job_yaml", [None, REPO / "configs/sagemaker_dino.yaml", REPO / "configs/sagemaker_finetune.yaml"],
                         ids=["defaults", "shipped", "shipped-finetune"])
def test_the_training_config_resolves_and_validates(job_yaml: Path | None) -> None:
    """What ``geossl sagemaker launch`` does before paying for an instance: find and validate it."""
    cfg = load_job_config(job_yaml)
    missing = {key: value for key, value in _default_paths(cfg).items() if not (REPO / value).is_file()}
    assert not missing
    found = resolve_training_config(cfg, REPO)
    section = task_section(cfg)
    assert found == (REPO / section.config).resolve()
    if cfg.task == "finetune":
        load_finetune_config(found, section.overrides)
    else:
        load_config(found, section.overrides)
