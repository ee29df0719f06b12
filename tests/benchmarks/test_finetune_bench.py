"""bench/finetune.py's budget under progressive resizing: the schedule's mean throughput buys the minutes named."""

from __future__ import annotations

import argparse

import pytest

import bench.finetune as bench_finetune


@pytest.mark.parametrize("given", [None, 100.0])
def test_progressive_resizing_budget_is_time_per_image(monkeypatch: pytest.MonkeyPatch, given: float | None) -> None:
    rates = {None: 100.0, 32: 300.0}  # full tiles, and 32 px tiles 3x faster
    monkeypatch.setattr(bench_finetune, "train_throughput", lambda *a, size=None, **k: rates[size])
    args = argparse.Namespace(config="configs/finetune_demo.yaml", encoder="enc", img_per_s=given,
                              overrides=["augment.low_res=32", "augment.low_res_fraction=0.25"])
    mean = bench_finetune.with_progressive_resizing(100.0, args)
    # 1,000 images: 250 at 300 img/s and 750 at 100 img/s take 0.833 + 7.5 s
    assert mean == pytest.approx(1000 / (250 / 300 + 750 / 100))
    args.overrides = []
    assert bench_finetune.with_progressive_resizing(100.0, args) == 100.0
