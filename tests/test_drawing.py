"""Drawing: shape, dtype, limbs drawn where they belong, thresholds respected."""

from __future__ import annotations

import numpy as np

from dekr.drawing import draw_poses
from dekr.keypoints import COCO_KEYPOINTS, KeypointSpec

SPEC3 = KeypointSpec(
    names=("a", "b", "c"),
    sigmas=(0.05, 0.05, 0.05),
    skeleton=(("a", "b"), ("b", "c")),
    colors=((255, 0, 0), (0, 255, 0)),
)


def test_draw_poses_shape_dtype_and_limb_pixels():
    image = np.zeros((120, 160, 3), np.uint8)
    kps = np.array([[[20, 60, 0.9], [100, 60, 0.8], [100, 110, 0.0]]], dtype=np.float32)
    out = draw_poses(image, kps, np.array([0.7]), SPEC3)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert image.max() == 0  # input untouched
    assert out[60, 60, 0] > 200 and out[60, 60, 1] == 0  # limb a-b in red
    assert out[90, 100].max() == 0  # c has score 0: limb b-c is not drawn
    assert out[40:56, 15:60].max() > 0  # the score text just above the person


def test_low_scores_are_skipped_and_coco_runs():
    image = np.full((64, 64, 3), 7, np.uint8)
    kps = np.random.default_rng(0).uniform(5, 60, size=(2, 17, 3))
    skipped = draw_poses(image, kps, np.array([0.01, 0.02]), COCO_KEYPOINTS, score_threshold=0.1)
    assert (skipped == image).all()
    drawn = draw_poses(image, kps, np.array([0.5, 0.9]), COCO_KEYPOINTS)
    assert (drawn != image).any()
    assert draw_poses(image, np.zeros((0, 17, 3)), np.zeros(0), COCO_KEYPOINTS).shape == (64, 64, 3)
