"""The public API: lazy exports, and the TYPE_CHECKING block that type checkers read."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

from conftest import REPO

import dekr


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse((REPO / "dekr" / "__init__.py").read_text())
    block = next(
        n for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
    )  # fmt: skip
    return {a.name: imp.module for imp in block.body for a in imp.names}


def test_type_checking_block_matches_the_lazy_exports() -> None:
    assert _type_checking_imports() == dekr._EXPORTS


def test_every_export_resolves_to_its_definition() -> None:
    for name, module in dekr._EXPORTS.items():
        assert getattr(dekr, name) is getattr(importlib.import_module(module), name), name
    assert sorted(dir(dekr)) == sorted(dekr.__all__)


def test_import_dekr_stays_light() -> None:
    heavy = "('torch', 'pytorch_lightning')"
    code = f"import sys, dekr; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_weights_registry_is_reachable_after_import_dekr() -> None:
    """The README's ``dekr.weights.register(dekr.weights.Weights(...))`` after ``import dekr``."""
    code = "import dekr; print(dekr.weights.register.__module__, dekr.weights.Weights.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dekr.weights", "Weights"]
