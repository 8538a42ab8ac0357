"""The package's shape (docs/README.md, "Code map"): layers, one default per setting, package faces."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

import scripts
from scripts.maps import DEFAULT_SCALE_COMBINATION

SCRIPTS = Path(scripts.__file__).parent
LAYERS = [
    {"faces", "data", "prototypes", "maps", "weights", "calibration"},
    {"networks", "losses", "metrics", "uncertainty", "cli"},
    {"push", "stack_4d"},
    {"engine", "explain"},
    {"evaluate", "inference"},
    {"prune", "cv", "compare", "confidence", "counterfactual"},
]
"""Top-level parts of ``scripts`` from the ground up; a part may import its own layer or those below."""


def _part(module: str) -> str:
    return module.split(".")[1]


def _layer(part: str) -> int:
    return next(i for i, parts in enumerate(LAYERS) if part in parts)


def _imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """``scripts.*`` modules imported by the code ``source`` of ``module`` (relative imports resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.append(f"{base}.{node.module}" if node.module else base)
            elif node.module and node.module.startswith("scripts."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("scripts.")]
    return found


def _upward(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``source`` (the code of ``module``) from a higher layer than its own."""
    own = _layer(_part(module))
    return [m for m in _imports(source, module, is_package) if _layer(_part(m)) > own]


def _name(path: Path) -> str:
    parts = path.relative_to(SCRIPTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if path.name == "__init__.py" else parts)


MODULES = sorted(p for p in SCRIPTS.rglob("*.py") if "__pycache__" not in p.parts)
BELOW_ROOT = [p for p in MODULES if p != SCRIPTS / "__init__.py"]


def test_every_part_has_a_layer():
    parts = {p.relative_to(SCRIPTS).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    assert parts == set().union(*LAYERS)


@pytest.mark.parametrize("path", BELOW_ROOT, ids=lambda p: str(p.relative_to(SCRIPTS)))
def test_no_import_runs_up_a_layer(path):
    assert not _upward(path.read_text(), _name(path), path.name == "__init__.py")


def test_networks_and_losses_do_not_import_each_other():
    for part, other in (("networks", "losses"), ("losses", "networks")):
        for path in (SCRIPTS / part).glob("*.py"):
            imported = _imports(path.read_text(), _name(path), path.name == "__init__.py")
            assert not any(_part(m) == other for m in imported), f"{path.name} imports scripts.{other}"


def test_an_upward_import_is_caught():
    assert _upward("from scripts.explain.attribution import class_map\n", "scripts.metrics") == [
        "scripts.explain.attribution"
    ]
    assert _upward("from ..explain import report\n", "scripts.evaluate.fold") == []
    assert _upward("from ..inference import EvidenceWriter\n", "scripts.explain.gallery") == ["scripts.inference"]


@pytest.mark.parametrize("path", [p for p in MODULES if p.name == "__init__.py"], ids=lambda p: str(p.parent.name))
def test_every_package_face_is_one_exports_table(path):
    tree = ast.parse(path.read_text())
    statements = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    kinds = [type(n).__name__ for n in statements]
    assert kinds == ["ImportFrom", "ImportFrom", "Assign"], f"{path}: {kinds}"
    assert ast.unparse(statements[1]) == "from scripts.faces import exports"


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__init__.py"], ids=lambda p: str(p.relative_to(SCRIPTS)))
def test_every_module_declares_all(path):
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets) for n in tree.body)


def test_every_face_name_resolves():
    import importlib

    for path in MODULES:
        if path.name == "__init__.py":
            package = importlib.import_module(".".join(path.parent.relative_to(SCRIPTS.parent).parts))
            for name in package.__all__:
                assert getattr(package, name) is not None, f"{package.__name__}.{name}"


def test_one_default_of_scale_combination():
    import scripts.counterfactual
    import scripts.evaluate.fold
    import scripts.explain.attribution
    import scripts.explain.case_files
    import scripts.inference
    import scripts.maps

    modules = [scripts.maps, scripts.explain.attribution, scripts.evaluate.fold, scripts.counterfactual,
               scripts.inference, scripts.explain.case_files]
    defaults = []
    for module in modules:
        for _, obj in inspect.getmembers(module, lambda o: inspect.isfunction(o) or inspect.isclass(o)):
            if obj.__module__ != module.__name__:
                continue
            function = obj.__init__ if inspect.isclass(obj) else obj
            for name, parameter in inspect.signature(function).parameters.items():
                if name in ("combination", "scale_combination") and parameter.default is not inspect.Parameter.empty:
                    defaults.append((f"{module.__name__}.{obj.__qualname__}", parameter.default))
    assert len(defaults) >= 6 and {d for _, d in defaults} == {DEFAULT_SCALE_COMBINATION}, defaults
    assert json.loads(Path("configs/inference.json").read_text())["scale_combination"] == DEFAULT_SCALE_COMBINATION
