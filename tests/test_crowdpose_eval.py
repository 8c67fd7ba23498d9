"""CrowdPose AP under the benchmark's own rules, against a direct faster-coco-eval call.

The reference is faster-coco-eval's ``keypoints_crowd`` mode with ``use_area=False`` on the JSON
file itself, with the sigmas crowdposetools hard-codes; dekr must give the same nine numbers. A
one-person case pins the OKS scale rule (0.53 · bbox w · h) independently of any library.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import faster_coco_eval
import numpy as np
import pytest
from conftest import TEST_DATA
from pycocotools.coco import COCO

from dekr.evaluation import (
    CROWD_INDEX_THRESHOLDS,
    COCOEvaluator,
    evaluation_rules,
    format_table,
)
from dekr.keypoints import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointSpec

SAMPLE = TEST_DATA / "crowdpose_sample/annotations/crowdpose_sample.json"
COCO_VAL = TEST_DATA / "coco_sample/annotations/person_keypoints_val_sample.json"
K = 14
# crowdposetools' COCOeval.computeOks hard-codes these (CrowdPose keypoint order)
CROWDPOSETOOLS_SIGMAS = np.array(
    [0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89, 0.79, 0.79]
) / 10.0  # fmt: skip
OVERALL = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75",
           "AR": "AR_all", "AR50": "AR_50", "AR75": "AR_75"}  # fmt: skip
SPLITS = {"APE": "AP_easy", "APM_crowd": "AP_medium", "APH": "AP_hard"}


def reference(gt_file: Path, results: list[dict]) -> dict[str, float]:
    """The benchmark's numbers straight from faster-coco-eval on the ground-truth file."""
    gt = faster_coco_eval.COCO(str(gt_file))
    dt = gt.loadRes(copy.deepcopy(results))
    ev = faster_coco_eval.COCOeval_faster(
        gt, dt, "keypoints_crowd", kpt_oks_sigmas=CROWDPOSETOOLS_SIGMAS, use_area=False,
        print_function=lambda *a, **k: None,
    )  # fmt: skip
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats_as_dict


def assert_same_as_reference(metrics: dict[str, float], ref: dict[str, float]) -> None:
    assert set(metrics) == set(OVERALL) | set(SPLITS)
    for name, key in OVERALL.items():
        assert metrics[name] == pytest.approx(ref[key], abs=1e-12), name
    for name, key in SPLITS.items():  # an empty split is -1 there, 0 here
        assert metrics[name] == pytest.approx(max(ref[key], 0.0), abs=1e-12), name


def predictions_of(data: dict, rng: np.random.Generator, noise: float = 0.0, miss: float = 0.0,
                   false_pos: float = 0.0) -> tuple[list[int], list[dict]]:  # fmt: skip
    """Detections of every labelled person (v > 0) with Gaussian noise (a per-person sd drawn up
    to ``noise`` px), each missed with probability ``miss``; per image up to two random false
    positives with probability ``false_pos``. Random scores (all 1 without noise)."""
    by_image: dict[int, list] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(np.asarray(ann["keypoints"], np.float64).reshape(K, 3))
    ids, preds = sorted(by_image), []
    for i in ids:
        kps = [kp.copy() for kp in by_image[i] if (kp[:, 2] > 0).any() and rng.random() >= miss]
        for kp in kps:
            kp[:, :2] += rng.normal(0.0, rng.uniform(0.0, noise), size=(K, 2))
        if rng.random() < false_pos:
            for _ in range(rng.integers(1, 3)):
                kps.append(np.c_[rng.uniform(0, 640, K), rng.uniform(0, 480, K), np.ones(K)])
        arr = np.stack(kps) if kps else np.zeros((0, K, 3))
        arr[..., 2] = 1.0
        scores = rng.uniform(0.05, 1.0, len(arr)) if noise else np.ones(len(arr))
        preds.append({"keypoints": arr, "scores": scores})
    return ids, preds


def generated_crowdpose(path: Path, num_images: int = 60, seed: int = 0) -> dict:
    """A CrowdPose-format file: crowdIndex spread over easy / medium / hard (the thresholds and the
    paper's 0.1 among them), 1-6 people per image, person boxes larger than their keypoints' box,
    v in {0, 1, 2}, ``num_keypoints`` counting v = 2 only, no ``area``, people left unlabelled."""
    rng = np.random.default_rng(seed)
    crowd = rng.uniform(0.0, 1.0, num_images)
    crowd[:10] = [0.0, 0.05, 0.1, 0.15, 0.1999, 0.2, 0.5, 0.7999, 0.8, 1.0]
    images, anns = [], []
    for i in range(num_images):
        image_id = 1000 + i
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640,
                       "height": 480, "crowdIndex": float(crowd[i])})  # fmt: skip
        for _ in range(rng.integers(1, 7)):
            w, h = rng.uniform(20, 160), rng.uniform(40, 300)
            x0, y0 = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            xy = np.c_[rng.uniform(x0, x0 + w, K), rng.uniform(y0, y0 + h, K)]
            v = rng.choice([0, 1, 2], size=K, p=[0.2, 0.3, 0.5])
            if rng.random() < 0.08:
                v[:] = 0  # unlabelled person (ignored)
            lab = xy[v > 0] if (v > 0).any() else xy
            lo, hi = lab.min(0), lab.max(0)
            pad = rng.uniform(2, 30, 4)
            bbox = [lo[0] - pad[0], lo[1] - pad[1], hi[0] - lo[0] + pad[0] + pad[2],
                    hi[1] - lo[1] + pad[1] + pad[3]]  # fmt: skip
            kp = np.c_[np.where(v[:, None] > 0, xy, 0.0), v].reshape(-1)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "iscrowd": 0, "num_keypoints": int((v == 2).sum()),
                         "keypoints": [round(float(a), 2) for a in kp],
                         "bbox": [round(float(b), 2) for b in bbox]})  # fmt: skip
    categories = [{"id": 1, "name": "person", "supercategory": "person",
                   "keypoints": list(CROWDPOSE_KEYPOINTS.names)}]  # fmt: skip
    data = {"images": images, "annotations": anns, "categories": categories}
    path.write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("crowdpose") / "generated.json"
    return path, generated_crowdpose(path)


def evaluated(path: Path, ids: list[int], preds: list[dict]) -> tuple[dict, list[dict]]:
    ev = COCOEvaluator.from_json(CROWDPOSE_KEYPOINTS, path)
    ev.process(ids, preds)
    return ev.evaluate(), ev.state()


# ------------------------------------------------------------------------------ the rules
def test_rules_follow_the_keypoint_spec_and_are_printed():
    assert np.allclose(CROWDPOSE_KEYPOINTS.sigmas, CROWDPOSETOOLS_SIGMAS)
    assert evaluation_rules(CROWDPOSE_KEYPOINTS) == "crowdpose"
    renamed = KeypointSpec.from_dict({**CROWDPOSE_KEYPOINTS.to_dict(), "name": "mine"})
    assert evaluation_rules(renamed) == "crowdpose"  # the keypoint set decides, not its name
    assert evaluation_rules(COCO_KEYPOINTS) == "coco"
    assert CROWD_INDEX_THRESHOLDS == (0.2, 0.8)
    crowd = COCOEvaluator.from_json(CROWDPOSE_KEYPOINTS, SAMPLE)
    assert crowd.rules == "crowdpose"
    head = crowd.summary({"AP": 0.5}).splitlines()
    assert "CrowdPose" in head[0] and "0.53" in head[0] and head[-1] == "AP 0.5000"
    coco = COCOEvaluator.from_json(COCO_KEYPOINTS, COCO_VAL)
    assert coco.rules == "coco" and "pycocotools" in coco.summary({"AP": 0.5}).splitlines()[0]
    assert format_table({"AP": 0.5}).splitlines()[0].startswith("|")  # no rules: table only
    with pytest.raises(ValueError, match="unknown evaluation rules 'lsp'"):
        COCOEvaluator(CROWDPOSE_KEYPOINTS, rules="lsp")


def test_oks_scale_is_053_bbox_area_not_area():
    """One person, every keypoint 16 px off: OKS from 0.53 · bbox w · h by hand; ``area`` unused."""
    xy = np.c_[np.linspace(100, 180, K), np.linspace(50, 250, K)]
    gt_kp = np.c_[xy, np.full(K, 2.0)]
    bbox = [60.0, 20.0, 160.0, 260.0]  # larger than the keypoints' 80 x 200 box
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": K,
           "keypoints": gt_kp.reshape(-1).tolist(), "bbox": bbox, "area": 50.0}  # fmt: skip
    data = {
        "images": [{"id": 1, "width": 640, "height": 480, "crowdIndex": 0.5}],
        "annotations": [ann],
        "categories": [{"id": 1, "name": "person", "keypoints": list(CROWDPOSE_KEYPOINTS.names)}],
    }
    det = gt_kp.copy()
    det[:, 0] += 16.0
    thresholds = np.linspace(0.5, 0.95, 10)

    def ap_for(scale: float) -> float:  # one GT, one detection: AP = share of thresholds <= OKS
        var = (2 * CROWDPOSETOOLS_SIGMAS) ** 2
        oks = np.mean(np.exp(-(16.0**2) / var / (scale + np.spacing(1)) / 2))
        return float(np.mean(thresholds <= oks))

    expected = ap_for(0.53 * bbox[2] * bbox[3])  # 0.6 (OKS 0.795)
    assert expected not in (ap_for(80.0 * 200.0), ap_for(bbox[2] * bbox[3]), 0.0)  # discriminates
    for rules, ap in (("crowdpose", expected), ("coco", 0.0)):  # COCO rules take area 50: OKS ~ 0
        gt = COCO()
        gt.dataset = copy.deepcopy(data)
        gt.createIndex()
        ev = COCOEvaluator(CROWDPOSE_KEYPOINTS, gt, rules=rules)
        ev.process([1], [{"keypoints": det[None], "scores": np.ones(1)}])
        assert ev.evaluate()["AP"] == pytest.approx(ap), rules


# ------------------------------------------------------------------------------ the sample
def test_sample_ground_truth_scores_one():
    data = json.loads(SAMPLE.read_text())
    metrics, _ = evaluated(SAMPLE, *predictions_of(data, np.random.default_rng(0)))
    assert {n: metrics[n] for n in OVERALL} == pytest.approx({n: 1.0 for n in OVERALL})
    # crowdIndex 0.33 and 0.39: both medium, no easy or hard image
    assert (metrics["APE"], metrics["APM_crowd"], metrics["APH"]) == (0.0, 1.0, 0.0)


def test_sample_perturbed_matches_faster_coco_eval():
    data = json.loads(SAMPLE.read_text())
    ids, preds = predictions_of(data, np.random.default_rng(1), noise=10.0, false_pos=1.0)
    metrics, results = evaluated(SAMPLE, ids, preds)
    assert 0.2 < metrics["AP"] < 0.95
    assert_same_as_reference(metrics, reference(SAMPLE, results))


def test_in_memory_ground_truth_without_crowd_index_has_no_splits():
    data = json.loads(SAMPLE.read_text())
    ev = COCOEvaluator(CROWDPOSE_KEYPOINTS)
    for im in data["images"]:
        kps = np.array([a["keypoints"] for a in data["annotations"] if a["image_id"] == im["id"]])
        ev.add_ground_truth(im["id"], kps.reshape(-1, K, 3), width=640, height=480)
    ev.process(*predictions_of(data, np.random.default_rng(0)))
    metrics = ev.evaluate()
    assert set(metrics) == set(OVERALL) and metrics["AP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ a larger file
def test_generated_file_matches_faster_coco_eval(generated):
    path, data = generated
    ids, preds = predictions_of(data, np.random.default_rng(2), noise=12.0, miss=0.15,
                                false_pos=0.3)  # fmt: skip
    metrics, results = evaluated(path, ids, preds)
    assert 0.2 < metrics["AP"] < 0.9 and all(0.0 < metrics[n] < 1.0 for n in SPLITS)
    assert_same_as_reference(metrics, reference(path, results))


def test_generated_file_splits_partition_by_crowd_index(generated):
    """APE / APM_crowd / APH equal the AP of the images with crowdIndex < 0.2, in [0.2, 0.8) and
    >= 0.8 evaluated on their own; the paper's 0.1 boundary gives another easy AP."""
    path, data = generated
    ids, preds = predictions_of(data, np.random.default_rng(3), noise=12.0, miss=0.15,
                                false_pos=0.3)  # fmt: skip
    full, _ = evaluated(path, ids, preds)
    crowd = {im["id"]: im["crowdIndex"] for im in data["images"]}
    lo, hi = CROWD_INDEX_THRESHOLDS
    parts = {"APE": lambda c: c < lo, "APM_crowd": lambda c: lo <= c < hi, "APH": lambda c: c >= hi,
             "paper easy": lambda c: c < 0.1}  # fmt: skip
    ap = {}
    for name, inside in parts.items():
        keep = [j for j, i in enumerate(ids) if inside(crowd[i])]
        assert len(keep) >= 5, name
        sub, _ = evaluated(path, [ids[j] for j in keep], [preds[j] for j in keep])
        ap[name] = sub["AP"]
        if name in SPLITS:  # the benchmark rounds split APs to 4 decimals
            assert full[name] == pytest.approx(sub["AP"], abs=5.1e-5), name
            assert sub[name] == pytest.approx(sub["AP"], abs=5.1e-5)
            assert all(sub[other] == 0.0 for other in SPLITS if other != name)  # empty splits
    assert abs(ap["paper easy"] - full["APE"]) > 1e-3
