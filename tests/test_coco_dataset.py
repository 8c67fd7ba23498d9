"""COCO-format reader on the real COCO / CrowdPose fixtures and on broken JSON files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_DATA

from dekr.data.coco import COCOKeypoints
from dekr.keypoints import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointSpec

DATA = TEST_DATA
COCO_DIR = DATA / "coco_sample"
COCO_JSON = COCO_DIR / "annotations" / "person_keypoints_sample.json"
CP_DIR = DATA / "crowdpose_sample"
CP_JSON = CP_DIR / "annotations" / "crowdpose_sample.json"

@pytest.fixture(scope="module")
def coco() -> COCOKeypoints:
    return COCOKeypoints(str(COCO_JSON), str(COCO_DIR / "images"), COCO_KEYPOINTS)


def _by_id(ds: COCOKeypoints, image_id: int) -> dict:
    return ds[ds.image_ids.index(image_id)]


def test_real_coco_counts(coco: COCOKeypoints) -> None:
    doc = json.loads(COCO_JSON.read_text())
    assert sorted(coco.image_ids) == sorted(im["id"] for im in doc["images"])
    assert len(coco) == 11
    people = sum(len(coco.people(i)[1]) for i in coco.image_ids)
    labelled = sum(int((coco.people(i)[0][..., 2] > 0).sum()) for i in coco.image_ids)
    assert people == 46  # tests/data/README.md: persons with at least one labelled keypoint
    assert labelled == 438
    assert coco.num_outside_keypoints == 0


def test_sample_contract(coco: COCOKeypoints) -> None:
    s = _by_id(coco, 785)
    h, w = s["image"].shape[:2]
    assert s["image"].dtype == np.uint8 and s["image"].shape == (425, 640, 3)
    assert s["keypoints"].dtype == np.float32 and s["keypoints"].shape == (1, 17, 3)
    assert s["areas"].dtype == np.float32 and s["areas"].shape == (1,)
    assert s["ignore_mask"].dtype == bool and s["ignore_mask"].shape == (h, w)
    assert s["image_id"] == 785 and isinstance(s["image_id"], int)
    assert not s["ignore_mask"].any()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_crowd_regions_in_ignore_mask(coco: COCOKeypoints) -> None:
    from pycocotools import mask as mask_utils

    s = _by_id(coco, 217285)
    crowd = [a for a in coco.ground_truth().imgToAnns[217285] if a["iscrowd"]]
    assert len(crowd) == 1
    seg = crowd[0]["segmentation"]
    rle = mask_utils.frPyObjects(seg, seg["size"][0], seg["size"][1])
    region = mask_utils.decode(rle).astype(bool)
    assert region.any() and s["ignore_mask"][region].all()
    assert s["keypoints"].shape[0] == 13


def test_no_person_and_keypointless_images(coco: COCOKeypoints) -> None:
    empty = _by_id(coco, 802)
    assert empty["keypoints"].shape == (0, 17, 3) and empty["areas"].shape == (0,)
    assert not empty["ignore_mask"].any()
    unlabelled = _by_id(coco, 126107)
    assert unlabelled["keypoints"].shape == (0, 17, 3)
    assert unlabelled["ignore_mask"].sum() > 0


def test_drop_images_without_annotations() -> None:
    ds = COCOKeypoints(
        str(COCO_JSON),
        str(COCO_DIR / "images"),
        COCO_KEYPOINTS,
        drop_images_without_annotations=True,
    )
    assert len(ds) == 10 and 802 not in ds.image_ids and 126107 in ds.image_ids


def test_transform_is_applied() -> None:
    ds = COCOKeypoints(
        str(COCO_JSON), str(COCO_DIR / "images"), COCO_KEYPOINTS, transform=lambda s: s["image_id"]
    )
    assert ds[0] == ds.image_ids[0]


def test_crowdpose_sample() -> None:
    ds = COCOKeypoints(str(CP_JSON), str(CP_DIR / "images"), CROWDPOSE_KEYPOINTS)
    assert sorted(ds.image_ids) == [103319, 106848]
    kps = [ds[i]["keypoints"] for i in range(len(ds))]
    assert all(k.shape[1:] == (14, 3) for k in kps)
    assert sum(len(k) for k in kps) == 4 and sum(int((k[..., 2] > 0).sum()) for k in kps) == 47
    areas = np.concatenate([ds[i]["areas"] for i in range(len(ds))])
    assert (areas > 0).all()  # no "area" field: bbox w*h
    with pytest.raises(ValueError, match=r"crowdpose_sample\.json.*no category has 17.*\{1: 14\}"):
        COCOKeypoints(str(CP_JSON), str(CP_DIR / "images"), COCO_KEYPOINTS)


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def _tiny_doc(k: int = 3) -> dict:
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(k)]}],
        "annotations": [
            {
                "id": 11,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [1, 1, 20, 20],
                "keypoints": [5, 5, 2, 10, 10, 1, 50, 5, 2][: 3 * k],
            }
        ],
    }


SPEC3 = KeypointSpec(names=("a", "b", "c"), sigmas=(0.1, 0.1, 0.1), flip_pairs=(("a", "b"),))


def test_k_mismatch_errors(tmp_path: Path) -> None:
    doc = _tiny_doc()
    doc["annotations"][0]["keypoints"] = [1, 2, 2] * 4
    path = _write(tmp_path, doc)
    with pytest.raises(ValueError, match=r"ann\.json.*annotation id 11"):
        COCOKeypoints(str(path), str(tmp_path), SPEC3)
    with pytest.raises(ValueError, match=r"ann\.json.*no category has 17"):
        COCOKeypoints(str(_write(tmp_path, _tiny_doc())), str(tmp_path), COCO_KEYPOINTS)


def test_nan_and_outside_keypoints(tmp_path: Path) -> None:
    doc = _tiny_doc()
    doc["annotations"][0]["keypoints"][0] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(doc))  # json writes NaN literally
    with pytest.raises(ValueError, match=r"nan\.json.*annotation id 11.*NaN"):
        COCOKeypoints(str(path), str(tmp_path), SPEC3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kept keypoints outside the image are no warning
        ds = COCOKeypoints(str(_write(tmp_path, _tiny_doc())), str(tmp_path), SPEC3)
    kps, areas = ds.people(7)
    # x=50 >= width 40: kept as labelled (it still says where the person is), and counted
    np.testing.assert_array_equal(kps[0], [[5, 5, 2], [10, 10, 1], [50, 5, 2]])
    assert ds.num_outside_keypoints == 1
    assert areas[0] == 400.0  # no "area": bbox w*h


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        COCOKeypoints(str(tmp_path / "nope.json"), str(tmp_path), SPEC3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = COCOKeypoints(str(_write(tmp_path, _tiny_doc())), str(tmp_path), SPEC3)
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        ds[0]
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="a.jpg"):
        ds[0]
    shutil.copy(COCO_DIR / "images" / "000000000785.jpg", tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="640x425"):
        ds[0]
