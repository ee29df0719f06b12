"""A run that ended part-way into an epoch at ``trainer.max_steps``, resumed (``--resume CKPT``) into a run with
more steps, trains the rest of that epoch: 8 of 8 steps, bitwise the uninterrupted run (issue #23: it ran 7
of 8 and reported "finished", because Lightning had counted the stopped epoch as complete)."""

from __future__ import annotations

import copy

import pytest
import torch
from dino_helpers import SignalAt, make_patch_folder, tiny_config

from geossl.dino.checkpoint import load_checkpoint_file, reopen_stopped_epoch
from geossl.dino.train import pretrain


@pytest.mark.slow
def test_resume_after_max_steps_mid_epoch_trains_every_step(tmp_path, capsys):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)  # 4 steps per epoch
    cfg = tiny_config(data, stats, ["optim.epochs=2"])  # 8 steps
    short = pretrain(tiny_config(data, stats, ["optim.epochs=2", "trainer.max_steps=3"]), tmp_path / "short")
    assert short["status"] == "finished" and short["steps"] == 3
    ckpt = tmp_path / "short" / "checkpoints" / "last.ckpt"

    resumed = pretrain(cfg, tmp_path / "longer", resume=str(ckpt))
    assert resumed["status"] == "finished" and resumed["steps"] == 8 and resumed["epochs"] == 2.0
    assert "resuming inside that epoch" in capsys.readouterr().err

    straight = pretrain(cfg, tmp_path / "straight")
    assert straight["steps"] == 8
    a = load_checkpoint_file(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint_file(tmp_path / "longer" / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the reopened loop state is exactly what a stop signal saves at the same step; that one is left alone
    stopped = pretrain(cfg, tmp_path / "stopped", callbacks=[SignalAt(3)])
    assert stopped["status"] == "interrupted" and stopped["steps"] == 3
    signal_ckpt = load_checkpoint_file(tmp_path / "stopped" / "checkpoints" / "last.ckpt")
    max_steps_ckpt = load_checkpoint_file(ckpt)
    assert reopen_stopped_epoch(max_steps_ckpt, 4)
    assert max_steps_ckpt["loops"] == signal_ckpt["loops"] and max_steps_ckpt["epoch"] == signal_ckpt["epoch"] == 0
    unchanged = copy.deepcopy(signal_ckpt["loops"])
    assert not reopen_stopped_epoch(signal_ckpt, 4) and signal_ckpt["loops"] == unchanged


@pytest.mark.slow
def test_a_checkpoint_at_an_epoch_end_is_left_alone(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)  # 4 steps per epoch
    pretrain(tiny_config(data, stats, ["optim.epochs=2", "trainer.max_steps=4"]), tmp_path / "short")
    ckpt = load_checkpoint_file(tmp_path / "short" / "checkpoints" / "last.ckpt")
    loops = copy.deepcopy(ckpt["loops"])
    assert not reopen_stopped_epoch(ckpt, 4) and ckpt["loops"] == loops  # resumes at epoch 1 as it is
    assert not reopen_stopped_epoch({"global_step": 3}, 4)  # no loop state: nothing to change
    resumed = pretrain(tiny_config(data, stats, ["optim.epochs=2"]), tmp_path / "longer",
                       resume=str(tmp_path / "short" / "checkpoints" / "last.ckpt"))
    assert resumed["status"] == "finished" and resumed["steps"] == 8
