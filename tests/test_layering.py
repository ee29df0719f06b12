"""Layering: lower packages never import higher ones (DINOv2's split of concerns, kept by a test).

data/, models/, evaluation/ are below dino/ (training), probe/ and predict/ (using encoders); dino/
never imports probe/ or predict/. Checked on the source with ast, imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geossl"
FORBIDDEN = {
    "data": ("geossl.dino", "geossl.probe", "geossl.predict", "geossl.cloud", "geossl.evaluation"),
    "models": ("geossl.dino", "geossl.probe", "geossl.predict", "geossl.cloud", "geossl.evaluation"),
    "evaluation": ("geossl.dino", "geossl.probe", "geossl.predict", "geossl.cloud"),
    "dino": ("geossl.probe", "geossl.predict"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(layer):
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in imported_modules(path):
            if name.startswith(FORBIDDEN[layer]):
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not offenders, offenders


def test_the_dino_objective_needs_no_training_machinery():
    """dino/objective/ (losses, centring, masking, schedules) is plain torch: no Lightning, no config, no
    other part of geossl, so it can be read and tested alone."""
    offenders = []
    for path in sorted((PACKAGE / "dino" / "objective").rglob("*.py")):
        for name in imported_modules(path):
            if name.startswith(("lightning", "pytorch_lightning")) or (
                    name.startswith("geossl") and not name.startswith("geossl.dino.objective")):
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not offenders, offenders


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from geossl.probe.run import run_probe\n    import geossl.predict.scene\n")
    assert {"geossl.probe.run", "geossl.predict.scene"} <= imported_modules(source)
