"""The GPU configurations rehearsed on CPU (issue #23): what can be checked without a GPU is checked.

bf16 autocast and ``torch.compile`` both run on CPU in PyTorch, so a tiny model goes through each, a
compiled run resumes in eager mode and the reverse (the checkpoint keys must not carry the compiled
wrapper's ``_orig_mod.`` prefix), and the two shipped GPU configs train a few steps end to end with only
the GPU-only settings and sizes overridden."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from dino_helpers import SignalAt, make_patch_folder, tiny_config

from geossl.config import load_config
from geossl.dino.checkpoint import load_checkpoint_file
from geossl.dino.train import pretrain

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_patch_folder(tmp_path_factory.mktemp("gpu-configs") / "p", n_per_class=8)


def test_bf16_mixed_trains_and_resumes_in_float32(tmp_path: Path, patches: tuple[Path, Path]) -> None:
    data, stats = patches
    first = pretrain(tiny_config(data, stats, ["trainer.precision=bf16-mixed", "optim.epochs=1"]), tmp_path / "run")
    assert first["status"] == "finished" and math.isfinite(first["final_loss"])
    ckpt = load_checkpoint_file(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(v.dtype.is_floating_point is False or str(v.dtype) == "torch.float32"
               for v in ckpt["state_dict"].values())  # mixed precision keeps float32 master weights


@pytest.mark.slow
def test_compiled_and_eager_runs_resume_each_other(tmp_path: Path, patches: tuple[Path, Path]) -> None:
    data, stats = patches
    for first, second, name in ((True, False, "compiled-then-eager"), (False, True, "eager-then-compiled")):
        run = tmp_path / name
        stopped = pretrain(tiny_config(data, stats, [f"trainer.compile={str(first).lower()}", "optim.epochs=2"]), run,
                           callbacks=[SignalAt(3)])  # a spot interruption: last.ckpt at the end of step 3
        assert stopped["status"] == "interrupted" and stopped["steps"] == 3
        keys = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["state_dict"].keys()
        assert not any("_orig_mod" in k for k in keys), name
        resumed = pretrain(tiny_config(data, stats, [f"trainer.compile={str(second).lower()}", "optim.epochs=2"]),
                           run)
        assert resumed["status"] == "finished" and resumed["steps"] == 4 and resumed["resumed_from"], name
        assert math.isfinite(resumed["final_loss"]) and (run / "encoder" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/eurosat_vits8.yaml", "configs/gpu_suite.yaml"])
def test_shipped_gpu_configs_train_a_few_steps_on_cpu(tmp_path: Path, shared_data: Path, config: str) -> None:
    """Everything but the GPU-only settings and the sizes as shipped: ViT-S/8, its head, crops, schedules."""
    cfg = load_config(REPO / config, [
        f"data.root={shared_data}", "trainer.accelerator=cpu", "trainer.require_gpu=false", "trainer.precision=32-true",
        "data.limit=16", "data.batch_size=4", "data.num_workers=0", "optim.epochs=1", "optim.warmup_epochs=0.5",
        "loss.warmup_teacher_temp_epochs=0.5", "eval.knn_data=null",
        "trainer.progress_bar=false", "augment.n_local=2", "model.extra={depth: 2}"])
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 4 and math.isfinite(summary["final_loss"])
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()
