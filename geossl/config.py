"""Typed run configuration: YAML file + ``key.sub=value`` overrides, validated strictly.

The keys, their types and defaults (the DINO paper's values) are the dataclasses of
:mod:`geossl.config_schema`, exported here too (``from geossl.config import Config``). Unknown keys and
wrong types are errors that name the key and the file, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from geossl import choices
from geossl.config_checks import ConfigError, check_values
from geossl.config_schema import AugmentConfig as AugmentConfig
from geossl.config_schema import Config
from geossl.config_schema import DataConfig as DataConfig
from geossl.config_schema import EvalConfig as EvalConfig
from geossl.config_schema import HeadConfig as HeadConfig
from geossl.config_schema import LossConfig as LossConfig
from geossl.config_schema import ModelConfig as ModelConfig
from geossl.config_schema import OptimConfig as OptimConfig
from geossl.config_schema import TrainerConfig as TrainerConfig
from geossl.settings import resolve_data_path


def _check_type(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise a ConfigError naming ``key``."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{source}: key '{key}': expected {_type_name(annotation)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float, str, bool):
        if isinstance(value, bool) and annotation is not bool:
            raise ConfigError(f"{source}: key '{key}': expected {annotation.__name__}, got {value!r}")
        if not isinstance(value, annotation):
            raise ConfigError(f"{source}: key '{key}': expected {annotation.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}': unsupported type {annotation}")


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def merge_into(obj: Any, values: dict[str, Any], prefix: str, source: str) -> None:
    """Set dataclass fields of ``obj`` from nested ``values``, strictly (shared by every typed config)."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{full}' (valid: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key '{full}': expected a mapping, got {value!r}")
            merge_into(current, value, f"{full}.", source)
        else:
            setattr(obj, key, _check_type(value, hints[key], full, source))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value parsed as YAML, so ``3``, ``1e-4``, ``[1,2]``, ``null`` work).

    The value goes through the same loader as config files, so a ``!!python/object`` tag or an alias
    bomb on a command line is the same one-line error naming the override, never a traceback."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value (e.g. optim.epochs=10)")
    key, raw = text.split("=", 1)
    if not raw.strip():
        return key.strip().split("."), ""
    try:
        value = _load_yaml(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': not a valid YAML value ({_yaml_problem(exc)})") from None
    return key.strip().split("."), value


MAX_YAML_VALUES = 100_000  # values in a document once its aliases are expanded; a real config has a few hundred


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key repeated in one mapping is an error: PyYAML keeps the last silently,
    so a config that says two things (a second ``compute:`` section, ``epochs`` twice) would run one of them.

    And aliases may not expand a document beyond :data:`MAX_YAML_VALUES` values: PyYAML shares an aliased
    node rather than copying it, so a "billion laughs" file loads in a millisecond, but every later step
    that walks the config (type checks, ``asdict``, writing the run's config.yaml) expands it and runs out
    of memory. Aliases used as intended (a few shared lists) stay far below the limit."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return self.construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the values of the composed document as if every alias were copied (iteratively, memoised per
    node, so the count itself costs one visit per node); too many, or an alias inside itself, is an error."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if not children_done:
            if id(node) in open_nodes:
                raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                                  node.start_mark)
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[id(node)] > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand it to more than {MAX_YAML_VALUES:,} values (an alias bomb?)",
                node.start_mark)


def _load_yaml(text: str) -> Any:
    """YAML text -> Python values, by :class:`_UniqueKeyLoader` (safe tags only, aliases bounded)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: PyYAML's own message spans several lines and quotes the source."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = "; ".join(str(part) for part in (exc.context, exc.problem) if part) or type(exc).__name__
        mark = exc.problem_mark or exc.context_mark
        return f"{what}, line {mark.line + 1} column {mark.column + 1}" if mark else what
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML file whose top level is a mapping, with no key given twice; errors name the file."""
    path = Path(path)
    try:
        raw = _load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def apply_override(obj: Any, keys: list[str], value: Any, text: str) -> None:
    """Set the dotted ``keys`` of ``obj`` to ``value`` with the same checks as a YAML file."""
    nested: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        nested = {k: nested}
    merge_into(obj, nested, "", f"override '{text}'")


def fill_config(cfg: Any, path: str | Path | None, overrides: list[str] | None, what: str = "config") -> Any:
    """Any typed config (pretraining, fine-tuning): defaults in ``cfg``, then the YAML file, then ``key=value``
    overrides, each strictly (the one loader every config goes through)."""
    if path is not None:
        merge_into(cfg, read_yaml_mapping(path, what), "", str(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(cfg, keys, value, text)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    cfg = fill_config(Config(), path, overrides)
    validate(cfg)
    resolve_data_root(cfg)
    return cfg


def resolve_data_root(cfg: Config) -> None:
    """Expand ``$GEOSSL_DATA`` in every data path of ``cfg`` once, where the config is loaded: training,
    statistics and the online k-NN then read the same root (``GEOSSL_DATA``, else ``data.root``, else
    ``../shared/data`` or ``./data``; see :mod:`geossl.settings`), and the run's config.yaml shows the
    paths actually read."""
    root = cfg.data.root
    cfg.data.paths = [resolve_data_path(p, root) for p in cfg.data.paths]
    if cfg.data.stats:
        cfg.data.stats = resolve_data_path(cfg.data.stats, root)
    if cfg.eval.knn_data:
        cfg.eval.knn_data = resolve_data_path(cfg.eval.knn_data, root)


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    cfg = Config()
    merge_into(cfg, values, "", source)
    validate(cfg)
    return cfg


def _one_of(values: tuple[str, ...]) -> str:
    """``('a', 'b', 'c')`` -> ``"'a', 'b' or 'c'"``, as the messages have always named the choices."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def validate(cfg: Config) -> None:
    """Checks the types cannot express: choices here, numbers and ranges in :mod:`geossl.config_checks`."""
    if cfg.data.kind not in choices.DATA_KINDS:
        raise ConfigError(f"key 'data.kind': expected {_one_of(choices.DATA_KINDS)}, got {cfg.data.kind!r}")
    if cfg.trainer.accelerator not in choices.ACCELERATORS:
        raise ConfigError(f"key 'trainer.accelerator': unknown accelerator {cfg.trainer.accelerator!r}")
    if cfg.model.feature_recipe not in choices.FEATURE_RECIPES:
        raise ConfigError(f"key 'model.feature_recipe': expected one of {list(choices.FEATURE_RECIPES)}, "
                          f"got {cfg.model.feature_recipe!r}")
    if cfg.model.init_new_bands not in choices.NEW_BAND_POLICIES:
        raise ConfigError(f"key 'model.init_new_bands': expected {_one_of(choices.NEW_BAND_POLICIES)}, "
                          f"got {cfg.model.init_new_bands!r}")
    if cfg.loss.centering not in choices.CENTERINGS:
        raise ConfigError(f"key 'loss.centering': expected {_one_of(choices.CENTERINGS)}, got {cfg.loss.centering!r}")
    if cfg.loss.ibot_mask_mode not in choices.IBOT_MASK_MODES:
        raise ConfigError(f"key 'loss.ibot_mask_mode': expected {_one_of(choices.IBOT_MASK_MODES)}, "
                          f"got {cfg.loss.ibot_mask_mode!r}")
    check_values(cfg)
