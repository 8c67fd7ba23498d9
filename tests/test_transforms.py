"""Augmentation invariants: matrices, flips, point/image agreement, determinism, masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dekr.data.transforms import (
    IMAGENET_MEAN,
    augment_sample,
    compose,
    flip_keypoints,
    flip_matrix,
    get_affine_matrix,
    invert_affine,
    normalize_image,
    sample_affine_params,
    warp_points,
)
from dekr.keypoints import COCO_KEYPOINTS, KeypointSpec

SPEC3 = KeypointSpec(names=("l", "r", "m"), sigmas=(0.1,) * 3, flip_pairs=(("l", "r"),))


def test_flip_twice_is_identity() -> None:
    rng = np.random.default_rng(0)
    kps = np.concatenate([rng.uniform(0, 100, (4, 17, 2)), rng.integers(0, 3, (4, 17, 1))], -1)
    idx = COCO_KEYPOINTS.flip_index
    once = flip_keypoints(kps, 100, idx)
    np.testing.assert_allclose(once[:, 1, 0], 99 - kps[:, 2, 0], rtol=1e-6)  # left_eye <- right
    np.testing.assert_allclose(flip_keypoints(once, 100, idx), kps, rtol=1e-6)


def test_affine_composed_with_inverse_is_identity() -> None:
    mat = get_affine_matrix((123.4, 87.6), 300.0, 17.0, 512)
    ident = compose(invert_affine(mat), mat)
    np.testing.assert_allclose(ident, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    pts = np.random.default_rng(1).uniform(0, 400, (10, 2))
    np.testing.assert_allclose(warp_points(warp_points(pts, mat), invert_affine(mat)), pts)
    mid = warp_points(np.array([123.4, 87.6]), mat)
    np.testing.assert_allclose(mid, [256.0, 256.0])  # the crop centre lands on (S/2, S/2)
    np.testing.assert_allclose(compose(flip_matrix(64), flip_matrix(64)), np.eye(2, 3))


@pytest.mark.parametrize("side", [512, 384, 640])
def test_zero_augmentation_is_the_scale_only_map(side: int) -> None:
    """No rotation, scale 1, no shift: image and labels are only scaled (by 512/side) about the
    origin, exactly; at side = S nothing moves (the official identity warp)."""
    rng = np.random.default_rng(0)
    zero = dict(min_scale=1.0, max_scale=1.0, max_rotation=0.0, max_translate=0.0)
    center, crop, rot = sample_affine_params(rng, (side, side), **zero)
    mat = get_affine_matrix(center, crop, rot, 512)
    np.testing.assert_allclose(mat, [[512 / side, 0, 0], [0, 512 / side, 0]], rtol=0, atol=1e-12)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    ignore = rng.random((side, side)) < 0.3
    kps = rng.uniform(0, side, (2, 3, 3)).astype(np.float32)
    kps[..., 2] = 2
    sample = {"image": image, "keypoints": kps, "areas": np.ones(2, np.float32),
              "ignore_mask": ignore, "image_id": 1}  # fmt: skip
    out = augment_sample(sample, rng=rng, flip_index=SPEC3.flip_index, input_size=512, stride=4,
                         flip_prob=0.0, **zero)  # fmt: skip
    np.testing.assert_allclose(out["keypoints"][..., :2], kps[..., :2] * (128 / side), rtol=1e-6)
    if side == 512:
        np.testing.assert_array_equal(out["image"], image)
        np.testing.assert_array_equal(out["keypoints"][..., :2], kps[..., :2] / 4)
        # output pixel u reads input pixel 4u
        np.testing.assert_array_equal(out["valid_mask"], ~ignore[::4, ::4])


def _dot_image(points: np.ndarray, hw: tuple[int, int], sigma: float = 2.0) -> list[np.ndarray]:
    ys, xs = np.mgrid[: hw[0], : hw[1]]
    return [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points]


def _peak(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid around the maximum."""
    i, j = np.unravel_index(np.argmax(img), img.shape)
    win = img[i - 5 : i + 6, j - 5 : j + 6]
    ys, xs = np.mgrid[i - 5 : i + 6, j - 5 : j + 6]
    return np.array([(xs * win).sum() / win.sum(), (ys * win).sum() / win.sum()])


@pytest.mark.parametrize("flip", [False, True])
def test_warp_points_matches_warped_image(flip: bool) -> None:
    pts = np.array([[60.3, 40.7], [100.0, 70.2], [31.6, 90.9]])
    mat = get_affine_matrix((80, 60), 150.0, 23.0, 160)
    if flip:
        mat = compose(flip_matrix(160), mat)
    for p, img in zip(pts, _dot_image(pts, (120, 160))):
        warped = cv2.warpAffine(img.astype(np.float32), mat, (160, 160), flags=cv2.INTER_LINEAR)
        assert np.abs(_peak(warped) - warp_points(p, mat)).max() < 0.5


def _sample(kps: np.ndarray, hw=(120, 160)) -> dict:
    dots = _dot_image(kps[0, :, :2], hw) if len(kps) else [np.ones(hw)] * 3
    image = np.stack([(255 * d).astype(np.uint8) for d in dots], -1)
    return {
        "image": image,
        "keypoints": kps,
        "areas": np.array([5000.0], np.float32),
        "ignore_mask": np.zeros(hw, bool),
        "image_id": 3,
    }


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_labels_follow_the_image(flip_prob: float) -> None:
    """Keypoint k at output resolution (× stride) sits on the dot of source joint flip_index[k]."""
    kps = np.array([[[50.2, 40.6, 2], [100.7, 45.1, 2], [75.4, 90.3, 1]]], np.float32)
    out = augment_sample(
        _sample(kps), rng=np.random.default_rng(3), flip_index=SPEC3.flip_index,
        input_size=128, stride=4, flip_prob=flip_prob, max_rotation=30.0,
    )  # fmt: skip
    src = SPEC3.flip_index if flip_prob else [0, 1, 2]
    for k in range(3):
        peak = _peak(out["image"][..., src[k]].astype(np.float64))
        assert np.abs(peak - out["keypoints"][0, k, :2] * 4).max() < 0.5
    np.testing.assert_array_equal(out["keypoints"][0, :, 2], kps[0, src, 2])


def test_augment_is_deterministic_and_shapes() -> None:
    kps = np.array([[[50.2, 40.6, 2], [100.7, 45.1, 2], [75.4, 90.3, 1]]], np.float32)
    a = augment_sample(_sample(kps), rng=np.random.default_rng(7), flip_index=SPEC3.flip_index,
                       input_size=64, stride=4)  # fmt: skip
    b = augment_sample(_sample(kps), rng=np.random.default_rng(7), flip_index=SPEC3.flip_index,
                       input_size=64, stride=4)  # fmt: skip
    assert a["image"].shape == (64, 64, 3) and a["valid_mask"].shape == (16, 16)
    assert a["keypoints"].dtype == np.float32 and a["image_id"] == 3
    for key in ("image", "keypoints", "valid_mask", "areas"):
        np.testing.assert_array_equal(a[key], b[key])


def test_valid_mask_border_and_ignore_region() -> None:
    hw = (120, 160)
    sample = _sample(np.zeros((0, 3, 3), np.float32), hw) | {
        "image": np.full((*hw, 3), 255, np.uint8)
    }
    sample["ignore_mask"][30:90, 40:120] = True
    for seed in range(4):
        out = augment_sample(sample, rng=np.random.default_rng(seed), flip_index=SPEC3.flip_index,
                             input_size=256, stride=4, min_scale=1.5, max_scale=1.6)  # fmt: skip
        # a valid output pixel u must be inside the image and outside the ignored box at 4·u
        img = out["image"][::4, ::4, 0]
        valid = out["valid_mask"]
        assert (img[valid] > 128).mean() > 0.97
        assert (~valid).any() and valid.any()
    assert out["keypoints"].shape == (0, 3, 3)


def test_normalize_image() -> None:
    img = np.zeros((5, 7, 3), np.uint8)
    img[..., 0] = 255
    t = normalize_image(img)
    assert t.shape == (3, 5, 7) and str(t.dtype) == "torch.float32"
    assert float(t[1, 0, 0]) == pytest.approx(-IMAGENET_MEAN[1] / 0.224, rel=1e-5)
    assert float(t[0, 0, 0]) == pytest.approx((1 - IMAGENET_MEAN[0]) / 0.229, rel=1e-5)
