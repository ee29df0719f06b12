"""geossl.choices: every option's allowed values written once, and every reader of a value agrees with it.

The CLIs offer exactly these values (their argparse ``choices`` are the constants themselves), the
configs accept every one of them and nothing else, and the code that acts on a value (encoder features,
band adaptation, the DINO objective, blending, rescaling) handles every one. The module stays free of
imports, so config validation and ``--help`` never pull in torch.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geossl import choices
from geossl.cli import build_parser
from geossl.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def command_parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def option(command: str, flag: str) -> argparse.Action:
    return next(a for a in command_parser(command)._actions if flag in a.option_strings)


@pytest.mark.parametrize("command,flag,allowed", [
    ("probe", "--features", choices.FEATURE_RECIPES),
    ("probe", "--head", choices.HEAD_TYPES),
    ("classify", "--mode", choices.INPUT_MODES),
    ("classify", "--blend", choices.BLENDS),
    ("classify", "--rescale", choices.RESCALES),
    ("classify", "--probs-dtype", choices.PROBS_DTYPES),
    ("change", "--blend", choices.BLENDS),
    ("embed", "--mode", choices.INPUT_MODES),
    ("embed", "--recipe", choices.FEATURE_RECIPES),
    ("import-encoder", "--which", choices.CHECKPOINT_WEIGHTS),
    ("import-encoder", "--new-bands", choices.NEW_BAND_POLICIES),
    ("import-encoder", "--feature-recipe", choices.FEATURE_RECIPES),
])
def test_cli_choices_are_the_shared_constants(command: str, flag: str, allowed: tuple[str, ...]) -> None:
    action = option(command, flag)
    assert tuple(action.choices) == allowed
    assert action.default is None or action.default in allowed


def test_probe_help_defaults_are_the_ones_the_probe_uses() -> None:
    from geossl.probe import attentive, dense, linear
    from geossl.probe.run import ProbeOptions

    assert option("probe", "--weight-decays").default == list(linear.DEFAULT_WEIGHT_DECAYS)
    assert option("probe", "--dense-tokens").default == dense.DEFAULT_TOKENS_PER_PATCH == ProbeOptions.dense_tokens
    assert option("probe", "--attentive-epochs").default == attentive.DEFAULT_EPOCHS == ProbeOptions.attentive_epochs
    assert option("probe", "--attentive-lrs").default == list(attentive.DEFAULT_LRS)
    assert linear.DEFAULT_WEIGHT_DECAYS == choices.PROBE_WEIGHT_DECAYS


@pytest.mark.parametrize("key,allowed", [
    ("data.kind", choices.DATA_KINDS),
    ("trainer.accelerator", choices.ACCELERATORS),
    ("model.feature_recipe", choices.FEATURE_RECIPES),
    ("model.init_new_bands", choices.NEW_BAND_POLICIES),
    ("loss.centering", choices.CENTERINGS),
    ("loss.ibot_mask_mode", choices.IBOT_MASK_MODES),
])
def test_pretraining_config_accepts_exactly_the_choices(key: str, allowed: tuple[str, ...]) -> None:
    section, name = key.split(".")
    for value in allowed:
        assert getattr(getattr(load_config(None, [f"{key}={value}"]), section), name) == value
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [f"{key}=nope"])


@pytest.mark.parametrize("key,allowed", [
    ("model.features", choices.FEATURE_RECIPES),
    ("trainer.accelerator", choices.ACCELERATORS),
])
def test_finetune_config_accepts_exactly_the_choices(key: str, allowed: tuple[str, ...]) -> None:
    from geossl.finetune.config import load_finetune_config

    config = REPO / "configs" / "finetune_demo.yaml"
    for value in allowed:
        load_finetune_config(config, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_finetune_config(config, [f"{key}=nope"])


def test_the_encoder_computes_every_feature_recipe(tmp_path: Path) -> None:
    from bench.synthetic import make_tiny_encoder
    from geossl.models.encoder import load_encoder

    encoder = load_encoder(make_tiny_encoder(tmp_path / "enc", img_size=16, patch_size=8))
    x = torch.zeros(2, 3, 16, 16)
    with torch.no_grad():
        for recipe in choices.FEATURE_RECIPES:
            assert encoder.features(x, recipe).shape == (2, encoder.feature_dim(recipe))
    with pytest.raises(ValueError, match="unknown feature recipe"):
        encoder.feature_dim("nope")


def test_band_adaptation_and_checkpoint_unwrapping_take_every_choice() -> None:
    from geossl.models.bands import adapt_input_weight, map_bands
    from geossl.models.checkpoints import unwrap_checkpoint

    mapping = map_bands(["B4", "B3", "B2"], ["B2", "B3", "B4", "B8"])
    weight = torch.randn(5, 3, 2, 2)
    for policy in choices.NEW_BAND_POLICIES:
        assert adapt_input_weight(weight, mapping, policy).shape == (5, 4, 2, 2)
    with pytest.raises(ValueError, match="--new-bands"):
        adapt_input_weight(weight, mapping, "nope")
    content = {name: {"backbone.w": torch.ones(1)} for name in choices.CHECKPOINT_WEIGHTS}
    for which in choices.CHECKPOINT_WEIGHTS:
        assert unwrap_checkpoint(content, which)[1] == f"dino-{which}"
    with pytest.raises(ValueError, match="--which"):
        unwrap_checkpoint(content, "ema")


def test_the_dino_objective_takes_every_centering_and_mask_mode() -> None:
    from geossl.dino.objective import TeacherCentering, draw_masks

    for centering in choices.CENTERINGS:
        targets = TeacherCentering(8, centering=centering).targets(torch.randn(4, 8), 0.07)
        assert targets.shape == (4, 8)
    for mode in choices.IBOT_MASK_MODES:
        masks = draw_masks(4, (4, 4), [0.1, 0.5], 1.0, mode, torch.Generator().manual_seed(0))
        assert masks.shape == (4, 16) and masks.any()


def test_inference_takes_every_blend_rescale_and_input_mode() -> None:
    from geossl.models.encoder import EncoderMeta
    from geossl.predict.blend import axis_weights
    from geossl.predict.scene import check_blend_and_dtype
    from geossl.predict.tiles import split_inputs
    from geossl.scene.rescale import check_rescale

    cells = np.array([[0, 0, 8], [1, 8, 16]])
    for blend in choices.BLENDS:
        assert axis_weights(blend, cells, 0, 8, 16).shape == (2,)
        for dtype in choices.PROBS_DTYPES:
            check_blend_and_dtype(blend, dtype)
    with pytest.raises(ValueError, match="--probs-dtype"):
        check_blend_and_dtype("mean", "float16")

    meta = EncoderMeta(timm_name="vit_tiny_patch16_224", timm_kwargs={"in_chans": 1}, bands=["b"], mean=[5.0],
                       std=[2.0], patch_size=8, img_size=16, embed_dim=8, p2=[1.0], p98=[9.0])
    for rescale in choices.RESCALES:
        check_rescale(rescale, meta)
    with pytest.raises(ValueError, match="--rescale"):
        check_rescale("histogram", meta)
    assert split_inputs([], "auto", 16, False) == ([], [])
    assert split_inputs(["a.tif"], "scene", 16, False) == (["a.tif"], [])
    assert split_inputs(["a.tif"], "tiles", 16, False) == ([], ["a.tif"])
    assert set(choices.INPUT_MODES) == {"auto", "scene", "tiles"}  # split_inputs' three cases


def test_choices_module_imports_nothing_and_config_and_help_stay_torch_free() -> None:
    tree = ast.parse((REPO / "geossl" / "choices.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)
    for name in dir(choices):
        if name.isupper():
            value = getattr(choices, name)
            assert isinstance(value, tuple | int), name
            if isinstance(value, tuple):
                assert len(set(value)) == len(value) and value, name
    script = (
        "import sys\n"
        "from geossl.config import load_config\n"
        "from geossl.cli import build_parser\n"
        "load_config(None, [])\n"
        "build_parser(['probe']).parse_args(['probe', '--encoder', 'e', '--out', 'x'])\n"
        "import geossl.cloud.job_config\n"
        "print(sorted(m for m in ('torch', 'rasterio') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
