"""The COCO reader returns the samples recorded in ``tests/data/reader_golden`` (recorded with the
reader before its compact storage) for the train / val subsets and both ``official`` settings."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import TEST_DATA

from dekr.data.coco import COCOKeypoints
from dekr.keypoints import COCO_KEYPOINTS

SAMPLE = TEST_DATA / "coco_sample"
GOLDEN = TEST_DATA / "reader_golden" / "reader_samples.npz"
CASES = [(subset, official) for subset in ("train", "val") for official in (False, True)]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def _reader(subset: str, official: bool, **kwargs: object) -> COCOKeypoints:
    ann = SAMPLE / "annotations" / f"person_keypoints_{subset}_sample.json"
    return COCOKeypoints(str(ann), str(SAMPLE / "images"), COCO_KEYPOINTS, official=official,
                         **kwargs)  # fmt: skip


@pytest.mark.parametrize("subset, official", CASES)
def test_reader_matches_the_recorded_samples(
    golden: dict[str, np.ndarray], subset: str, official: bool
) -> None:
    prefix = f"{subset}.{'official' if official else 'default'}"
    ds = _reader(subset, official)
    assert list(ds.image_ids) == golden[f"{prefix}.image_ids"].tolist()
    assert ds.num_outside_keypoints == int(golden[f"{prefix}.num_outside_keypoints"])
    dropped = _reader(subset, official, drop_images_without_annotations=True)
    assert list(dropped.image_ids) == golden[f"{prefix}.dropped_image_ids"].tolist()
    for index in range(len(ds)):
        s = ds.raw_sample(index)
        key = f"{prefix}.{s['image_id']}"
        assert s["image_id"] == int(golden[f"{key}.image_id"])
        kps, areas = golden[f"{key}.keypoints"], golden[f"{key}.areas"]
        assert s["keypoints"].dtype == kps.dtype and s["areas"].dtype == areas.dtype
        np.testing.assert_array_equal(s["keypoints"], kps)
        np.testing.assert_array_equal(s["areas"], areas)
        mask = s["ignore_mask"]
        assert mask.dtype == bool and list(mask.shape) == golden[f"{key}.ignore_shape"].tolist()
        np.testing.assert_array_equal(np.packbits(mask.ravel()), golden[f"{key}.ignore_bits"])
        digest = hashlib.sha256(np.ascontiguousarray(mask).tobytes()).hexdigest()
        assert digest == str(golden[f"{key}.ignore_sha256"])
    assert any(golden[k].any() for k in golden if k.startswith(prefix) and k.endswith("_bits"))
