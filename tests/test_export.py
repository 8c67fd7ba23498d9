"""ONNX export with adaptive convs: onnxruntime vs torch, dynamic shapes, decoder in graph."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPEC3
from torch import Tensor, nn

from dekr.decoder import DEKRDecoder
from dekr.export import (
    InGraphDecoder,
    ONNXPoseDetector,
    ONNXPoseModel,
    check_format,
    check_onnx,
    export_onnx,
)
from dekr.inference import predict_poses
from dekr.keypoints import COCO_KEYPOINTS
from dekr.models.adaptive import AdaptBlock, AdaptiveConv
from dekr.models.dekr import DEKR, build_model


def deforming_model(num_keypoints: int, seed: int = 0) -> DEKR:
    """Tiny DEKR with random weights whose adaptive convs move their taps by several pixels."""
    torch.manual_seed(seed)
    model = build_model("hrnet_w8_tiny", num_keypoints=num_keypoints, adaptive_impl="deform")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    for m in model.modules():
        if isinstance(m, AdaptBlock):  # M ≈ random 2x2 of order 1, t of order 2 px
            for conv, std in ((m.transform_matrix_conv, 1.0), (m.translation_conv, 2.0)):
                nn.init.normal_(conv.weight, std=std)
                nn.init.normal_(conv.bias, std=std)
    nn.init.normal_(model.head_heatmap[1].weight, std=2.0)
    nn.init.constant_(model.head_heatmap[1].bias, 0.3)
    model.head_heatmap[1].weight.data[-1].abs_()  # centre map > 0.3: many candidates
    for final in model.offset_final_layer:  # offsets of several output pixels
        nn.init.normal_(final.weight, std=4.0)
    return model.eval()


def impls(model: nn.Module) -> set[str]:
    return {m.impl for m in model.modules() if isinstance(m, AdaptiveConv)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def model3() -> DEKR:
    return deforming_model(3)


@pytest.fixture(scope="module")
def dynamic17(tmp_path_factory: pytest.TempPathFactory) -> tuple[DEKR, Path]:
    model = deforming_model(17, seed=1)
    path = tmp_path_factory.mktemp("onnx") / "k17_dynamic.onnx"
    export_onnx(model, path, input_size=(128, 128), dynamic=True)
    return model, path


def test_static_export_matches_torch_and_restores_model(model3: DEKR, tmp_path: Path) -> None:
    model3.train()
    path = export_onnx(model3, tmp_path / "k3.onnx", input_size=(96, 128))
    assert impls(model3) == {"deform"} and model3.training
    model3.eval()
    assert check_onnx(path, model3) <= 1e-4
    with pytest.raises(Exception, match="images"):  # the static graph rejects another size
        check_onnx(path, model3, input_size=(128, 128))


@pytest.mark.slow  # a dynamic 17-keypoint export
def test_dynamic_export_two_sizes_batch_two(dynamic17: tuple[DEKR, Path]) -> None:
    model, path = dynamic17
    for size in ((128, 128), (96, 160), (100, 132)):  # the last is no multiple of 32
        assert check_onnx(path, model, input_size=size, batch_size=2) <= 1e-4


def test_onnx_pose_model_returns_the_torch_maps(dynamic17: tuple[DEKR, Path]) -> None:
    model, path = dynamic17
    onnx_model = ONNXPoseModel(path)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(images)  # deform_conv2d: same weights, other implementation
    heatmaps, offsets = onnx_model(images)
    assert heatmaps.shape == (2, 18, 16, 24) and offsets.shape == (2, 34, 16, 24)
    torch.testing.assert_close(heatmaps, expected[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(offsets, expected[1], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="ONNXPoseModel"):
        ONNXPoseDetector(path)


def peaked_maps(seed: int = 0) -> tuple[Tensor, Tensor]:
    """Heatmaps (2, 4, 24, 32) with 5 distinct centre peaks per image, random offsets."""
    g = torch.Generator().manual_seed(seed)
    heatmaps = 0.05 * torch.rand(2, 4, 24, 32, generator=g)
    heatmaps[:, :3] += torch.rand(2, 3, 24, 32, generator=g)
    for b in range(2):
        cells = torch.randperm(24 * 32, generator=g)[:5]
        heatmaps[b, 3].view(-1)[cells] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    offsets = 6 * torch.randn(2, 6, 24, 32, generator=g)
    return heatmaps, offsets


def match_package_decoder(heatmaps: Tensor, offsets: Tensor, graph: InGraphDecoder) -> int:
    """Every pose kept by the package decoder is a graph candidate; returns how many matched."""
    spec = SPEC3 if heatmaps.shape[1] == 4 else COCO_KEYPOINTS
    decoder = DEKRDecoder(spec, max_people=graph.max_people, center_threshold=0.1)
    results = decoder(heatmaps, offsets)
    poses, scores = graph.decode(heatmaps, offsets)
    matched = 0
    for result, cand, cand_scores in zip(results, poses, scores):
        for kpts, score in zip(result["keypoints"], result["scores"]):
            dist = (cand[..., :2] - kpts[:, :2]).abs().amax((1, 2))
            i = int(dist.argmin())
            assert dist[i] < 1e-4
            torch.testing.assert_close(cand[i, :, 2], kpts[:, 2], atol=1e-6, rtol=0)
            torch.testing.assert_close(cand_scores[i], score, atol=1e-6, rtol=0)
            matched += 1
    return matched


def test_in_graph_decoder_agrees_with_package_decoder() -> None:
    heatmaps, offsets = peaked_maps()
    graph = InGraphDecoder(nn.Identity(), max_people=8, center_threshold=0.1, pool_kernel=3)
    assert match_package_decoder(heatmaps, offsets, graph) == 10  # 5 people x 2 images
    poses, scores = graph.decode(heatmaps, offsets)
    assert (scores[:, 5:] == 0).all() and (poses[:, 5:] == 0).all()  # below the threshold


def test_in_graph_decoder_agrees_on_network_maps(dynamic17: tuple[DEKR, Path]) -> None:
    model, _ = dynamic17
    with torch.no_grad():
        heatmaps, offsets = model(torch.randn(2, 3, 128, 128))
    graph = InGraphDecoder(model, max_people=20, center_threshold=0.1, pool_kernel=3)
    assert match_package_decoder(heatmaps, offsets, graph) > 0


@pytest.mark.slow  # an export with the decoder in the graph
def test_decoder_in_graph_onnx(model3: DEKR, tmp_path: Path) -> None:
    path = export_onnx(
        model3, tmp_path / "k3_dec.onnx", input_size=(128, 128), dynamic=True,
        with_decoder=True, max_people=10, center_threshold=0.1,
    )  # fmt: skip
    assert check_onnx(path, model3, batch_size=2) <= 1e-3  # poses in input pixels
    detector = ONNXPoseDetector(path)
    images = torch.randn(2, 3, 96, 128)
    poses, scores = detector(images)
    assert (scores > 0).sum() >= 4
    with torch.no_grad():
        expected = InGraphDecoder(model3, max_people=10, center_threshold=0.1)(images)
    assert poses.shape == (2, 10, 3, 3) and scores.shape == (2, 10)
    torch.testing.assert_close(poses, expected[0], atol=1e-3, rtol=0)
    results = detector.results(images, score_threshold=0.0)
    assert [len(r["scores"]) for r in results] == (scores > 0).sum(1).tolist()


def test_errors(monkeypatch: pytest.MonkeyPatch, model3: DEKR, tmp_path: Path) -> None:
    assert check_format("ONNX") == "onnx"
    with pytest.raises(ValueError, match="unknown export format"):
        check_format("tflite")
    with pytest.raises(ValueError, match="GridSample"):
        export_onnx(model3, tmp_path / "x.onnx", opset=13)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install dekr\[export\]"):
        export_onnx(model3, tmp_path / "x.onnx")


def test_predict_poses_through_onnxruntime(dynamic17: tuple[DEKR, Path]) -> None:
    model, path = dynamic17
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 90, 3), dtype=np.uint8) for _ in range(2)]
    kwargs = {"spec": COCO_KEYPOINTS, "input_size": 128, "flip": True}
    with torch.no_grad():
        expected = predict_poses(model, images, **kwargs)
    actual = predict_poses(ONNXPoseModel(path), images, **kwargs)
    for a, e in zip(actual, expected):
        assert len(e["scores"]) > 0
        np.testing.assert_allclose(a["keypoints"], e["keypoints"], atol=1e-3)
        np.testing.assert_allclose(a["scores"], e["scores"], atol=1e-5)
