"""dekr's losses against the official ``MultiLossFactory`` values (rtol 1e-6).

Fixture: ``tests/data/conformance/targets.json`` (``variants.<v>.losses``) with the targets of
``targets_identity.npz`` and ``targets_aug.npz``: four hand-made scenes run through the official
dataset and target generators, then through the official ``MultiLossFactory`` (W32 COCO yaml:
heatmap factor 1.0, offset factor 0.03) with a fake prediction, the target plus seeded noise
(``losses.fake_prediction_rule``), rebuilt here by :func:`fake_prediction`.

Compared, for both variants: the per-scene loss terms (batch of one, scaled by the factors), the
terms of the batch of all four scenes, scaled and unscaled, and the total; rtol 1e-6 (the
tolerance the fixture's README suggests for losses).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from dekr.config import load_recipe
from dekr.loss import DEKRLoss, heatmap_loss, offset_loss

DATA = Path(__file__).resolve().parent / "data" / "conformance"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "coco_w32.yaml"
RTOL = 1e-6  # fixture README, "Suggested tolerances": losses
VARIANTS = ("identity", "aug")


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return json.loads((DATA / "targets.json").read_text())


def load_variant(variant: str, scenes: list[str]) -> list[dict[str, np.ndarray]]:
    fields = ("heatmap", "mask", "offset", "offset_weight")
    with np.load(DATA / f"targets_{variant}.npz") as z:
        return [{f: z[f"{scene}__{f}"] for f in fields} for scene in scenes]


def fake_prediction(scene: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixture's ``fake_prediction_rule`` for scene index ``k``: the target plus 0.1 x
    RandomState(100 + k) normal noise (heatmaps) and 1.0 x RandomState(200 + k) normal noise
    (offsets), added in float64 and cast to float32."""
    heatmap, offset = scene["heatmap"], scene["offset"]
    noise_h = np.random.RandomState(100 + k).standard_normal(heatmap.shape)
    noise_o = np.random.RandomState(200 + k).standard_normal(offset.shape)
    pred_h = (heatmap.astype(np.float64) + 0.1 * noise_h).astype(np.float32)
    pred_o = (offset.astype(np.float64) + 1.0 * noise_o).astype(np.float32)
    return pred_h, pred_o


def batch(scenes: list[dict[str, np.ndarray]]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Predictions and dekr's target dict for a batch of (scene index, arrays)."""
    preds = [fake_prediction(s, k) for k, s in scenes]

    def stack(arrays: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.stack(arrays))

    targets = {
        "heatmaps": stack([s["heatmap"] for _, s in scenes]),
        "heatmap_weights": stack([s["mask"] for _, s in scenes]),
        "offsets": stack([s["offset"] for _, s in scenes]),
        "offset_weights": stack([s["offset_weight"] for _, s in scenes]),
    }
    return stack([p for p, _ in preds]), stack([o for _, o in preds]), targets


def official_criterion(losses: dict[str, Any]) -> DEKRLoss:
    factors = losses["factors"]
    return DEKRLoss(factors["HEATMAPS_LOSS_FACTOR"], factors["OFFSETS_LOSS_FACTOR"])


def test_recipe_loss_factors_are_the_official_ones(info: dict[str, Any]) -> None:
    """recipes/coco_w32.yaml weighs the two terms as the official W32 COCO yaml does."""
    recipe = load_recipe(RECIPE)
    for variant in VARIANTS:
        factors = info["variants"][variant]["losses"]["factors"]
        assert recipe.loss.heatmap_factor == factors["HEATMAPS_LOSS_FACTOR"]
        assert recipe.loss.offset_factor == factors["OFFSETS_LOSS_FACTOR"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_per_scene_losses(info: dict[str, Any], variant: str) -> None:
    """Each scene alone (batch of one): both scaled terms and their sum, rtol 1e-6."""
    losses = info["variants"][variant]["losses"]
    criterion = official_criterion(losses)
    scenes = load_variant(variant, info["scenes"])
    assert len(losses["per_scene"]) == len(scenes) == 4
    for k, (scene, expected) in enumerate(zip(scenes, losses["per_scene"])):
        heatmaps, offsets, targets = batch([(k, scene)])
        got = criterion(heatmaps, offsets, targets)
        hm = criterion.heatmap_factor * got["heatmap_loss"].item()
        off = criterion.offset_factor * got["offset_loss"].item()
        name = info["scenes"][k]
        np.testing.assert_allclose(hm, expected["heatmap_loss"], rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(off, expected["offset_loss"], rtol=RTOL, err_msg=name)
        total = expected["heatmap_loss"] + expected["offset_loss"]
        np.testing.assert_allclose(got["loss"].item(), total, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_losses(info: dict[str, Any], variant: str) -> None:
    """The four scenes as one batch: scaled terms (``batched_all_scenes``) through ``DEKRLoss``
    and unscaled terms (``batched_unscaled``) through the loss functions, rtol 1e-6; the offset
    term is normalised by the positive weights of the whole batch, not averaged per image."""
    losses = info["variants"][variant]["losses"]
    criterion = official_criterion(losses)
    heatmaps, offsets, targets = batch(list(enumerate(load_variant(variant, info["scenes"]))))
    got = criterion(heatmaps, offsets, targets)
    scaled = losses["batched_all_scenes"]
    np.testing.assert_allclose(
        criterion.heatmap_factor * got["heatmap_loss"].item(), scaled["heatmap_loss"], rtol=RTOL
    )
    np.testing.assert_allclose(
        criterion.offset_factor * got["offset_loss"].item(), scaled["offset_loss"], rtol=RTOL
    )
    total = scaled["heatmap_loss"] + scaled["offset_loss"]
    np.testing.assert_allclose(got["loss"].item(), total, rtol=RTOL)
    unscaled = losses["batched_unscaled"]
    hm = heatmap_loss(heatmaps, targets["heatmaps"], targets["heatmap_weights"])
    off = offset_loss(offsets, targets["offsets"], targets["offset_weights"])
    np.testing.assert_allclose(hm.item(), unscaled["heatmap_loss"], rtol=RTOL)
    np.testing.assert_allclose(off.item(), unscaled["offset_loss"], rtol=RTOL)
