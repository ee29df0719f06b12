"""Schedules against the closed-form values of the DINO recipe at chosen steps."""

import math

import pytest

from geossl.config import load_config
from geossl.dino.module import DINOModule
from geossl.dino.objective.schedules import cosine_schedule, linear_warmup_constant


def test_cosine_schedule_values():
    values = cosine_schedule(1.0, 0.1, total_steps=110, warmup_steps=10, start_warmup_value=0.0)
    assert len(values) == 110
    assert values[0] == 0.0 and values[5] == pytest.approx(0.5)  # linear warmup
    assert values[10] == pytest.approx(1.0)  # peak right after warmup
    # half-way through the cosine: final + (base - final) / 2
    assert values[60] == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * 50 / 100)))
    assert values[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


def test_teacher_temperature_warmup():
    values = linear_warmup_constant(0.04, 0.07, total_steps=100, warmup_steps=30)
    assert values[0] == pytest.approx(0.04)
    assert values[15] == pytest.approx(0.04 + 0.03 * 15 / 30)
    assert values[30] == pytest.approx(0.07) and values[99] == pytest.approx(0.07)


def test_module_schedules_follow_the_recipe():
    """Peak lr scales with the global batch; wd 0.04 -> 0.4; momentum 0.996 -> 1; temperature warmup."""
    cfg = load_config(None, ["model.arch=vit_tiny_patch16_224", "model.extra={depth: 1}", "augment.global_size=32",
                             "augment.local_size=16", "head.out_dim=64", "head.hidden_dim=32", "head.bottleneck_dim=16",
                             "data.batch_size=32", "optim.epochs=10", "optim.warmup_epochs=2",
                             "loss.warmup_teacher_temp_epochs=5"])
    stats = {"bands": ["a", "b", "c"], "mean": [0.0] * 3, "std": [1.0] * 3, "p2": [0.0] * 3, "p98": [1.0] * 3}
    module = DINOModule(cfg.to_dict(), 3, stats["bands"], stats, dataset_size=32 * 4 * 10, value_range=None)
    module.build_schedules(world_size=4)  # 4 ranks x 32 = global batch 128 -> 10 steps per epoch
    assert module.steps_per_epoch == 10
    peak = 0.0005 * 128 / 256
    assert module.schedule_value("lr", 0) == 0.0
    assert module.schedule_value("lr", 10) == pytest.approx(peak / 2)
    assert module.schedule_value("lr", 20) == pytest.approx(peak)
    assert module.schedule_value("wd", 0) == pytest.approx(0.04)
    assert module.schedule_value("wd", 99) == pytest.approx(0.04 + 0.5 * 0.36 * (1 - math.cos(math.pi * 99 / 100)))
    assert module.schedule_value("momentum", 0) == pytest.approx(0.996)
    assert module.schedule_value("momentum", 50) == pytest.approx(1 - 0.004 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert module.schedule_value("teacher_temp", 25) == pytest.approx(0.04 + 0.03 * 25 / 50)
    assert module.schedule_value("teacher_temp", 60) == pytest.approx(0.07)
