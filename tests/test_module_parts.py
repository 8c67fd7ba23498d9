"""DekrModule from its parts: the recipe binds every part, K-dependent defaults follow the keypoint
set, and validation metrics are gathered correctly over uneven shards (dekr/metric.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from dekr.decoder import pose_nms_keep
from dekr.metric import KeypointAP
from dekr.module import DekrModule

STARS = {
    "names": ["head", "left_hand", "right_hand", "left_foot", "right_foot"],
    "sigmas": [0.08, 0.06, 0.06, 0.09, 0.09],
    "flip_pairs": [["left_hand", "right_hand"], ["left_foot", "right_foot"]],
}


def _module(**overrides: object) -> DekrModule:
    recipe = {"keypoints": STARS, "model": {"backbone": "hrnet_w8_tiny"}, **overrides}
    return DekrModule.from_recipe(recipe)


def test_five_keypoint_recipe_suppresses_near_duplicate_poses() -> None:
    """A K = 5 recipe gets pose NMS with K // 2 joints: two poses 0.1 px apart become one."""
    decoder = _module().decoder
    assert decoder.nms_num == 2
    pose = torch.tensor([[50.0, 20.0], [30, 40], [70, 40], [40, 80], [60, 80]])
    poses = torch.stack([pose, pose + 0.1])
    keep = pose_nms_keep(
        poses,
        torch.tensor([0.9, 0.8]),
        torch.ones(2, dtype=torch.bool),
        threshold=decoder.nms_threshold,
        num_joints=decoder.nms_num,
    )
    assert keep == [0]


def test_recipe_settings_reach_every_part() -> None:
    module = _module(
        decode={"nms_num": 4, "pool_thresholds": [100, 150], "matching": {"num_candidates": 9}},
        loss={"offset_factor": 0.25},
    )
    assert module.decoder.nms_num == 4
    assert list(module.decoder.pool_thresholds) == [100, 150]
    assert module.decoder.matching.num_candidates == 9
    assert module.criterion.offset_factor == 0.25
    assert module.spec.num_keypoints == 5 and module.model.num_keypoints == 5


def _scene(rng: np.random.Generator, k: int) -> tuple[dict, dict]:
    m = int(rng.integers(1, 4))
    kp = np.concatenate([rng.uniform(10, 90, (m, k, 2)), np.full((m, k, 1), 2.0)], -1)
    truth = {"keypoints": kp, "areas": rng.uniform(400, 2000, m), "height": 100, "width": 100}
    noisy = kp.copy()
    noisy[..., :2] += rng.normal(0, 2.0, (m, k, 2))
    extra = np.concatenate([rng.uniform(10, 90, (1, k, 2)), np.ones((1, k, 1))], -1)
    pred = {"keypoints": np.concatenate([noisy, extra]), "scores": rng.uniform(0.2, 1, m + 1)}
    return pred, truth


def test_uneven_shards_count_every_image_once() -> None:
    """7 images on 3 ranks as Lightning's padded distributed sampler shards them (9 samples, two
    repeats): the gathered AP equals one process's AP over the 7 images."""
    spec = _module().spec
    rng = np.random.default_rng(0)
    images = [_scene(rng, spec.num_keypoints) for _ in range(7)]
    ids = [100 + i for i in range(7)]

    single = KeypointAP(spec)
    single.update(ids, [p for p, _ in images], [t for _, t in images])
    expected = single.compute()

    def shard(rank: int) -> tuple[KeypointAP, list[int]]:
        indices = list(DistributedSampler(range(7), num_replicas=3, rank=rank, shuffle=False))
        metric = KeypointAP(spec)
        metric._token = rank  # fixed tokens: the lower rank's occurrence of a repeat is kept
        preds, truths = [], []
        for i in indices:
            pred, truth = images[i]
            if rank > 0 and i < rank:  # a padded repeat (0 on rank 1, 1 on rank 2): other results
                pred = {"keypoints": pred["keypoints"][:1] + 7.0, "scores": pred["scores"][:1]}
            preds.append(pred)
            truths.append(truth)
        metric.update([ids[i] for i in indices], preds, truths)
        return metric, indices

    shards = [shard(r)[1] for r in range(3)]
    assert sum(map(len, shards)) == 9 and len({i for s in shards for i in s}) == 7
    # whatever order the processes' states arrive in, each image counts once, from one occurrence
    for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0)):
        gathered = shard(order[0])[0]
        for r in order[1:]:
            gathered.merge_state(shard(r)[0])
        got = gathered.compute()
        assert gathered.last_evaluator.image_ids == sorted(ids)
        assert got["AP"] == pytest.approx(expected["AP"], abs=1e-12), order
    assert 0.05 < expected["AP"] < 0.99  # a non-trivial AP: noise and a false positive per image


def test_given_ground_truth_is_never_modified() -> None:
    """The metric evaluates against the split's COCO (crowd regions included) without writing
    into it, so a second validation sees the same object."""
    from pycocotools.coco import COCO

    spec = _module().spec
    rng = np.random.default_rng(1)
    pred, truth = _scene(rng, spec.num_keypoints)
    anns = [
        {
            "id": j + 1,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "keypoints": truth["keypoints"][j].reshape(-1).tolist(),
            "num_keypoints": spec.num_keypoints,
        }  # no area, no bbox: the evaluator fills them
        for j in range(len(truth["keypoints"]))
    ]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "height": 100, "width": 100}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}],
    }
    coco.createIndex()
    before = repr(coco.dataset)
    for _ in range(2):
        metric = KeypointAP(spec, ground_truth=coco)
        metric.update([1], [pred], [truth])
        ap = metric.compute()["AP"]
    assert repr(coco.dataset) == before and 0 < ap <= 1
