"""``dekr-export`` and ``dekr-predict --onnx`` on a tiny checkpoint (nothing trained)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dekr.cli import export_main, predict_main
from dekr.config import load_recipe
from dekr.inference import predict_poses
from dekr.module import DekrModule, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import convert_checkpoint as convert  # noqa: E402
import onnxruntime as ort  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
DIFF = re.compile(r"max abs difference (\S+)")


# three exports and ONNX predictions: slow tier (tests/test_export.py keeps the export core)
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """quickstart with hrnet_w8_tiny at 64 px; random weights with many centre peaks."""
    torch.manual_seed(0)
    # One test scale without heatmap matching: these tests compare networks (the quickstart's
    # multi-scale test needs other input sizes; matching's sub-pixel refit magnifies float noise).
    overrides = [
        "model.backbone=hrnet_w8_tiny",
        "data.input_size=64",
        "decode.scales=[1.0]",
        "decode.nms_threshold=0.05",
        "decode.match_heatmaps=false",
    ]
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", overrides)
    module = DekrModule.from_recipe(recipe)
    model = module.model
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    nn.init.constant_(model.head_heatmap[1].bias, 0.3)  # centre map above the 0.01 threshold
    model.head_heatmap[1].weight.data[-1].abs_()
    for final in model.offset_final_layer:  # offsets of a few output pixels
        nn.init.normal_(final.weight, std=2.0)
    return convert.save_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


FLAGS = {"static": (), "dynamic": ("--dynamic",), "decoder": ("--with-decoder",)}


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """``dekr-export`` once per kind: the file and what it printed."""
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for kind, flags in FLAGS.items():
        out = folder / f"{kind}.onnx"
        argv = [str(checkpoint), "--format", "onnx", "--out", str(out), "--input-size", "64"]
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert export_main([*argv, *flags]) == 0
        files[kind] = (out, printed.getvalue())
    return files


@pytest.mark.parametrize(
    "kind, outputs",
    [
        ("static", ["heatmaps", "offsets"]),
        ("dynamic", ["heatmaps", "offsets"]),
        ("decoder", ["poses", "scores"]),
    ],
)
def test_export_prints_difference(exported: dict, kind: str, outputs: list[str]) -> None:
    out, printed = exported[kind]
    assert f"wrote {out}" in printed
    assert float(DIFF.search(printed).group(1)) <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == outputs
    shape = session.get_inputs()[0].shape
    assert (shape == [1, 3, 64, 64]) != (kind == "dynamic")
    if kind == "decoder":  # poses (B, max_people, K, 3), scores (B, max_people)
        poses, scores = session.run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})
        assert poses.shape == (1, 30, 17, 3) and scores.shape == (1, 30)


def predictions(checkpoint: Path, images: list[Path], out: Path, *flags: str) -> list[dict]:
    argv = [str(checkpoint), *map(str, images), "--out", str(out), "--flip", *flags]
    assert predict_main(argv) == 0
    return json.loads((out / "predictions.json").read_text())


def assert_same(actual: list[dict], expected: list[dict], atol: float) -> None:
    assert len(expected) > 0 and len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a["image_id"] == e["image_id"] and len(a["keypoints"]) == 17 * 3
        np.testing.assert_allclose(a["keypoints"], e["keypoints"], atol=atol, rtol=0)
        assert abs(a["score"] - e["score"]) <= 1e-5


def test_predict_onnx_matches_torch(checkpoint: Path, exported: dict, tmp_path: Path) -> None:
    dynamic_onnx = exported["dynamic"][0]
    image = sorted((TEST_DATA / "crowdpose_sample" / "images").glob("*.jpg"))[0]
    expected = predictions(checkpoint, [image], tmp_path / "torch")
    actual = predictions(checkpoint, [image], tmp_path / "onnx", "--onnx", str(dynamic_onnx))
    assert_same(actual, expected, atol=0.01 + 1e-6)  # the JSON rounds to 0.01 px
    module = load_checkpoint(checkpoint)
    rgb = [cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)]
    kwargs = {"spec": module.spec, "input_size": 64, "flip": True, "decoder": module.decoder}
    with torch.no_grad():
        (torch_pred,) = predict_poses(module.model, rgb, **kwargs)
    from dekr.export import ONNXPoseModel

    (onnx_pred,) = predict_poses(ONNXPoseModel(dynamic_onnx), rgb, **kwargs)
    assert len(onnx_pred["scores"]) == len(torch_pred["scores"]) > 0
    np.testing.assert_allclose(onnx_pred["keypoints"], torch_pred["keypoints"], atol=1e-3)


def test_predict_with_static_onnx(checkpoint: Path, exported: dict, tmp_path: Path, capsys) -> None:
    static = exported["static"][0]
    rng = np.random.default_rng(0)
    squares = []
    for i in range(2):  # square images are resized to exactly the exported 64x64
        squares.append(tmp_path / f"square{i}.png")
        cv2.imwrite(str(squares[-1]), rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
    expected = predictions(checkpoint, squares, tmp_path / "torch", "--batch-size", "2")
    flags = ("--batch-size", "2", "--onnx", str(static))  # batch 2 runs image by image
    actual = predictions(checkpoint, squares, tmp_path / "onnx", *flags)
    assert_same(actual, expected, atol=0.01 + 1e-6)
    capsys.readouterr()
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), np.zeros((64, 128, 3), np.uint8))
    argv = [str(checkpoint), str(wide), "--out", str(tmp_path / "x"), "--onnx", str(static)]
    assert predict_main(argv) == 2
    assert "--dynamic" in capsys.readouterr().err
    argv = [str(checkpoint), str(squares[0]), "--out", str(tmp_path / "y"), "--onnx", str(static)]
    assert predict_main([*argv, "--scales", "1", "1.25"]) == 2  # 1.25 needs 80x80
    err = capsys.readouterr().err
    assert "fixed 64x64" in err and "80x80" in err and "--scales 1" in err


def test_predict_onnx_errors(checkpoint: Path, exported: dict, tmp_path: Path, capsys) -> None:
    decoder = exported["decoder"][0]
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    for onnx, message in ((decoder, "decoder in the graph"), (tmp_path / "no.onnx", "not found")):
        argv = [str(checkpoint), str(image), "--out", str(tmp_path / "x"), "--onnx", str(onnx)]
        assert predict_main(argv) == 2
        assert message in capsys.readouterr().err
    assert export_main([str(checkpoint), "--format", "tflite", "--out", str(tmp_path / "m")]) == 2
    assert "tflite" in capsys.readouterr().err
