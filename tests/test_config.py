import pytest

from geossl.config import ConfigError, load_config


def test_defaults_are_the_paper_values():
    cfg = load_config()
    assert cfg.loss.student_temp == 0.1 and cfg.loss.teacher_temp == 0.07
    assert cfg.optim.momentum_teacher == 0.996 and cfg.optim.clip_grad == 3.0
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.4)


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'optim.epoch'"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"key 'data.batch_size': expected int"):
        load_config(path)


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["optim.epochs=3", "optim.warmup_epochs=1", "data.bands=[1,2,3]", "optim.base_lr=1e-4",
                             "trainer.max_steps=null"])
    assert cfg.optim.epochs == 3 and cfg.data.bands == [1, 2, 3]
    assert cfg.optim.base_lr == pytest.approx(1e-4) and cfg.trainer.max_steps is None
    with pytest.raises(ConfigError, match="override 'optim.nope=1'"):
        load_config(None, ["optim.nope=1"])


def test_unstable_teacher_temperature_refused():
    with pytest.raises(ConfigError, match="loss.teacher_temp"):
        load_config(None, ["loss.teacher_temp=0.1"])


def test_feature_recipe_is_checked_against_the_encoder_recipes():
    from geossl.models.encoder import FEATURE_RECIPES

    for recipe in FEATURE_RECIPES:
        assert load_config(None, [f"model.feature_recipe={recipe}"]).model.feature_recipe == recipe
    with pytest.raises(ConfigError, match="key 'model.feature_recipe'"):
        load_config(None, ["model.feature_recipe=cls_last5"])


def test_a_key_given_twice_is_an_error_naming_the_file_key_and_lines(tmp_path):
    from geossl.config import ConfigError, load_config

    nested = tmp_path / "twice.yaml"
    nested.write_text("optim:\n  epochs: 3\n  base_lr: 0.001\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML .*key 'epochs' appears twice .*lines 2 and 4"):
        load_config(nested)
    section = tmp_path / "sections.yaml"
    section.write_text("optim:\n  epochs: 3\ndata:\n  batch_size: 8\noptim:\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"key 'optim' appears twice .*lines 1 and 5"):
        load_config(section)
