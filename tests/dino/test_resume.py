"""Resume equality: N steps uninterrupted == SIGTERM at step k, then resume to N (bitwise on CPU)."""

import os
import signal

import lightning as L
import pytest
import torch
from dino_helpers import SignalAt, make_patch_folder, tiny_config
from safetensors.torch import load_file

from geossl.dino.checkpoint import load_checkpoint_file
from geossl.dino.train import pretrain


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)  # 32 patches / batch 8 = 4 steps per epoch
    cfg = tiny_config(data, stats, ["optim.epochs=3"])  # 12 steps in all

    straight = pretrain(cfg, tmp_path / "straight")
    assert straight["status"] == "finished" and straight["steps"] == 12

    interrupted = pretrain(cfg, tmp_path / "resumed", callbacks=[SignalAt(6)])  # mid-epoch 2
    assert interrupted["status"] == "interrupted" and interrupted["steps"] == 6
    assert interrupted["encoder_dir"] is None  # nothing half-trained is exported
    assert load_checkpoint_file(tmp_path / "resumed/checkpoints/last.ckpt")["global_step"] == 6

    resumed = pretrain(cfg, tmp_path / "resumed")
    assert resumed["status"] == "finished" and resumed["steps"] == 12
    assert resumed["resumed_from"].endswith("last.ckpt")

    a = load_checkpoint_file(tmp_path / "straight/checkpoints/last.ckpt")["state_dict"]
    b = load_checkpoint_file(tmp_path / "resumed/checkpoints/last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst == 0.0, f"resumed weights differ from uninterrupted ones by {worst}"
    # the centre (a buffer) and the exported teacher are identical too
    assert torch.equal(a["dino_loss.center"], b["dino_loss.center"])
    ea, eb = load_file(tmp_path / "straight/encoder/model.safetensors"), load_file(tmp_path / "resumed/encoder/model.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_finished_run_is_never_overwritten(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)
    cfg = tiny_config(data, stats, ["optim.epochs=1"])
    pretrain(cfg, tmp_path / "run")
    before = (tmp_path / "run/encoder/model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        pretrain(cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match="already holds a finished run") as refused:
        pretrain(cfg, tmp_path / "run", resume="never")
    assert "--resume auto" not in str(refused.value)  # it cannot continue a finished run
    assert (tmp_path / "run/encoder/model.safetensors").read_bytes() == before


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)
    first = pretrain(tiny_config(data, stats, ["optim.epochs=2"]), tmp_path / "run", callbacks=[SignalAt(1)])
    assert first["status"] == "interrupted"
    other = tiny_config(data, stats, ["optim.epochs=2", "head.out_dim=128"])
    with pytest.raises(ValueError, match=r"last.ckpt: checkpoint was trained with head="):
        pretrain(other, tmp_path / "run")


def test_truncated_checkpoint_is_skipped_for_resume(tmp_path):
    from geossl.dino.checkpoint import find_resume_checkpoint

    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)
    pretrain(tiny_config(data, stats, ["optim.epochs=2", "trainer.max_steps=1"]), tmp_path / "run")
    ckpt_dir = tmp_path / "run/checkpoints"
    good = find_resume_checkpoint(ckpt_dir)
    assert good is not None and good.name == "last.ckpt"
    (ckpt_dir / "step-99999999.ckpt").write_bytes(good.read_bytes()[:1000])  # a partial write
    (ckpt_dir / "step-99999998.ckpt").write_bytes(good.read_bytes())
    (ckpt_dir / "step-99999998.ckpt.sagemaker-uploading").write_bytes(b"")  # still uploading
    assert find_resume_checkpoint(ckpt_dir) == good


def test_no_gpu_when_the_config_demands_one(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)
    if torch.cuda.is_available():
        pytest.fail("this test expects a CPU-only machine (CI)")
    with pytest.raises(RuntimeError, match="demands a GPU"):
        pretrain(tiny_config(data, stats, ["trainer.require_gpu=true"]), tmp_path / "run")


def test_band_count_mismatch_with_stats(tmp_path):
    import json

    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)
    four = json.loads(stats.read_text())
    for key in ("mean", "std", "p2", "p98"):
        four[key] = four[key] + [1.0]
    four["bands"] = ["r", "g", "b", "nir"]
    stats.write_text(json.dumps(four))
    with pytest.raises(ValueError, match="band statistics have 4 bands .* the data has 3"):
        pretrain(tiny_config(data, stats), tmp_path / "run")


class SigtermDuringEpochEnd(L.Callback):
    """SIGTERM while epoch-end work runs (as the online k-NN does): no batch hook sees it."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_epoch_end_still_checkpoints(tmp_path):
    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=16)
    cfg = tiny_config(data, stats, ["optim.epochs=3"])  # 4 steps per epoch
    summary = pretrain(cfg, tmp_path / "run", callbacks=[SigtermDuringEpochEnd()])
    assert summary["status"] == "interrupted" and summary["steps"] == 4
    assert load_checkpoint_file(tmp_path / "run/checkpoints/last.ckpt")["global_step"] == 4
    resumed = pretrain(cfg, tmp_path / "run")
    assert resumed["status"] == "finished" and resumed["steps"] == 12


def test_checkpoint_from_before_a_new_config_key_still_resumes(tmp_path):
    """A key added to geossl later (here head.ibot_separate_head) is filled with its default, not a mismatch."""
    from geossl.dino.train import check_resume_compatible

    data, stats = make_patch_folder(tmp_path / "patches", n_per_class=8)
    cfg = tiny_config(data, stats, ["optim.epochs=2"])
    assert pretrain(cfg, tmp_path / "run", callbacks=[SignalAt(1)])["status"] == "interrupted"
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    state = load_checkpoint_file(ckpt)
    del state["hyper_parameters"]["config"]["head"]["ibot_separate_head"]  # as written before the key existed
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    args = {"config": cfg.to_dict(), "in_chans": state["hyper_parameters"]["in_chans"]}
    check_resume_compatible(old, args)  # no error
    args["config"]["head"]["ibot_separate_head"] = False  # a real difference is still refused
    with pytest.raises(ValueError, match="checkpoint was trained with head="):
        check_resume_compatible(old, args)
