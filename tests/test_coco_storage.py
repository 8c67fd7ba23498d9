"""The COCO reader returns the samples recorded in ``tests/data/reader_golden`` (recorded with the
reader before its compact storage) for the train / val subsets and both ``official`` settings."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import numpy as np
import pytest
from conftest import SPEC3, TEST_DATA

from dekr.data.cache import cache_paths, cached_arrays
from dekr.data.coco import AnnotationError, COCOKeypoints, _variant
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


def test_ground_truth_is_fresh_and_keeps_crowds(tmp_path) -> None:
    ds = _reader("val", False)
    gt = ds.ground_truth()
    assert any(a["iscrowd"] for a in gt.dataset["annotations"])  # crowd regions kept
    assert len(gt.dataset["annotations"]) == 43 and sorted(gt.imgs) == sorted(ds.image_ids)
    gt.dataset["annotations"].clear()
    assert len(ds.ground_truth().dataset["annotations"]) == 43  # a new object each call
    doc = json.loads((SAMPLE / "annotations" / "person_keypoints_val_sample.json").read_text())
    path = tmp_path / "val.json"
    path.write_text(json.dumps(doc))
    ds = COCOKeypoints(str(path), str(SAMPLE / "images"), COCO_KEYPOINTS)
    doc["annotations"] = doc["annotations"][:3]
    path.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match=r"val\.json: changed since the dataset was built"):
        ds.ground_truth()


# ------------------------------------------------------------------------------------ cache
def _doc() -> dict:
    return json.loads((SAMPLE / "annotations" / "person_keypoints_train_sample.json").read_text())


def _same(a: COCOKeypoints, b: COCOKeypoints) -> None:
    assert list(a.image_ids) == list(b.image_ids)
    for i in range(len(a)):
        x, y = a.annotations(i), b.annotations(i)
        for key in ("keypoints", "areas", "ignore_mask"):
            np.testing.assert_array_equal(x[key], y[key])


def test_cache_is_built_once_read_after_and_rebuilt_when_stale_or_corrupt(tmp_path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_doc()))
    make = lambda: COCOKeypoints(str(path), str(SAMPLE / "images"), COCO_KEYPOINTS,  # noqa: E731
                                 official=True, cache=True)  # fmt: skip
    plain = COCOKeypoints(str(path), str(SAMPLE / "images"), COCO_KEYPOINTS, official=True)
    first = make()
    cache = cache_paths(str(path), _variant(COCO_KEYPOINTS, True))[0]
    assert first.cache_status == "built" and cache.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", cache.name]  # no lock left
    second = make()
    assert second.cache_status == "read" and not second._a["keypoint_xy"].flags.writeable
    _same(plain, second)
    _same(plain, first)
    data = bytearray(cache.read_bytes())
    data[-5] ^= 0xFF  # corrupt payload: rebuilt, never trusted
    cache.write_bytes(bytes(data))
    assert make().cache_status == "built"
    cache.write_bytes(b"DEKRCACHE1\n garbage")
    assert make().cache_status == "built"
    doc = _doc()
    doc["annotations"][0]["keypoints"][0] += 1.0  # the same size, another content
    text = json.dumps(doc)
    path.write_text(text)
    changed = make()
    assert changed.cache_status == "built"
    _same(COCOKeypoints(str(path), str(SAMPLE / "images"), COCO_KEYPOINTS, official=True), changed)
    st = os.stat(path)
    path.write_text(text.replace('"iscrowd": 0', '"iscrowd": 1', 1)[: len(text)])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime kept: the hash differs
    assert make().cache_status == "built"


def test_cache_lock_waits_removes_stale_and_times_out(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DEKR_HOME", str(tmp_path / "home"))
    source = tmp_path / "src.json"
    source.write_text("{}")
    build = lambda: {"x": np.arange(5)}  # noqa: E731
    here, home = cache_paths(str(source), "v")
    assert home.parent == tmp_path / "home" / "cache"
    lock = here.with_name(here.name + ".lock")
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live builder: wait, time out
    with pytest.warns(UserWarning, match=r"\.lock: another process .* building without"):
        arrays, how = cached_arrays(str(source), "v", build, timeout=0.2, poll=0.05)
    assert how == "uncached" and arrays["x"].tolist() == list(range(5)) and not here.exists()
    lock.write_text(f"{socket.gethostname()} 999999999")  # a dead builder: taken over
    arrays, how = cached_arrays(str(source), "v", build, timeout=5)
    assert how == "built" and here.is_file() and not lock.exists()
    assert cached_arrays(str(source), "v", build)[1] == "read"


# ------------------------------------------------------------------------------ data checks
def _tiny() -> dict:
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "person", "keypoints": ["a", "b", "c"]}],
        "annotations": [
            {"id": 11, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 50.0,
             "bbox": [1, 1, 20, 20], "keypoints": [5, 5, 2, 10, 10, 1, 12, 5, 2]},
            {"id": 12, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 60.0,
             "bbox": [2, 2, 10, 10], "keypoints": [6, 5, 2, 11, 10, 1, 13, 5, 2]},
        ],
    }  # fmt: skip


def _set(path: str, value: object):
    def edit(doc: dict) -> None:
        where, *keys, last = path.split(".")
        item = doc[where][int(keys[0])] if keys else doc[where]
        for key in keys[1:]:
            item = item[key]
        index = int(last) if isinstance(item, list) else last
        if value is _DELETE:
            del item[index]
        else:
            item[index] = value

    return edit


_DELETE = object()
DATA_CHECKS = {
    "negative_area": (_set("annotations.1.area", -4.0), r"annotation id 12 has a negative area"),
    "area_not_a_number": (_set("annotations.1.area", "big"), r"annotation id 12 has area 'big'"),
    "bad_bbox": (_set("annotations.1.bbox", [1, 2, -3, 4]), r"annotation id 12 has bbox \[1, 2"),
    "keypoints_not_a_list": (_set("annotations.1.keypoints", "1 2 3"),
                             r"annotation id 12 has keypoints of type str"),
    "keypoint_not_a_number": (_set("annotations.1.keypoints.4", "7"),
                              r"annotation id 12 has a keypoint value '7'"),
    "keypoints_wrong_length": (_set("annotations.1.keypoints", [1, 2, 2]),
                               r"annotation id 12 has 3 keypoint numbers, expected 9"),
    "duplicate_annotation_id": (_set("annotations.1.id", 11),
                                r"annotation id 11 appears more than once"),
    "image_without_file_name": (_set("images.0.file_name", _DELETE),
                                r"image id 7 has no 'file_name'"),
    "duplicate_image_id": (lambda d: d["images"].append(dict(d["images"][0])),
                           r"image id 7 appears more than once"),
    "bad_image_size": (_set("images.0.height", 0), r"image id 7 needs a positive 'width'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DATA_CHECKS))
def test_data_checks_name_the_file_and_the_id(case: str, tmp_path) -> None:
    edit, message = DATA_CHECKS[case]
    doc = _tiny()
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match=r"bad\.json: " + message):
        COCOKeypoints(str(path), str(tmp_path), SPEC3)
    assert issubclass(AnnotationError, ValueError)


def test_zero_areas_orphans_and_missing_boxes_are_counted_in_one_warning(tmp_path) -> None:
    doc = _tiny()
    doc["annotations"][0]["area"] = 0.0
    doc["annotations"].append({**doc["annotations"][1], "id": 13, "image_id": 99})
    path = tmp_path / "z.json"
    path.write_text(json.dumps(doc))
    del doc["annotations"][1]["bbox"]  # optional: the keypoints' box
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match=r"z\.json: 1 people of area 0 kept .*; 1 annotations "
                      r"of images not in 'images' not read; 1 annotations without bbox given "
                      r"the box of their segmentation or labelled") as record:  # fmt: skip
        ds = COCOKeypoints(str(path), str(tmp_path), SPEC3)
    assert len(record) == 1 and ds.people(7)[1].tolist() == [0.0, 60.0]
    assert ds._a["boxes"][1].tolist() == [6.0, 5.0, 7.0, 5.0]
    assert ds.ground_truth().anns[12]["bbox"] == [6.0, 5.0, 7.0, 5.0]


@pytest.mark.slow
def test_scale_benchmark_at_small_size(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(TEST_DATA.parents[1] / "tools"))
    import benchmark

    assert benchmark.main(["scale", "--images", "200", "--epochs", "1", "--json"]) == 0
    records = {r["name"]: r["value"] for r in json.loads(capsys.readouterr().out)}
    assert records["scale.coco.images"] == 400 and records["scale.coco.people"] > 200
    assert records["scale.coco.startup_s"] > 0 and records["scale.coco.cache_file_mib"] > 0
    assert records["scale.coco.rank_mib"] < 100 and records["scale.coco.worker_growth_mib"] < 10


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_keypoint_packing_is_lossless_to_the_bit(dtype: type) -> None:
    from dekr.data.coco import _pack_keypoints, _unpack_keypoints

    rng = np.random.default_rng(0)
    kps = np.round(rng.uniform(-5, 300, (7, 4, 3)), 1).astype(dtype)
    kps[..., 2] = rng.integers(0, 3, (7, 4))
    kps[1] = 0.0  # a person without labelled keypoints: not stored
    kps[2, 0, 0] = -0.0  # a stored row: -0.0 is not 0.0 bit for bit
    kps[2, 1:] = 0.0
    packed = _pack_keypoints(kps)
    assert packed["keypoint_rows"].tolist() == [0, -1, 1, 2, 3, 4, 5]
    assert packed["keypoint_v"].dtype == np.uint8 and packed["keypoint_xy"].dtype == dtype
    for lo, hi in [(0, 7), (1, 2), (1, 4), (3, 3)]:
        out = _unpack_keypoints(packed, lo, hi)
        assert out.dtype == dtype and out.shape == (hi - lo, 4, 3)
        assert out.tobytes() == kps[lo:hi].tobytes()
    kps[3, 0, 2] = 0.5  # a visibility that is no small integer keeps the float dtype
    packed = _pack_keypoints(kps)
    assert packed["keypoint_v"].dtype == dtype
    assert _unpack_keypoints(packed, 0, 7).tobytes() == kps.tobytes()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode and numpy 2
def test_ignore_region_of_an_image_is_the_union_of_its_annotations() -> None:
    import pycocotools.mask as mask_utils

    from dekr.data.coco import _ignore_region, _region

    h, w = 40, 50
    anns = [
        {"id": 1, "segmentation": [[2, 2, 20, 2, 20, 15, 2, 15], [30, 30, 40, 30, 35, 38]]},
        {"id": 2, "segmentation": [[10, 10, 25, 10, 25, 30]]},
        {"id": 4, "segmentation": mask_utils.frPyObjects([[40, 2, 48, 2, 48, 9]], h, w)[0]},
        {"id": 5, "bbox": [3, 33, 6, 4]},  # no segmentation: its box
        {"id": 6, "segmentation": {"size": [h, w], "counts": [h * w - 5, 5]}},
    ]
    one_by_one = mask_utils.merge([_region("f.json", a, h, w) for a in anns], intersect=0)
    together = _ignore_region("f.json", anns, h, w)
    np.testing.assert_array_equal(mask_utils.decode(together), mask_utils.decode(one_by_one))
    assert together["counts"] == one_by_one["counts"]
    assert _ignore_region("f.json", [{"id": 7}], h, w) is None
    bad = [anns[0], {"id": 8, "segmentation": [[1, 2, 3, "x", 5, 6]]}]
    with pytest.raises(AnnotationError, match=r"f\.json: annotation id 8 has a segmentation"):
        _ignore_region("f.json", bad, h, w)


def test_reader_without_orjson_reads_the_same(monkeypatch, golden) -> None:
    import sys

    fast = _reader("train", True)
    monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson raises ImportError
    from dekr.data.coco import _NOT_PARSED, _fast_json

    assert _fast_json(b"{}") is _NOT_PARSED
    slow = _reader("train", True)
    assert list(slow.image_ids) == list(fast.image_ids)
    for index in range(len(fast)):
        a, b = fast.annotations(index), slow.annotations(index)
        assert a["keypoints"].tobytes() == b["keypoints"].tobytes()
        np.testing.assert_array_equal(a["ignore_mask"], b["ignore_mask"])
