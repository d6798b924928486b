"""Benchmark scripts import lazily (inside functions) and are not run by the suite: every ``from openglip...
import name`` in them must name something that exists, so that an API change cannot leave a benchmark that
fails only when someone runs it."""

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_every_openglip_import_of_a_benchmark_resolves(script):
    checked = 0
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("openglip"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{script.name}:{node.lineno}: {node.module} has no {alias.name}"
                checked += 1
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("openglip"):
                    importlib.import_module(alias.name)
                    checked += 1
    assert checked or "openglip" not in script.read_text(), (
        f"{script.name} mentions openglip but imports none"
    )
