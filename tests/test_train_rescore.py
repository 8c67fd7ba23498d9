"""tools/train_rescore.py end to end: tiny checkpoint → rescoring data → net → rescored scores."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO

from dekr.module import load_checkpoint
from dekr.rescore import Rescorer

sys.path.insert(0, str(REPO / "tools"))
import train_rescore  # noqa: E402

pytestmark = pytest.mark.slow  # training and prediction (tests/test_rescore.py: the net)

# an untrained tiny model rarely clears the official centre threshold: take every candidate
ALL_CANDIDATES = "decode.center_threshold=-1e9"


def _args(tiny_run: dict, output: Path, *extra: str) -> list[str]:
    root = tiny_run["root"]
    return [
        str(tiny_run["out"] / "checkpoints" / "last.ckpt"), *extra,
        "--annotations", str(root / "annotations" / "train.json"),
        "--images", str(root / "images" / "train"), "--output", str(output),
        "--epochs", "2", "--batch-size", "64", "--max-images", "6",
    ]  # fmt: skip


@pytest.mark.integration
def test_train_rescore_then_predict_with_it(tiny_run: dict, tmp_path: Path, capsys) -> None:
    net_path = tmp_path / "rescore.pth"
    assert train_rescore.main(_args(tiny_run, net_path, ALL_CANDIDATES, "decode.flip=false")) == 0
    assert net_path.is_file()
    assert "poses from 6 images" in capsys.readouterr().out

    ckpt = tiny_run["out"] / "checkpoints" / "last.ckpt"
    plain = load_checkpoint(ckpt, [ALL_CANDIDATES])
    rescored = load_checkpoint(ckpt, [ALL_CANDIDATES, f"decode.rescore_checkpoint={net_path}"])
    assert plain.decoder.rescorer is None and isinstance(rescored.decoder.rescorer, Rescorer)
    image_path = sorted((tiny_run["root"] / "images" / "train").iterdir())[0]
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        (base,) = plain.predict_images([image])
        (out,) = rescored.predict_images([image])
    assert len(out["scores"]) == len(base["scores"]) > 0
    np.testing.assert_allclose(out["keypoints"], base["keypoints"])
    expect = Rescorer.load(net_path, plain.spec)(base["keypoints"], base["scores"])
    np.testing.assert_allclose(out["scores"], expect, rtol=1e-5, atol=1e-7)
    assert np.isfinite(out["scores"]).all()


@pytest.mark.integration
def test_train_rescore_without_predictions_fails_clearly(tiny_run: dict, tmp_path: Path, capsys):
    net_path = tmp_path / "none.pth"
    assert train_rescore.main(_args(tiny_run, net_path, "decode.center_threshold=1e9")) == 2
    assert "predicted no poses" in capsys.readouterr().err
    assert not net_path.exists()
