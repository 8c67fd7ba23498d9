"""Rescoring: features, official state-dict layout, scores, training data and fitting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from dekr.keypoints import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS
from dekr.rescore import RescoreNet, Rescorer, fit_rescore_net, rescore_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_rescore  # noqa: E402
from conftest import TEST_DATA

COCO_VAL = TEST_DATA / "coco_sample" / "annotations" / "person_keypoints_val_sample.json"


def test_feature_sizes_and_normalisation():
    kps = torch.rand(5, 17, 3) * 100
    assert rescore_features(kps, COCO_KEYPOINTS).shape == (5, 74)
    assert rescore_features(torch.rand(2, 14, 3), CROWDPOSE_KEYPOINTS).shape == (2, 59)
    kps = torch.zeros(1, 17, 3)
    kps[0, 5] = torch.tensor([0.0, 0.0, 0.5])  # left shoulder
    kps[0, 11] = torch.tensor([0.0, 20.0, 0.7])  # left hip: limb 9 has length 20
    kps[0, 6, 0], kps[0, 12, 0] = 10.0, 10.0  # right shoulder-hip (limb 11) length 0
    f = rescore_features(kps, COCO_KEYPOINTS)[0]
    assert f[2 * 9 : 2 * 9 + 2].tolist() == [0.0, -2.0]  # Δ = p_a − p_b over mean length 10
    assert f[38 + 9].item() == 2.0
    assert f[57 + 11].item() == pytest.approx(0.7)
    tiny = rescore_features(torch.zeros(1, 17, 3), COCO_KEYPOINTS)  # clamped normaliser
    assert torch.isfinite(tiny).all()


def test_official_state_dict_loads(tmp_path):
    state = {
        "l1.weight": torch.randn(256, 74), "l1.bias": torch.randn(256),
        "l2.weight": torch.randn(256, 256), "l2.bias": torch.randn(256),
        "l3.weight": torch.randn(1, 256), "l3.bias": torch.randn(1),
    }  # fmt: skip
    torch.save(state, tmp_path / "final_rescore_coco_kpt.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")
    a = Rescorer.load(tmp_path / "final_rescore_coco_kpt.pth", COCO_KEYPOINTS)
    b = Rescorer.load(tmp_path / "dp.pth", COCO_KEYPOINTS)
    assert set(RescoreNet.from_spec(COCO_KEYPOINTS).state_dict()) == set(state)
    kps, scores = np.random.default_rng(0).uniform(0, 50, (3, 17, 3)), np.array([0.5, 0.2, 0.9])
    out = a(kps, scores)
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    np.testing.assert_allclose(out, b(kps, scores))
    oks = a.net(rescore_features(kps, COCO_KEYPOINTS)).detach().numpy()
    np.testing.assert_allclose(out, oks * scores, rtol=1e-5)


def test_nan_scores_become_zero():
    net = RescoreNet.from_spec(COCO_KEYPOINTS)
    kps = torch.rand(2, 17, 3)
    kps[0, 3, 0] = float("nan")
    out = Rescorer(net, COCO_KEYPOINTS)(kps, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert out.dtype == torch.float64 and out[0].item() == 0.0 and torch.isfinite(out).all()


def test_fit_reduces_loss():
    torch.manual_seed(0)
    x = torch.rand(2048, 74)
    y = x[:, 57:].mean(1)  # OKS-like target from the joint scores
    net, losses = fit_rescore_net(x, y, epochs=6, batch_size=256)
    assert losses[-1] < losses[0] * 0.5
    assert net(x[:4]).shape == (4,)


def test_training_data_from_predictions_and_gt():
    coco = COCO(str(COCO_VAL))
    data = json.loads(COCO_VAL.read_text())
    ids = sorted(im["id"] for im in data["images"])
    exact, noisy = [], []
    rng = np.random.default_rng(0)
    for i in ids:
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[i], iscrowd=False))
                if a["num_keypoints"] > 0]  # fmt: skip
        kps = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, 17, 3)
        exact.append({"keypoints": kps, "scores": np.ones(len(kps))})
        moved = kps.copy()
        moved[..., :2] += rng.normal(0, 15, size=moved[..., :2].shape)
        noisy.append({"keypoints": moved, "scores": np.ones(len(kps))})
    feats, target = train_rescore.build_rescore_dataset(ids, exact, coco, COCO_KEYPOINTS)
    # tests/data/README.md: 25 people with keypoints in the val subset
    assert feats.shape == (25, 74) and torch.allclose(target, torch.ones(25))
    _, target = train_rescore.build_rescore_dataset(ids, noisy, coco, COCO_KEYPOINTS, top_k=1)
    assert len(target) < 25 and (target < 1).all() and (target > 0).any()
