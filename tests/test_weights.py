"""Strict loading of official-layout DEKR checkpoints and ImageNet HRNet backbones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dekr.models.dekr import build_model
from dekr.models.hrnet import HRNET_SPECS
from dekr.models.weights import (
    HEAD_PREFIXES,
    load_imagenet_backbone,
    load_official_dekr,
    read_state_dict,
)

FIXTURE = Path(__file__).parent / "fixtures" / "official_dekr_keys.json"


def _official_file(tmp_path: Path, layout: str, wrap: bool = False) -> tuple[Path, dict]:
    """A checkpoint in the official layout (names and shapes read off the official model)."""
    shapes = json.loads(FIXTURE.read_text())[layout]
    g = torch.Generator().manual_seed(1)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("regular_matrix"):
            state[key] = torch.tensor(
                [[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]],
                dtype=torch.float32,
            )
        else:
            state[key] = torch.rand(shape, generator=g) + 0.5
    path = tmp_path / f"pose_dekr_{layout}.pth"
    payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state
    torch.save(payload, path)
    return path, state


@pytest.mark.slow
@pytest.mark.parametrize("wrap", [False, True])
def test_official_checkpoint_loads_strictly(tmp_path: Path, wrap: bool) -> None:
    path, state = _official_file(tmp_path, "coco_w32", wrap)
    model = build_model("hrnet_w32", num_keypoints=17)
    load_official_dekr(model, path)
    own = model.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in state)


@pytest.mark.slow
def test_crowdpose_checkpoint_into_coco_model_names_k(tmp_path: Path) -> None:
    path, _ = _official_file(tmp_path, "crowdpose_w32")
    model = build_model("hrnet_w32", num_keypoints=17)
    with pytest.raises(ValueError, match=r"pose_dekr_crowdpose_w32\.pth.*K=14.*K=17"):
        load_official_dekr(model, path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    model = build_model("hrnet_w8_tiny", num_keypoints=3)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official_dekr(model, tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_imagenet_backbone(model, tmp_path / "nope.pth")


def test_wrong_backbone_names_first_keys() -> None:
    tiny = build_model("hrnet_w8_tiny", num_keypoints=3).state_dict()
    wider = dataclasses.replace(HRNET_SPECS["hrnet_w8_tiny"], stem_channels=24)
    with pytest.raises(ValueError, match=r"shape mismatch bn1.bias \(16,\) vs model \(24,\)"):
        load_official_dekr(build_model(wider, num_keypoints=3), tiny)
    other = build_model("hrnet_w16_small", num_keypoints=3)
    with pytest.raises(ValueError, match="missing keys"):
        load_official_dekr(other, tiny)


def test_missing_and_unexpected_keys() -> None:
    model = build_model("hrnet_w8_tiny", num_keypoints=3)
    state = model.state_dict()
    dropped = dict(state)
    dropped.pop("conv1.weight")
    with pytest.raises(ValueError, match="missing keys conv1.weight"):
        load_official_dekr(model, dropped)
    with pytest.raises(ValueError, match="unexpected keys extra.weight"):
        load_official_dekr(model, {**state, "extra.weight": torch.zeros(1)})


def _classification_checkpoint(tmp_path: Path) -> tuple[Path, dict]:
    """An ImageNet HRNet-W32 checkpoint layout: backbone keys + classification-only keys."""
    shapes = json.loads(FIXTURE.read_text())["coco_w32"]
    g = torch.Generator().manual_seed(2)
    state = {
        k: torch.rand(s, generator=g)
        for k, s in shapes.items()
        if not k.startswith(HEAD_PREFIXES) and not k.endswith("num_batches_tracked")
    }
    state["incre_modules.0.0.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    state["downsamp_modules.0.0.weight"] = torch.zeros(256, 128, 3, 3)
    state["final_layer.0.weight"] = torch.zeros(2048, 1024, 1, 1)
    state["classifier.weight"] = torch.zeros(1000, 2048)
    state["classifier.bias"] = torch.zeros(1000)
    path = tmp_path / "hrnet_w32-36af842e.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.slow
def test_imagenet_backbone_initialises_backbone_only(tmp_path: Path) -> None:
    path, state = _classification_checkpoint(tmp_path)
    model = build_model("hrnet_w32", num_keypoints=17)
    head_before = model.head_heatmap[1].weight.clone()
    loaded = load_imagenet_backbone(model, path)
    own = model.state_dict()
    assert loaded == 1830 - 305  # backbone tensors less the BN counters absent from this file
    assert torch.equal(
        own["stage4.2.fuse_layers.3.0.0.0.weight"], state["stage4.2.fuse_layers.3.0.0.0.weight"]
    )
    assert torch.equal(model.head_heatmap[1].weight, head_before)


def test_pose_checkpoint_is_not_a_backbone(tmp_path: Path) -> None:
    model = build_model("hrnet_w8_tiny", num_keypoints=3)
    with pytest.raises(ValueError, match="pose checkpoint"):
        load_imagenet_backbone(model, model.state_dict())


def test_checkpoints_are_loaded_without_pickle_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: D105
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint .*evil.pth"):
        read_state_dict(path)


def _dekr_ckpt(path: Path, k: int) -> tuple[Path, dict]:
    """A dekr (Lightning) checkpoint: ``model.``-prefixed weights of a tiny K-keypoint model."""
    torch.manual_seed(k)
    model = build_model("hrnet_w8_tiny", num_keypoints=k)
    state = {f"model.{n}": v for n, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"recipe": {}}}, path)
    return path, model.state_dict()


def test_fine_tuning_from_a_dekr_checkpoint(tmp_path: Path) -> None:
    from dekr.errors import CheckpointError
    from dekr.models.weights import K_DEPENDENT_PREFIXES

    path, source = _dekr_ckpt(tmp_path / "k17.ckpt", 17)
    same = build_model("hrnet_w8_tiny", num_keypoints=17)
    assert load_official_dekr(same, path) == []  # same K: everything, strictly
    assert all(torch.equal(v, source[n]) for n, v in same.state_dict().items())
    other = build_model("hrnet_w8_tiny", num_keypoints=3)
    with pytest.raises(CheckpointError, match="K=17 keypoints, the model K=3") as info:
        load_official_dekr(other, path)
    assert "model.weights_partial=true" in info.value.hint
    fresh = {n: v.clone() for n, v in other.state_dict().items()}
    reset = load_official_dekr(other, path, partial=True)
    assert reset == [p.rstrip(".") for p in K_DEPENDENT_PREFIXES]
    for name, value in other.state_dict().items():
        if name.startswith(K_DEPENDENT_PREFIXES):
            expected = fresh[name].clone()
            if name.startswith("head_heatmap.1."):  # the centre channel comes from the source
                expected[-1] = source[name][-1]
            assert torch.equal(value, expected), name
        else:
            assert torch.equal(value, source[name]), name
