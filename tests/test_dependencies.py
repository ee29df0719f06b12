"""pyproject.toml declares what the package imports, and imports what it declares.

The imports are read with ``ast`` from every file under geossl/ (also those inside functions, and
``importlib.import_module("literal")``); imports under ``if TYPE_CHECKING:`` never run and are ignored.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Import name -> distribution name, where they differ.
DISTRIBUTION = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "skimage": "scikit-image",
    "osgeo": "gdal",
    # botocore is boto3's own lower layer (boto3 users are meant to catch botocore.exceptions) and boto3
    # pins it to a narrow range; declaring it apart could only conflict with that pin.
    "botocore": "boto3",
}
# Extras that may provide an import instead of [project].dependencies (optional features).
OPTIONAL = {"sagemaker": "sagemaker"}  # the SageMaker SDK, loaded lazily by geossl.cloud.launcher
# Declared but never imported by geossl/ or sagemaker/, on purpose:
USED_INDIRECTLY = {
    # Lightning's TensorBoardLogger (geossl.dino.train) needs it and Lightning does not require it.
    "tensorboard",
}


def _normalise(name: str) -> str:
    """PEP 503 name: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST) -> Iterator[str]:
    """Top-level names of the absolute imports in ``tree`` that can run."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (name for child in node.orelse for name in _imported_names(ast.Module([child], [])))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.args[0].value.split(".")[0]
        yield from _imported_names(node)


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """{top-level module: files importing it} for third-party modules imported under ``folder``."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        for name in _imported_names(ast.parse(path.read_text(), str(path))):
            if name not in sys.stdlib_module_names and name != "geossl" and name != "__future__":
                found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_imported_module_is_declared() -> None:
    project = _project()
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    extras = {extra: {_requirement_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    undeclared = {}
    for module, files in third_party_imports("geossl").items():
        dist = _normalise(DISTRIBUTION.get(module, module))
        if dist in runtime or (module in OPTIONAL and dist in extras.get(OPTIONAL[module], set())):
            continue
        undeclared[module] = sorted(files)
    assert not undeclared, f"imported by geossl but not declared in pyproject.toml: {undeclared}"


def test_every_declared_dependency_is_imported() -> None:
    imported = {_normalise(DISTRIBUTION.get(m, m)) for folder in ("geossl", "sagemaker")
                for m in third_party_imports(folder)}
    declared = {_requirement_name(r) for r in _project()["dependencies"]}
    unused = declared - imported - {_normalise(n) for n in USED_INDIRECTLY}
    assert not unused, f"declared in pyproject.toml but imported nowhere under geossl/ or sagemaker/: {sorted(unused)}"
    stale = {_normalise(n) for n in USED_INDIRECTLY} - declared
    assert not stale, f"allow-listed but no longer declared (drop from USED_INDIRECTLY): {sorted(stale)}"


def test_the_import_scan_sees_what_it_must() -> None:
    """The scan itself: lazy imports, import_module literals and TYPE_CHECKING blocks."""
    tree = ast.parse(
        "import a.b\nfrom c import d\nfrom . import rel\nif TYPE_CHECKING:\n    import hidden\nelse:\n    import e\n"
        "def f():\n    import g\n    importlib.import_module('h.i')\n    import_module(name)\n"
    )
    assert sorted(_imported_names(tree)) == ["a", "c", "e", "g", "h"]
    geossl = third_party_imports("geossl")
    assert {"torch", "shapely", "pyproj", "sagemaker"} <= geossl.keys()
