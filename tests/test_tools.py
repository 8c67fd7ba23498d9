"""Command-line tools: show_targets renders the recipe's targets."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import pytest
from conftest import REPO, TEST_DATA

sys.path.insert(0, str(REPO / "tools"))
import show_targets  # noqa: E402


def test_show_targets_from_a_recipe(tmp_path: Path, capsys) -> None:
    sample = TEST_DATA / "coco_sample"
    show_targets.main([
        "--recipe", str(REPO / "recipes" / "coco_w32.yaml"), "data.input_size=128",
        "--annotations", str(sample / "annotations" / "person_keypoints_val_sample.json"),
        "--images", str(sample / "images"), "--index", "4", "--out", str(tmp_path),
    ])  # fmt: skip
    names = {"image", "heatmaps", "centers", "weights", "offsets"}
    assert {p.stem for p in tmp_path.glob("*.png")} == names
    assert cv2.imread(str(tmp_path / "heatmaps.png")).shape[:2] == (128, 128)


@pytest.mark.parametrize("name", ["train_main", "eval_main", "predict_main", "export_main"])
def test_cli_help(name: str, capsys) -> None:
    import dekr.cli

    with pytest.raises(SystemExit) as exit_info:
        getattr(dekr.cli, name)(["--help"])
    assert exit_info.value.code == 0
    assert "usage: dekr-" in capsys.readouterr().out
