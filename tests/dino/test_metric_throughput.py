"""``img_per_s`` on the metric lines is a measurement or absent, never a 0.0 placeholder: not on step 1 of a
fresh run, not on the first line after a resume (issue #23). SageMaker scrapes these lines as metrics and the
benches take medians of them, so a 0.0 would be read as a run that stood still."""

from __future__ import annotations

import re

import pytest
import torch
from dino_helpers import SignalAt, make_patch_folder, tiny_config

from geossl.dino.callbacks import MetricPrinter
from geossl.dino.train import pretrain


class _Module:
    monitors = {"loss": torch.tensor(7.5), "teacher_std": torch.tensor(0.2)}
    steps_per_epoch = 100
    cfg = type("C", (), {"data": type("D", (), {"batch_size": 8})()})()

    def check_finite(self) -> None:
        pass

    def schedule_value(self, name: str, step: int) -> float:
        return 1e-3


class _Trainer:
    world_size, current_epoch, is_global_zero = 1, 0, True

    def __init__(self, step: int) -> None:
        self.global_step = step


def _lines(text: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"geossl-metric step=(\d+) .*", text)}


def _speed(line: str) -> float | None:
    match = re.search(r"img_per_s=([0-9.]+)", line)
    return float(match.group(1)) if match else None


def test_no_measurement_yet_leaves_the_field_out(capsys, monkeypatch):
    clock = iter([100.0, 102.0, 110.0])
    monkeypatch.setattr("geossl.dino.callbacks.time.perf_counter", lambda: next(clock))
    printer, module = MetricPrinter(every=10), _Module()
    printer.on_train_batch_end(_Trainer(10), module, None, None, 0)  # the first step of this process, logged
    first = capsys.readouterr().out
    assert first.startswith("geossl-metric step=10 ") and "img_per_s" not in first
    assert "img_per_s" not in printer.history[-1]
    printer.on_train_batch_end(_Trainer(15), module, None, None, 0)  # not logged: nothing read, nothing printed
    assert capsys.readouterr().out == ""
    printer.on_train_batch_end(_Trainer(20), module, None, None, 0)  # 10 steps x 8 images in 2 s
    assert _speed(capsys.readouterr().out) == 40.0 and printer.history[-1]["img_per_s"] == 40.0


def test_a_resume_between_logged_steps_measures_its_first_line(capsys, monkeypatch):
    clock = iter([50.0, 51.0])
    monkeypatch.setattr("geossl.dino.callbacks.time.perf_counter", lambda: next(clock))
    printer, module = MetricPrinter(every=10), _Module()
    printer.on_train_batch_end(_Trainer(17), module, None, None, 0)  # first step after resuming at 16: the clock starts
    assert capsys.readouterr().out == ""
    printer.on_train_batch_end(_Trainer(20), module, None, None, 0)  # 3 steps x 8 images in 1 s
    assert _speed(capsys.readouterr().out) == 24.0


@pytest.mark.slow
def test_fresh_and_resumed_runs_never_log_a_zero_speed(tmp_path, capfd):
    """capfd, not capsys: Lightning's log handler holds the stderr of import time, below capsys."""
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)  # 4 steps per epoch
    cfg = tiny_config(data, stats, ["optim.epochs=2", "trainer.log_every_steps=2"])
    assert pretrain(cfg, tmp_path / "run", callbacks=[SignalAt(4)])["status"] == "interrupted"
    fresh = _lines(capfd.readouterr().out)
    assert pretrain(cfg, tmp_path / "run")["status"] == "finished"
    out, err = capfd.readouterr()
    resumed = _lines(out)
    # one geossl line says what was restored; Lightning's resume lines, its advert and its warnings are gone
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"geossl: resumed {ckpt} at step 4 (epoch 1, batch 0 of 4, 32 samples seen)" in err, err
    for noise in ("Restoring states", "Restored all states", "litlogger", "not resumable", "eval mode", "LeafSpec"):
        assert noise not in out + err, noise
    assert sorted(fresh) == [1, 2, 4] and _speed(fresh[1]) is None  # nothing to measure from at step 1
    assert _speed(fresh[2]) > 0 and _speed(fresh[4]) > 0
    # resumed at step 4: the first logged line (step 6) is measured from the end of step 5, this process's first
    assert sorted(resumed) == [6, 8] and all(_speed(line) > 0 for line in resumed.values())
    assert "img_per_s=0.0" not in "\n".join([*fresh.values(), *resumed.values()])
