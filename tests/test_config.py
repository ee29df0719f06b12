import re

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
    from geossl.choices import FEATURE_RECIPES

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


BILLION_LAUGHS = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True))


def test_an_alias_bomb_is_one_line_naming_the_file_not_a_memory_error(tmp_path, capsys):
    """9 levels of 9 aliases: 387 million values once expanded. PyYAML loads it in a millisecond (aliases
    are shared) and the type checks then ran out of memory; now the expansion is counted and refused."""
    from geossl.cli import main

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS + "data:\n  paths: *i\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml: not valid YAML \(aliases expand it to more than 100,000"):
        load_config(bomb)
    assert main(["pretrain", "--config", str(bomb), "--print-config"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"geossl pretrain: error: {bomb}: not valid YAML") and len(err.splitlines()) == 1
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("data:\n  paths: &p [x, *p]\n")
    with pytest.raises(ConfigError, match=r"recursive.yaml: not valid YAML \(an alias refers to a node that contains it"):
        load_config(recursive)


def test_aliases_used_as_intended_still_load(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text("data:\n  bands: &b [1, 2, 3]\n  paths: [a, b]\nmodel:\n  extra: {bands: *b}\n")
    cfg = load_config(path)
    assert cfg.data.bands == [1, 2, 3] and cfg.model.extra == {"bands": [1, 2, 3]}


@pytest.mark.parametrize(("override", "message"), [
    ("seed=!!python/object/apply:os.system [echo hi]", "could not determine a constructor for the tag"),
    ("data.bands=[1, 2", "expected ',' or ']'"),
    ("data.bands=*nowhere", "found undefined alias"),
    ("data.paths=" + BILLION_LAUGHS.replace("\n", ", ").join("{}"), "aliases expand it to more than"),
])
def test_a_hostile_override_is_one_line_naming_the_override(override, message, tmp_path, capsys):
    from geossl.cli import main

    with pytest.raises(ConfigError, match=r"override '.*': not a valid YAML value \(.*" + re.escape(message)):
        load_config(None, [override])
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    assert main(["pretrain", "--config", str(config), "--print-config", override]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"geossl pretrain: error: override '{override}'") and len(err.splitlines()) == 1
