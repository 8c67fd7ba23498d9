"""KeypointSpec: validation, flip permutations, serialisation, built-ins."""

from __future__ import annotations

import pytest

from dekr.keypoints import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointSpec, get_keypoint_spec


def test_builtins() -> None:
    assert COCO_KEYPOINTS.num_keypoints == 17
    assert CROWDPOSE_KEYPOINTS.num_keypoints == 14
    # official with-centre flip index (dataset/transforms/build.py COCO_WITH_CENTER)
    assert COCO_KEYPOINTS.flip_index_with_center == [
        0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 17
    ]  # fmt: skip
    assert CROWDPOSE_KEYPOINTS.flip_index_with_center == [
        1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13, 14
    ]  # fmt: skip
    assert len(COCO_KEYPOINTS.limbs) == 19 and len(CROWDPOSE_KEYPOINTS.limbs) == 15
    # rescoring normalisation limbs: shoulder-hip for COCO, hip-knee / knee-ankle for CrowdPose
    assert COCO_KEYPOINTS.skeleton[9] == ("left_shoulder", "left_hip")
    assert CROWDPOSE_KEYPOINTS.skeleton[11] == ("left_knee", "left_ankle")


@pytest.mark.parametrize("spec", [COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS])
def test_flip_twice_is_identity(spec: KeypointSpec) -> None:
    perm = spec.flip_index
    assert [perm[p] for p in perm] == list(range(spec.num_keypoints))


def test_roundtrip_dict() -> None:
    spec = KeypointSpec(
        names=("a", "b", "c"), sigmas=(0.1, 0.2, 0.3), flip_pairs=(("a", "b"),),
        skeleton=(("a", "c"), ("b", "c")), name="tri",
    )  # fmt: skip
    again = KeypointSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.flip_index == [1, 0, 2]
    assert get_keypoint_spec(spec.to_dict()) == spec
    assert get_keypoint_spec("coco") is COCO_KEYPOINTS


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(names=("a", "b"), sigmas=(0.1,)), "1 sigmas for 2 keypoints"),
        (dict(names=("a", "b"), sigmas=(0.1, 0.1), flip_pairs=(("a", "z"),)),
         "flip_pairs entry \\('a', 'z'\\) names unknown keypoint 'z'"),
        (dict(names=("a", "b"), sigmas=(0.1, 0.1), skeleton=(("q", "b"),)), "unknown keypoint 'q'"),
        (dict(names=("a", "a"), sigmas=(0.1, 0.1)), "duplicate keypoint names"),
        (dict(names=(), sigmas=()), "empty"),
        (dict(names=("a",), sigmas=(0.0,)), "sigmas must be > 0"),
        (dict(names=("a", "b", "c"), sigmas=(1, 1, 1), flip_pairs=(("a", "b"), ("b", "c"))),
         "repeats a keypoint"),
    ],
)  # fmt: skip
def test_bad_specs_are_clear(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KeypointSpec(**kwargs)


def test_unknown_builtin_and_keys() -> None:
    with pytest.raises(ValueError, match="unknown keypoint spec 'mpii'"):
        get_keypoint_spec("mpii")
    with pytest.raises(ValueError, match="unknown keys \\['sigma'\\]"):
        KeypointSpec.from_dict({"names": ["a"], "sigma": [0.1]})
