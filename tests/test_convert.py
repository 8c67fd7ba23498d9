"""tools/convert_checkpoint.py: official DEKR and ImageNet HRNet files into dekr's formats."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from dekr.cli import eval_main, predict_main
from dekr.models.dekr import build_model
from dekr.models.weights import HEAD_PREFIXES, load_imagenet_backbone, load_official_dekr
from dekr.module import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import convert_checkpoint as convert  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "official_dekr_keys.json"
TEST_DATA = Path(__file__).resolve().parent / "data"
REGULAR_MATRIX = [[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def random_state(layout: str, seed: int = 0, heads: bool = True) -> dict[str, torch.Tensor]:
    """Tensors with the official names and shapes of ``layout``, scaled to keep activations
    finite through the whole network (fan-in scaled conv weights, BN variances near 1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in json.loads(FIXTURE.read_text())[layout].items():
        if not heads and key.startswith(HEAD_PREFIXES):
            continue
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("regular_matrix"):
            state[key] = torch.tensor(REGULAR_MATRIX, dtype=torch.float32)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1 + (key.endswith("bn.weight"))
    return state


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """COCO W32 (bare state dict) and CrowdPose W32 (DDP-wrapped) files in official layout."""
    folder = tmp_path_factory.mktemp("official")
    files = {}
    for layout, wrap in (("coco_w32", False), ("crowdpose_w32", True)):
        state = random_state(layout, seed=len(files))
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state
        path = folder / f"pose_dekr_{layout}.pth"
        torch.save(payload, path)
        files[layout] = (path, state)
    return files


@pytest.mark.slow
def test_official_coco_round_trip(official: dict, tmp_path: Path, capsys) -> None:
    path, state = official["coco_w32"]
    out = tmp_path / "coco_w32.ckpt"
    assert convert.main(["official", str(path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    raw = torch.load(out, weights_only=True)
    assert raw["epoch"] == 0 and raw["global_step"] == 0 and raw["pytorch-lightning_version"]
    assert set(raw["state_dict"]) == {f"model.{k}" for k in state}
    assert raw["hyper_parameters"]["recipe"]["model"]["backbone"] == "hrnet_w32"
    assert (tmp_path / "coco_w32.yaml").is_file()
    assert not list(tmp_path.glob("*.partial"))
    module = load_checkpoint(out)
    assert module.spec.num_keypoints == 17 and module.recipe.data.input_size == 512
    own = module.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    direct = build_model("hrnet_w32", num_keypoints=17).eval()
    load_official_dekr(direct, path)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = direct(images), module.model(images)
    assert torch.isfinite(expected[0]).all() and expected[0].abs().max() > 0
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=0, rtol=0)


@pytest.mark.slow
def test_official_crowdpose_predicts_and_evaluates(official: dict, tmp_path: Path, capsys) -> None:
    path, state = official["crowdpose_w32"]
    out = tmp_path / "crowdpose.ckpt"
    # A key=value override lands in the stored recipe; a small input keeps W32 fast on CPU.
    assert convert.main(["official", str(path), "--out", str(out), "data.input_size=128"]) == 0
    module = load_checkpoint(out)
    assert module.spec.num_keypoints == 14 and module.recipe.data.input_size == 128
    assert module.recipe.decode.nms_num == 7  # recipes/crowdpose_w32.yaml chosen from K=14
    key = "offset_final_layer.13.weight"
    assert torch.equal(module.model.state_dict()[key], state[key])
    image = sorted((TEST_DATA / "crowdpose_sample" / "images").glob("*.jpg"))[0]
    assert predict_main([str(out), str(image), "--out", str(tmp_path / "pred"), "--no-flip"]) == 0
    summary = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert [im["file"] for im in summary["images"]] == [str(image)]
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert all(len(a["keypoints"]) == 14 * 3 for a in results)
    sample = TEST_DATA / "crowdpose_sample"
    argv = [
        str(out), f"data.val_images={sample / 'images'}", "data.num_workers=0",
        f"data.val_annotations={sample / 'annotations' / 'crowdpose_sample.json'}",
        "data.persistent_workers=false", "data.pin_memory=false", "trainer.accelerator=cpu",
        "--results", str(tmp_path / "results.json"),
    ]  # fmt: skip
    assert eval_main(argv) == 0
    assert "AP" in capsys.readouterr().out and (tmp_path / "results.json").is_file()


@pytest.mark.slow
def test_recipe_option_and_mismatches(official: dict, tmp_path: Path, capsys) -> None:
    path, _ = official["coco_w32"]
    out = tmp_path / "x.ckpt"
    assert convert.main(["official", str(path), "--out", str(out), "--recipe", "coco_w48"]) == 2
    assert "model.backbone=hrnet_w48" in capsys.readouterr().err
    argv = ["official", str(path), "--out", str(out), "--recipe", "crowdpose_w32"]
    assert convert.main(argv) == 2
    assert "K=17" in capsys.readouterr().err
    assert convert.main(["official", str(path), "--out", str(out), "data.nope=1"]) == 2
    assert "data.nope" in capsys.readouterr().err
    assert not out.exists()


def small_state(width: int = 32, k: int | None = None) -> dict[str, torch.Tensor]:
    """Just the tensors the layout detection reads."""
    state = {
        "conv1.weight": torch.zeros(64, 3, 3, 3),
        "transition1.0.0.weight": torch.zeros(width, 256, 3, 3),
    }
    if k is not None:
        state["head_heatmap.1.weight"] = torch.zeros(k + 1, width, 1, 1)
    return state


def test_clear_errors(tmp_path: Path, capsys) -> None:
    def error(argv: list[str]) -> str:
        assert convert.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        return lines[0]

    out = str(tmp_path / "out.ckpt")
    assert "nope.pth" in error(["official", str(tmp_path / "nope.pth"), "--out", out])
    assert "official" in error(["bogus", "x"])
    cases = {
        "k10.pth": (small_state(k=10), "K=10"),
        "backbone.pth": (small_state(), "imagenet"),
        "w40.pth": (small_state(40, k=17), "width 40"),
        "vit.pth": ({"blocks.0.weight": torch.zeros(1)}, "not an HRNet"),
        "dekr.ckpt": ({"state_dict": {"model.conv1.weight": torch.zeros(1)}}, "already a dekr"),
    }
    for name, (payload, expected) in cases.items():
        torch.save(payload, tmp_path / name)
        assert expected in error(["official", str(tmp_path / name), "--out", out]), name
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.slow
def test_imagenet_round_trip(official: dict, tmp_path: Path, capsys) -> None:
    state = random_state("coco_w32", seed=5, heads=False)
    classification = {
        **state,
        "incre_modules.0.0.conv1.weight": torch.zeros(32, 32, 1, 1),
        "downsamp_modules.0.0.weight": torch.zeros(256, 128, 3, 3),
        "final_layer.0.weight": torch.zeros(2048, 1024, 1, 1),
        "classifier.weight": torch.zeros(1000, 2048),
        "classifier.bias": torch.zeros(1000),
    }
    source, out = tmp_path / "hrnet_w32-36af842e.pth", tmp_path / "backbone.pth"
    torch.save(classification, source)
    assert convert.main(["imagenet", str(source), "--out", str(out)]) == 0
    assert f"model.pretrained={out.resolve()}" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert set(saved) == set(state)
    model = build_model("hrnet_w32", num_keypoints=17)
    assert load_imagenet_backbone(model, out) == len(state)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    # An official pose checkpoint is not a backbone file.
    assert convert.main(["imagenet", str(official["coco_w32"][0]), "--out", str(out)]) == 2
    assert "pose checkpoint" in capsys.readouterr().err
