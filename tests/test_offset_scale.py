"""``model.offset_scale``: the network returns offsets in output pixels whatever the scale, and
weights move between scales without changing what the network computes."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

from dekr.config import load_recipe
from dekr.convert import save_checkpoint
from dekr.errors import OptionError
from dekr.models.dekr import build_model
from dekr.models.weights import load_official_dekr
from dekr.module import DekrModule

K = 5


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize("grouped", [True, False])
def test_scale_multiplies_the_offsets_only(grouped: bool) -> None:
    torch.manual_seed(0)
    one = build_model("hrnet_w8_tiny", num_keypoints=K)
    eight = build_model("hrnet_w8_tiny", num_keypoints=K, offset_scale=8.0)
    eight.load_state_dict(one.state_dict())
    one.grouped_offsets = eight.grouped_offsets = grouped
    images = torch.rand(2, 3, 64, 64)
    (h1, o1), (h8, o8) = _outputs(one, images), _outputs(eight, images)
    assert torch.equal(h1, h8)
    assert o1.abs().max() > 0
    torch.testing.assert_close(o8, 8.0 * o1, rtol=1e-6, atol=0)


def test_official_weights_load_into_a_scaled_model_unchanged() -> None:
    torch.manual_seed(1)
    official = build_model("hrnet_w8_tiny", num_keypoints=K)
    for p in official.offset_final_layer.parameters():  # offsets of a few pixels, not ~0
        p.data.normal_(std=0.5)
    scaled = build_model("hrnet_w8_tiny", num_keypoints=K, offset_scale=8.0)
    load_official_dekr(scaled, official.state_dict())
    images = torch.rand(1, 3, 64, 64)
    (h1, o1), (h8, o8) = _outputs(official, images), _outputs(scaled, images)
    assert torch.equal(h1, h8)
    torch.testing.assert_close(o8, o1, rtol=1e-5, atol=1e-5)
    assert o1.abs().max() > 0.5


def test_a_scaled_checkpoint_loads_into_an_official_scale_model(tmp_path) -> None:
    spec_keys = ["keypoints=coco", "model.backbone=hrnet_w8_tiny"]
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [*spec_keys, "model.offset_scale=8"])
    torch.manual_seed(2)
    module = DekrModule.from_recipe(recipe)
    for p in module.model.offset_final_layer.parameters():
        p.data.normal_(std=0.1)
    path = save_checkpoint(module, tmp_path / "scaled.ckpt")
    plain = build_model("hrnet_w8_tiny", num_keypoints=17, offset_blocks=recipe.model.offset_blocks)
    load_official_dekr(plain, path)
    images = torch.rand(1, 3, 64, 64)
    (_, o8), (_, o1) = _outputs(module.model, images), _outputs(plain, images)
    # float rounding only: the offsets are up to tens of output pixels
    torch.testing.assert_close(o1, o8, rtol=1e-4, atol=1e-4)
    assert o8.abs().max() > 0.5


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_scale_is_an_error(bad: float) -> None:
    with pytest.raises(OptionError, match="offset_scale"):
        build_model("hrnet_w8_tiny", num_keypoints=K, offset_scale=bad)
