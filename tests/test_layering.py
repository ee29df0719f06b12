"""Layering: lower packages never import higher ones (DINOv2's split of concerns, kept by a test).

data/, models/, evaluation/ are below dino/ (training), probe/ and predict/ (using encoders); dino/
never imports probe/ or predict/. scene/ (a scene as the model sees it) sits on data/ and models/,
below predict/, labels/ and probe/, which never import predict/. No module imports another's private
names. Checked on the source with ast, imports inside functions included.
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
    "scene": ("geossl.predict", "geossl.labels", "geossl.probe", "geossl.dino", "geossl.finetune", "geossl.cloud",
              "geossl.evaluation", "geossl.cli", "geossl.demo"),
    "labels": ("geossl.predict", "geossl.probe", "geossl.dino", "geossl.finetune", "geossl.cloud"),
    "probe": ("geossl.predict",),
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


def test_no_module_imports_a_private_name_of_another():
    """A name used across modules is public (documented where it lives); ``_name`` stays in its module."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geossl"):
                offenders += [f"{path.relative_to(PACKAGE.parent)}: {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_")]
    assert not offenders, offenders


# docs/architecture.md's table: what each package or top-level module may import from geossl (besides itself)
FOUNDATION = {"settings", "io", "choices", "devices", "argtypes", "plotting"}
CONFIG = {"config", "config_checks", "config_schema"}
ALLOWED: dict[str, set[str]] = {
    **{name: FOUNDATION for name in FOUNDATION},
    **{name: FOUNDATION | CONFIG for name in CONFIG},
    "data": FOUNDATION,
    "models": FOUNDATION | CONFIG | {"data"},
    "evaluation": FOUNDATION | {"models"},
    "scene": FOUNDATION | {"data", "models"},
    "dino": FOUNDATION | CONFIG | {"data", "models", "evaluation"},
    "labels": FOUNDATION | {"data", "models", "scene"},
    "probe": FOUNDATION | {"data", "models", "evaluation", "labels"},
    "predict": FOUNDATION | {"data", "models", "scene"},
    "finetune": FOUNDATION | CONFIG | {"data", "models", "dino", "labels", "probe"},
    "cloud": FOUNDATION | CONFIG | {"data", "models", "dino", "finetune", "predict"},
}
ENTRY = {"cli", "__main__", "demo", "__init__"}  # may import anything


def unit_of(path: Path) -> str:
    """The package (first folder under geossl/) or top-level module a source file belongs to."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def geossl_unit_imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = unit_of(path)
        targets = {name.split(".")[1] for name in imported_modules(path) if name.startswith("geossl.")}
        edges.setdefault(unit, set()).update(targets - {unit})
    return edges


def test_every_import_between_packages_is_one_the_architecture_page_allows():
    edges = geossl_unit_imports()
    unknown = sorted(set(edges) - set(ALLOWED) - ENTRY)
    assert not unknown, f"packages missing from docs/architecture.md and ALLOWED: {unknown}"
    offenders = [f"{unit} imports geossl.{target}" for unit, targets in sorted(edges.items()) if unit not in ENTRY
                 for target in sorted(targets) if target not in ALLOWED[unit]]
    assert not offenders, offenders


def assert_no_circle(edges: dict[str, set[str]], skip: frozenset[str] | set[str] = frozenset()) -> None:
    """Depth-first search; a circle fails with its path (a -> b -> a)."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join([*trail, node, target]))
            if target not in state:
                visit(target, [*trail, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state and node not in skip:
            visit(node, [])


def test_the_circle_search_finds_a_circle():
    with pytest.raises(AssertionError, match="a -> b -> a"):
        assert_no_circle({"a": {"b"}, "b": {"a"}})
    assert_no_circle({"a": {"b"}, "b": set()})


def test_the_package_graph_has_no_circle():
    assert_no_circle(geossl_unit_imports(), skip=ENTRY)


def test_the_architecture_page_names_every_package():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for unit in set(ALLOWED) - FOUNDATION - CONFIG:
        assert f"`{unit}/`" in page, unit


def test_no_two_modules_import_each_other_even_inside_functions():
    """The module graph (geossl.data.s3, ...) has no circle: an import inside a function must not hide one."""
    def module_name(path: Path) -> str:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {name: {m for m in imported_modules(path) if m in modules and m != name and not name.startswith(m + ".")
                    and not m.startswith(name + ".")}
             for name, path in modules.items()}
    assert_no_circle(edges)


def test_the_tests_mirror_the_package_tree():
    """tests/<package>/ for each package's tests (tests/benchmarks/ for bench/, tests/ itself for the top-level
    modules and the end-to-end runs), named by subject, and no two test files share a name: pytest's default
    import mode puts each test folder on sys.path, where two ``test_x.py`` would shadow each other."""
    tests = Path(__file__).resolve().parent
    folders = {p.parent.relative_to(tests) for p in tests.rglob("test_*.py")}
    strays = [str(f) for f in folders if f.parts and f.parts != ("benchmarks",) and not (PACKAGE / f).is_dir()]
    assert not strays, f"test folders with no package of that name in geossl/: {strays}"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    by_round = [n for n in names if n.startswith(("test_defects_", "test_numbers_"))]
    assert not by_round, f"name tests by subject, not by the review round that wrote them: {by_round}"


# Third-party modules whose import costs at least 0.2 s on the 2-core development machine (measured with
# `python -c "import X"`: torch 2.7 s, lightning 7 s, timm 4.4 s, peft 7 s, litdata 2.5 s, safetensors.torch
# 2.1 s, pyogrio 0.8 s, matplotlib.pyplot 0.7 s, geopandas 0.6 s, rasterio 0.4 s, boto3 0.2 s, pyarrow 0.2 s;
# docs/architecture.md), plus the optional extras, and tqdm where `geossl data fetch --help` must stay light
# (tests/data/test_fetch_mirror.py). Only these may be imported inside a function, so
# `geossl --help` and the light commands do not pay for the heavy ones; everything else goes at the top.
DEFERRABLE = {"torch", "torchvision", "lightning", "timm", "peft", "litdata", "safetensors", "rasterio", "geopandas",
              "pyogrio", "matplotlib", "boto3", "pyarrow", "torchgeo", "sagemaker", "numpy", "PIL", "tqdm"}


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import inside a function, except in a ``try`` (an optional dependency)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        chain, up = [], parents.get(node)
        while up is not None:
            chain.append(up)
            up = parents.get(up)
        if any(isinstance(n, ast.Try) for n in chain) or not any(
                isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in chain):
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        found += [(node.lineno, name) for name in names if not (isinstance(node, ast.ImportFrom) and node.level)]
    return sorted(found)


def test_imports_inside_functions_only_defer_heavy_modules():
    """An import inside a function is for start-up time: of a heavy module (above) or of a geossl module that
    brings one; a cheap or standard-library import there only hides a dependency, so it goes at the top."""
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
                 for path in sorted(PACKAGE.rglob("*.py")) for line, name in function_level_imports(path)
                 if name.split(".")[0] not in DEFERRABLE | {"geossl"}]
    assert not offenders, offenders


def test_the_function_level_import_scan_sees_through_nesting(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    if True:\n        import csv\n    try:\n        import peft\n"
                   "    except ImportError:\n        pass\n    import torch\n")
    assert function_level_imports(src) == [(5, "csv"), (10, "torch")]
