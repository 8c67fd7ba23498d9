"""The README's library example runs as written (in a temporary working directory)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO


def _example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- library-example:start -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README library example not found"
    return block.group(1)


@pytest.mark.slow
@pytest.mark.integration
def test_readme_library_example(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(_example(), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"\(\d+, 5, 3\) [0-9.]+$", last), last
    assert (tmp_path / "outputs" / "stars" / "checkpoints" / "last.ckpt").is_file()
