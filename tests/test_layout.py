"""The package's layering, checked on the import statements: the library does not import the trainer, models
and data do not import the losses, the engine does not import the inference API, and the trainer imports no
model family (it trains whatever task object it is given)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "openglip"


def _module_name(path: Path, root: Path) -> str:
    """``root/a/b.py`` -> ``root.a.b`` (``root`` is a package folder, named by its folder name)."""
    return ".".join((root.name, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")


def _import_statements(path: Path, module: str) -> list[tuple[list[str], bool]]:
    """One ``(names, inside_a_function)`` per import statement in ``path``, relative imports resolved against
    ``module``: ``import a.b`` gives ``["a.b"]``, ``from a import b, c`` gives ``["a", "a.b", "a.c"]``."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    in_function = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [([a.name], id(node) in in_function) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append(([name, *(f"{name}.{a.name}" for a in node.names)], id(node) in in_function))
    return found


def _imports(path: Path) -> set[str]:
    """Absolute module names (``openglip.x.y``) imported anywhere in a file, relative imports resolved."""
    found = {name for names, _ in _import_statements(path, _module_name(path, PACKAGE)) for name in names}
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
    assert "openglip.config" in _imports(PACKAGE / "models" / "glip.py")


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


# ------------------------------------------------------------------------------------------------------------
# import cycles
# ------------------------------------------------------------------------------------------------------------


def import_graph(root: Path, top_level: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ``root`` it imports, at module level or inside a function (a function-level
    import only postpones a cycle to the first call). ``top_level``: ``root`` is a folder of scripts that
    import each other by bare name (``benchmarks/``) rather than a package."""
    files = sorted(root.rglob("*.py"))
    modules = {(p.stem if top_level else _module_name(p, root)): p for p in files}

    def owner(name: str) -> str | None:  # the deepest module of root that ``name`` lies in
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else None

    graph = {}
    for module, path in modules.items():
        targets = set()
        for names, _ in _import_statements(path, module):
            found = [owner(n) for n in names]
            # ``from pkg import submodule`` needs the submodule, not what pkg/__init__.py defines
            targets.update(t for t in found[1:] or found if t)
            if found[0] and len(found) > 1 and found[0] in found[1:]:  # a name pkg/__init__.py defines
                targets.add(found[0])
        # importing pkg.sub.mod first runs pkg/__init__.py and pkg/sub/__init__.py (not the root's, which runs
        # before anything else, nor those of the importer's own packages, which are already running)
        own = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)}
        for t in list(targets):
            parts = t.split(".")
            targets.update(".".join(parts[:k]) for k in range(2 if not top_level else 1, len(parts)))
        graph[module] = {t for t in targets if t in modules} - own - {module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n    return g\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n\ndef g():\n    return f\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert import_cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]
    (tmp_path / "x.py").write_text("import y\n")
    (tmp_path / "y.py").write_text("def f():\n    from x import z\n")
    assert import_cycles(import_graph(tmp_path, top_level=True)) == [["x", "y"]]


@pytest.mark.parametrize("root", ["src/openglip", "benchmarks"])
def test_no_import_cycles(root):
    folder = PACKAGE.parents[1] / root
    assert import_cycles(import_graph(folder, top_level=root == "benchmarks")) == []


# Where an import may wait until a function runs, and why. Everything else is imported at module level, so that
# a module's dependencies are visible at its top and an import cycle cannot hide inside a function.
LAZY_IMPORTS = {
    # the package's own modules
    "openglip.cli": "the CLI answers --help and usage errors before torch and the library are imported",
    # optional extras and dependencies installed apart
    "pycocotools": "[eval] extra (COCO AP)",
    "faster_coco_eval": "[eval] extra (LVIS fixed AP, the second COCO implementation)",
    "lvis": "the LVIS API, installed without its dependencies (its pins are for its visualiser)",
    "open_clip": "[clip] extra (RegionCLIP's CLIP teacher and student)",
    "onnx": "[export] extra",
    "onnxscript": "[export] extra",
    "onnxruntime": "[export] extra (the exported graph's check and runner)",
    "uvicorn": "[serve] extra",
    "supervision": "[viz] extra (Detections.to_supervision)",
    "torch.utils.tensorboard": "the tensorboard package, only with TrainConfig.tensorboard",
    # heavy imports used on one path only
    "transformers": "about a second to import; only where a tokenizer or BERT is built",
    "tokenizers": "the torch-free ONNX runner needs it for open-vocabulary graphs only",
    "huggingface_hub": "only when an official model is named (download)",
    "webdataset": "only when shards are read or written",
    "pycocoevalcap": "only when captions are scored",
    "fcntl": "POSIX only: without it the label run takes no lock",
}


def test_function_level_imports_only_where_listed():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path, PACKAGE)
        if module.startswith("openglip.cli"):
            continue
        for names, local in _import_statements(path, module):
            lazy = any(names[0] == k or names[0].startswith(k + ".") for k in LAZY_IMPORTS)
            if local and not lazy:
                offenders.append(f"{module}: {names[0]}")
    assert not offenders, f"import these at module level, or list them in LAZY_IMPORTS with why: {offenders}"


def test_no_file_over_500_lines_and_no_function_over_80():
    """A file that grows past 500 lines is split by idea, a function past 80 lines by step (STYLE.md)."""
    long_files, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 500:
            long_files.append(f"{path.relative_to(PACKAGE)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno >= 80
            ):
                long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long_files and not long_functions, (long_files, long_functions)
