"""Training stops clearly on a non-finite loss (keeping the last good checkpoint); collapse is reported."""

import pytest
import torch
from dino_helpers import make_patch_folder, tiny_config

from geossl.dino.callbacks import MetricPrinter, metric_line
from geossl.dino.checkpoint import find_resume_checkpoint, load_checkpoint_file
from geossl.dino.module import NonFiniteLossError
from geossl.dino.objective.loss import DINOLoss
from geossl.dino.train import pretrain


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)
    cfg = tiny_config(data, stats, ["optim.epochs=3", "trainer.checkpoint_every_steps=1", "trainer.log_every_steps=4"])
    original = DINOLoss.forward
    calls = {"n": 0}

    def poisoned(self, student_out, teacher_out, teacher_temp):
        calls["n"] += 1
        loss = original(self, student_out, teacher_out, teacher_temp)
        return loss * float("nan") if calls["n"] >= 5 else loss  # steps 0-3 are fine, step 4 is NaN

    monkeypatch.setattr(DINOLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite DINO loss at or before step"):
        pretrain(cfg, tmp_path / "run")
    ckpt = find_resume_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt is not None
    state = load_checkpoint_file(ckpt)
    assert state["global_step"] == 4  # the last checkpoint written before the NaN step
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


class _Module:
    def __init__(self, std: float) -> None:
        self.monitors = {"loss": torch.tensor(7.6), "teacher_std": torch.tensor(std), "teacher_entropy": torch.tensor(7.6)}
        self.steps_per_epoch = 10
        self.cfg = type("C", (), {"data": type("D", (), {"batch_size": 8})()})()

    def check_finite(self) -> None:
        pass

    def schedule_value(self, name: str, step: int) -> float:
        return 1e-3


class _Trainer:
    global_step, world_size, current_epoch, is_global_zero = 10, 1, 0, True


def test_collapse_is_reported_loudly(capsys):
    MetricPrinter(every=10).on_train_batch_end(_Trainer(), _Module(std=1e-5), None, None, 0)
    captured = capsys.readouterr()
    assert "COLLAPSE WARNING at step 10" in captured.err
    assert captured.out.startswith("geossl-metric step=10 epoch=0 loss=7.6")
    MetricPrinter(every=10).on_train_batch_end(_Trainer(), _Module(std=0.2), None, None, 0)
    assert "COLLAPSE" not in capsys.readouterr().err


def test_metric_line_format_is_scrapable():
    import re

    line = metric_line(step=120, epoch=1, loss=8.123456, lr=0.000123, img_per_s=456.7)
    assert line == "geossl-metric step=120 epoch=1 loss=8.123456 lr=0.000123 img_per_s=456.700000"
    assert re.search(r"loss=([0-9.eE+-]+)", line).group(1) == "8.123456"
