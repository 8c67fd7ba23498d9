"""Training sample transform, collation and the datamodule on the real COCO sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO, TEST_DATA

from dekr.data.coco import COCOKeypoints
from dekr.data.datamodule import (
    DekrDataModule,
    TrainSampleTransform,
    add_device_targets,
    collate_eval,
    collate_train,
)
from dekr.keypoints import COCO_KEYPOINTS

COCO_DIR = TEST_DATA / "coco_sample"
COCO_JSON = COCO_DIR / "annotations" / "person_keypoints_val_sample.json"

MAPS = ("heatmaps", "heatmap_weights", "offsets", "offset_weights")


@pytest.fixture(scope="module")
def raw() -> COCOKeypoints:
    return COCOKeypoints(str(COCO_JSON), str(COCO_DIR / "images"), COCO_KEYPOINTS)


def _samples(raw: COCOKeypoints, on_device: bool, ids=(217285, 802, 785)) -> list[dict]:
    tf = TrainSampleTransform(COCO_KEYPOINTS, input_size=256, targets_on_device=on_device)
    return [
        tf(raw[raw.image_ids.index(i)], rng=np.random.default_rng(n)) for n, i in enumerate(ids)
    ]


def test_transform_outputs(raw: COCOKeypoints) -> None:
    s = _samples(raw, on_device=False)[0]
    assert s["image"].shape == (3, 256, 256) and s["image"].dtype == torch.float32
    assert s["heatmaps"].shape == (18, 64, 64) and s["offsets"].shape == (34, 64, 64)
    assert s["heatmaps"].max() > 0.9 and s["image_id"] == 217285
    assert (s["heatmap_weights"] == 0).any()  # crowd region / border ignored
    d = _samples(raw, on_device=True)[0]
    assert d["keypoints"].shape == (13, 17, 3) and d["valid_mask"].shape == (64, 64)
    torch.testing.assert_close(d["image"], s["image"])  # same rng, same augmentation


def test_collate_and_device_targets_match_worker_targets(raw: COCOKeypoints) -> None:
    cpu = collate_train(_samples(raw, on_device=False))
    dev = collate_train(_samples(raw, on_device=True))
    assert dev["keypoints"].shape == (3, 13, 17, 3) and dev["areas"].shape == (3, 13)
    assert not (dev["keypoints"][1, :, :, 2] > 0).any()  # the empty image is all padding
    assert dev["valid_mask"].dtype == torch.bool
    built = add_device_targets(dev)
    for key in MAPS:
        assert cpu[key].shape[0] == 3
        torch.testing.assert_close(built[key], cpu[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cpu["image_id"], torch.tensor([217285, 802, 785]))


def test_generator_is_seeded_per_worker_seed() -> None:
    tf = TrainSampleTransform(COCO_KEYPOINTS, seed=1)
    torch.manual_seed(5)
    a = tf._generator().random()
    tf._rng = None
    torch.manual_seed(5)
    assert tf._generator().random() == a
    torch.manual_seed(6)
    assert tf._generator().random() != a


def test_datamodule_loaders(raw: COCOKeypoints) -> None:
    tf = TrainSampleTransform(COCO_KEYPOINTS, input_size=128, targets_on_device=True)
    train = COCOKeypoints(str(COCO_JSON), str(COCO_DIR / "images"), COCO_KEYPOINTS, transform=tf)
    dm = DekrDataModule(train, raw, batch_size=2, targets_on_device=True)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 128, 128) and "heatmaps" not in batch
    batch = dm.on_after_batch_transfer(batch, 0)
    assert batch["heatmaps"].shape == (2, 18, 32, 32) and batch["offsets"].shape == (2, 34, 32, 32)
    val = next(iter(dm.val_dataloader()))
    assert isinstance(val, list) and len(val) == 1 and "image_id" in val[0]
    assert dm.on_after_batch_transfer(val, 0) is val
    assert collate_eval([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="val"):
        DekrDataModule(train).val_dataloader()


def test_official_targets_in_workers_equal_those_on_device() -> None:
    """targets.official: the official reader and flip in the workers, the same maps on the device
    (float32 keypoints there: within 1e-5); they are not the default targets."""
    ids = (217285, 785)
    reader = COCOKeypoints(str(COCO_JSON), str(COCO_DIR / "images"), COCO_KEYPOINTS, official=True)
    kw = {"official": True}

    def samples(on_device: bool, target_kwargs: dict) -> list[dict]:
        tf = TrainSampleTransform(COCO_KEYPOINTS, input_size=256, targets_on_device=on_device,
                                  target_kwargs=target_kwargs, flip_prob=1.0)  # fmt: skip
        raws = [reader[reader.image_ids.index(i)] for i in ids]
        return [tf(r, rng=np.random.default_rng(n)) for n, r in enumerate(raws)]

    cpu = collate_train(samples(False, kw))
    dev = collate_train(samples(True, kw))
    assert dev["official_areas"].dtype == torch.float64 and (dev["areas"][1, 1:] == -1).all()
    built = add_device_targets(dev, **kw)
    for key in MAPS:
        torch.testing.assert_close(built[key], cpu[key], atol=1e-5, rtol=0)
    default = collate_train(samples(False, {}))
    assert not torch.allclose(default["offset_weights"], cpu["offset_weights"])


def test_recipe_official_reaches_reader_transform_and_device() -> None:
    from dekr.binding import target_kwargs
    from dekr.config import load_recipe
    from dekr.training import build_datamodule

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [
        "targets.official=true", "targets.on_device=true", "data.source=coco",
        f"data.train_annotations={COCO_JSON}", f"data.train_images={COCO_DIR / 'images'}",
        f"data.val_annotations={COCO_JSON}", f"data.val_images={COCO_DIR / 'images'}",
        "data.num_workers=0", "data.batch_size=2",
    ])  # fmt: skip
    assert target_kwargs(recipe)["official"] is True
    dm = build_datamodule(recipe)
    dm.setup("fit")
    assert dm.train_dataset.dataset.dataset.official and not dm.val_dataset.dataset.official
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert "official_areas" in batch and batch["heatmaps"].shape[:2] == (2, 18)
