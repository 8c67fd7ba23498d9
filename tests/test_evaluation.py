"""COCO evaluator: AP 1 on ground truth, perturbations, duplicates, in-memory GT, CrowdPose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DATA

from dekr.evaluation import COCOEvaluator, format_table, keypoint_box_area
from dekr.keypoints import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS

DATA = TEST_DATA
COCO_VAL = DATA / "coco_sample/annotations/person_keypoints_val_sample.json"
CROWDPOSE = DATA / "crowdpose_sample/annotations/crowdpose_sample.json"


def gt_predictions(path: Path, k: int) -> tuple[list[int], list[dict]]:
    """Ground truth as detections: labelled, non-crowd people with score 1."""
    data = json.loads(path.read_text())
    per_image: dict[int, list] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)
        if not ann.get("iscrowd", 0) and (kp[:, 2] > 0).any():
            per_image[ann["image_id"]].append(kp)
    ids = sorted(per_image)
    preds = []
    for i in ids:
        kps = np.stack(per_image[i]) if per_image[i] else np.zeros((0, k, 3))
        kps[..., 2] = 1.0
        preds.append({"keypoints": kps, "scores": np.ones(len(kps))})
    return ids, preds


def test_ground_truth_scores_ap_one_and_table_ends_with_ap(tmp_path):
    ev = COCOEvaluator.from_json(COCO_KEYPOINTS, COCO_VAL)
    ids, preds = gt_predictions(COCO_VAL, 17)
    ev.process(ids, preds)
    metrics = ev.evaluate()
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
    table = format_table(metrics)
    assert table.splitlines()[-1] == "AP 1.0000"
    out = ev.write_results(tmp_path / "res.json")
    assert len(json.loads(out.read_text())) == sum(len(p["scores"]) for p in preds)


def test_perturbed_predictions_score_below_one():
    ev = COCOEvaluator.from_json(COCO_KEYPOINTS, COCO_VAL)
    ids, preds = gt_predictions(COCO_VAL, 17)
    rng = np.random.default_rng(0)
    for p in preds:
        p["keypoints"][..., :2] += rng.normal(0, 8, size=p["keypoints"][..., :2].shape)
    ev.process(ids, preds)
    assert 0.0 < ev.evaluate()["AP"] < 0.95


def test_repeated_images_count_once():
    ids, preds = gt_predictions(COCO_VAL, 17)
    ev = COCOEvaluator.from_json(COCO_KEYPOINTS, COCO_VAL)
    half = len(ids) // 2
    ev.process(ids[:half], preds[:half])
    ev.process(ids, preds)  # e.g. gathered from all ranks, with padding repeats
    ev.process(ids[:3] + ids[:3], preds[:3] + preds[:3])
    assert len(ev.state()) == sum(len(p["scores"]) for p in preds)
    assert ev.evaluate()["AP"] == pytest.approx(1.0)
    ev.reset()
    assert ev.state() == [] and ev.evaluate()["AP"] == 0.0


def test_in_memory_ground_truth_from_samples():
    data = json.loads(COCO_VAL.read_text())
    ev = COCOEvaluator(COCO_KEYPOINTS)
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        kps = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, 17, 3)
        areas = np.array([a["area"] for a in anns])
        ev.add_ground_truth(im["id"], kps, areas, width=im["width"], height=im["height"])
    ids, preds = gt_predictions(COCO_VAL, 17)
    ev.process(ids, preds)
    assert ev.evaluate()["AP"] == pytest.approx(1.0)


def test_crowdpose_without_area_and_crowd_splits():
    ev = COCOEvaluator.from_json(CROWDPOSE_KEYPOINTS, CROWDPOSE)
    ids, preds = gt_predictions(CROWDPOSE, 14)
    ev.process(ids, preds)
    metrics = ev.evaluate()
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["APM_crowd"] == pytest.approx(1.0)  # crowdIndex 0.33 and 0.39
    assert metrics["APE"] == 0.0 and metrics["APH"] == 0.0
    assert "APH" in format_table(metrics)


def test_keypoint_box_area():
    kp = np.array([[0, 0, 0], [10, 20, 2], [30, 25, 1]], dtype=float)
    assert keypoint_box_area(kp) == 100.0
    assert keypoint_box_area(np.zeros((3, 3))) == 0.0
