"""Reliability: bad input, faults, crashes and resumption, safe loading (docs/reliability.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import REPO

from dekr.config import RecipeError, load_recipe
from dekr.module import load_checkpoint

QUICK = REPO / "recipes" / "quickstart.yaml"


# ------------------------------------------------------------------------------ safe loading
def _unsafe_torch_loads(path: Path) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls in ``path`` without ``weights_only=True``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        func = getattr(node, "func", None)
        if not (isinstance(node, ast.Call) and isinstance(func, ast.Attribute)):
            continue
        if func.attr != "load" or not (
            isinstance(func.value, ast.Name) and func.value.id == "torch"
        ):
            continue
        flags = [k for k in node.keywords if k.arg == "weights_only"]
        if not (
            flags and isinstance(flags[0].value, ast.Constant) and flags[0].value.value is True
        ):
            bad.append(node.lineno)
    return bad


def test_every_torch_load_is_weights_only(tmp_path: Path) -> None:
    sources = sorted([*(REPO / "dekr").rglob("*.py"), *(REPO / "tools").rglob("*.py")])
    assert sources
    offenders = {str(p.relative_to(REPO)): _unsafe_torch_loads(p) for p in sources}
    assert {p: lines for p, lines in offenders.items() if lines} == {}
    # the checker itself sees an unsafe call
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\ntorch.load('x')\ntorch.load('y', weights_only=True)\n")
    assert _unsafe_torch_loads(probe) == [2]


def test_yaml_python_tags_are_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.yaml"
    bad.write_text(
        "seed: !!python/object/apply:os.system\n"
        f"  - touch {marker}\n"
        "model: !!python/object:argparse.Namespace {backbone: x}\n"
    )
    with pytest.raises(RecipeError, match="not a valid YAML recipe"):
        load_recipe(bad)
    assert not marker.exists()


class _Payload:
    """Pickles to a call that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"recipe": {}}, "state_dict": _Payload(marker)}, ckpt)
    with pytest.raises(ValueError, match=f"cannot read checkpoint {ckpt}"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
