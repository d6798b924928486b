"""The package's layering, checked on the import statements: the library does not import the trainer, models
and data do not import the losses, the engine does not import the inference API, and the trainer imports no
model family (it trains whatever task object it is given)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "openglip"


def _imports(path: Path) -> set[str]:
    """Absolute module names (``openglip.x.y``) imported anywhere in a file, relative imports resolved."""
    module = ".".join(("openglip", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return {n.removesuffix(".__init__") for n in found if n.startswith("openglip")}


RULES = [
    # (files under, must not import anything under, why)
    ("models", "openglip.losses", "a model returns raw tensors; losses are computed elsewhere"),
    ("models", "openglip.engine", "models do not know how they are trained"),
    ("data", "openglip.losses", "data produce targets; losses consume them"),
    ("data", "openglip.engine", "data do not know the training loop"),
    ("losses", "openglip.engine", "losses do not know the training loop"),
    ("engine", "openglip.api", "the engine works on any Predictor, not on the inference API"),
    ("engine/trainer.py", "openglip.models", "the trainer is generic: the task builds the model"),
    ("engine/trainer.py", "openglip.tasks", "the trainer is generic: it is given a task"),
    ("engine/trainer.py", "openglip.losses", "the trainer is generic: the task computes the losses"),
    ("data", "openglip.shapes", "data name no dataset: built-in worlds register with openglip.data.resolve"),
    ("engine", "openglip.shapes", "the engine evaluates any data; the shapes eval set is openglip.shapes'"),
    ("data", "openglip.demo", "the library does not import its demos"),
    ("engine", "openglip.demo", "the library does not import its demos"),
    ("shapes", "openglip.demo", "the demos use the shapes world, not the other way round"),
]


@pytest.mark.parametrize(("where", "forbidden", "why"), RULES)
def test_layering(where, forbidden, why):
    root = PACKAGE / where
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    assert files, where
    offenders = {
        str(f.relative_to(PACKAGE)): sorted(
            i for i in _imports(f) if i == forbidden or i.startswith(forbidden + ".")
        )
        for f in files
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{why}: {offenders}"


def test_the_import_reader_sees_relative_imports():
    assert "openglip.losses.masks" in _imports(PACKAGE / "tasks" / "glip.py")
    assert "openglip.config" in _imports(PACKAGE / "models" / "detector.py")


def test_only_the_shapes_package_compares_against_its_name():
    """A dataset name is resolved by openglip.data.resolve (built-ins register there): no module outside
    openglip/shapes/ may branch on ``== "shapes"`` or ``in ("shapes", ...)``."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "shapes":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [n for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value == "shapes"]
                if names:
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def test_the_library_reads_nothing_from_tests():
    """Package data ship inside src/openglip (read with importlib.resources); an installed wheel has no tests/."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in ("tests", "tests/")
    ]
    assert not offenders, offenders
