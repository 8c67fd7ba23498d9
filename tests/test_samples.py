"""Samples have exactly the keys and dtypes that dekr/data/types.py declares; sizes are (h, w).

The declarations are read from the TypedDicts' annotations: ``NDArray[np.float32]`` (or a union
of them) for numpy arrays, ``Annotated[Tensor, "float32", ...]`` (the allowed torch dtypes) for
tensors, ``int`` for image ids.
"""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import torch
from conftest import TEST_DATA

from dekr.data.coco import COCOKeypoints
from dekr.data.datamodule import TrainSampleTransform, add_device_targets, collate_train
from dekr.data.transforms import get_affine_matrix, warp_sample
from dekr.data.types import (
    DEVICE_TARGET_KEYS,
    OFFICIAL_TARGET_KEYS,
    TARGET_MAP_KEYS,
    BatchTargetMaps,
    RawSample,
    Size,
    TargetMaps,
    TrainBatch,
    TrainSample,
    WarpedSample,
    as_size,
)
from dekr.keypoints import COCO_KEYPOINTS
from dekr.targets import encode_targets, encode_targets_batch

COCO_DIR = TEST_DATA / "coco_sample"
COCO_JSON = COCO_DIR / "annotations" / "person_keypoints_sample.json"
IMAGE_ID = 217285  # 13 people and a crowd region
S, STRIDE = 64, 4


def _allowed(hint: Any) -> tuple[type, set[Any]]:
    """(container type, allowed dtypes) of one declared field."""
    if get_origin(hint) is Annotated:
        base, *names = get_args(hint)
        assert base is torch.Tensor and names, hint
        return torch.Tensor, {getattr(torch, n) for n in names}
    if get_origin(hint) is Union:
        parts = [_allowed(h) for h in get_args(hint)]
        assert len({p[0] for p in parts}) == 1, hint
        return parts[0][0], set().union(*(p[1] for p in parts))
    if get_origin(hint) is np.ndarray:
        return np.ndarray, {np.dtype(get_args(get_args(hint)[1])[0])}
    assert hint in (int, torch.Tensor), hint
    return hint, set()


def check(sample: dict[str, Any], declared: type, keys: set[str]) -> None:
    """``sample`` has exactly ``keys`` (the required keys of ``declared`` among them) with the
    declared types and dtypes."""
    hints = get_type_hints(declared, None, {"Tensor": torch.Tensor}, include_extras=True)
    assert declared.__required_keys__ <= keys <= set(hints)
    assert set(sample) == keys
    for key, value in sample.items():
        kind, dtypes = _allowed(hints[key])
        assert isinstance(value, kind) and not isinstance(value, bool), (key, type(value))
        if dtypes:
            assert value.dtype in dtypes, (key, value.dtype, dtypes)


@pytest.fixture(scope="module")
def readers() -> dict[bool, COCOKeypoints]:
    return {
        official: COCOKeypoints(str(COCO_JSON), str(COCO_DIR / "images"), COCO_KEYPOINTS,
                                official=official)  # fmt: skip
        for official in (False, True)
    }


@pytest.fixture(scope="module")
def raw(readers: dict[bool, COCOKeypoints]) -> dict[bool, RawSample]:
    return {o: r.raw_sample(r.image_ids.index(IMAGE_ID)) for o, r in readers.items()}


def test_reader_samples(raw: dict[bool, RawSample]) -> None:
    required = set(RawSample.__required_keys__)
    for official, sample in raw.items():
        check(sample, RawSample, required)
        assert sample["keypoints"].dtype == (np.float64 if official else np.float32)
        assert sample["ignore_mask"].shape == sample["image"].shape[:2]
        assert sample["ignore_mask"].any()  # the crowd region


@pytest.mark.parametrize("official", [False, True])
def test_warped_samples(raw: dict[bool, RawSample], official: bool) -> None:
    h, w = raw[official]["image"].shape[:2]
    matrix = get_affine_matrix((w / 2, h / 2), min(h, w), 10.0, S)
    out = warp_sample(raw[official], matrix, flip=True, flip_index=COCO_KEYPOINTS.flip_index,
                      input_size=S, stride=STRIDE, official=official)  # fmt: skip
    extra = set(OFFICIAL_TARGET_KEYS) if official else set()
    check(out, WarpedSample, set(WarpedSample.__required_keys__) | extra)
    assert out["image"].shape == (S, S, 3) and out["valid_mask"].shape == (S // STRIDE,) * 2


@pytest.mark.parametrize(
    ("on_device", "official"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_train_samples_and_batches(
    raw: dict[bool, RawSample], on_device: bool, official: bool
) -> None:
    transform = TrainSampleTransform(COCO_KEYPOINTS, input_size=S, targets_on_device=on_device,
                                     target_kwargs={"official": official})  # fmt: skip
    rng = np.random.default_rng(0)
    samples = [transform(raw[official], rng) for _ in range(2)]
    base = set(TrainSample.__required_keys__)
    if on_device:
        keys = base | set(DEVICE_TARGET_KEYS) | (set(OFFICIAL_TARGET_KEYS) if official else set())
    else:
        keys = base | set(TARGET_MAP_KEYS)
    for sample in samples:
        check(sample, TrainSample, keys)
    batch = collate_train(samples)
    check(batch, TrainBatch, keys)
    if on_device:
        batch = add_device_targets(batch, official=official)
        check(batch, TrainBatch, keys | set(TARGET_MAP_KEYS))


def test_target_maps() -> None:
    kps = np.array([[[10.0, 8.0, 2.0], [12.0, 9.0, 2.0], [0.0, 0.0, 0.0]]], np.float32)
    maps = encode_targets(kps, np.array([5000.0], np.float32), None, output_size=(16, 24))
    check(maps, TargetMaps, set(TargetMaps.__required_keys__))
    assert maps["heatmaps"].shape == (4, 16, 24)  # (K+1, h, w)
    batch = encode_targets_batch(torch.from_numpy(kps)[None], torch.tensor([[5000.0]]), None,
                                 output_size=(16, 24))  # fmt: skip
    assert set(batch) == set(BatchTargetMaps.__required_keys__)
    assert all(v.shape[-2:] == (16, 24) and v.dtype == torch.float32 for v in batch.values())


def test_as_size() -> None:
    assert as_size(5) == Size(5, 5) == (5, 5)
    assert as_size((480, 640)) == Size(h=480, w=640)
    assert as_size(np.array([3, 4])).w == 4
    for bad in (0, (4,), (1, 2, 3), (2.5, 4), True, (True, 4), (-1, 4)):
        with pytest.raises(ValueError, match="size"):
            as_size(bad)
