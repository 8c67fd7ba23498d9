"""Training augmentation: random affine crop, horizontal flip, ImageNet normalisation.

Official semantics (DEKR_REFERENCE.md §3.5, transforms.py:130-183): a square crop of side
``short side × U[0.75, 1.5)`` centred on the image centre shifted by ``±40/200`` of the crop side
(TRAIN.MAX_TRANSLATE 40, in units of the 200-px "person scale"), rotated by ``U[−30°, 30°)``,
resampled to ``input_size``; then a flip with probability 0.5.

Everything is one affine matrix at input resolution. The image is warped with it, keypoints are
warped with it and divided by ``stride`` (``x_out = x_in / stride``, docs/architecture.md), and the
valid mask is warped with ``diag(1/stride) · matrix`` straight to output resolution with border 0
(outside the original image is ignored, as the official mask warp does).

Flip (differs from the official code on purpose): the mirror ``x' = S − 1 − x`` is composed into
the input-resolution matrix, so labels at output resolution become ``(S − 1)/stride − x_out``
(127.75 − x_out at 512). The official code mirrors labels as ``128 − 1 − x_out`` at output
resolution, which is 0.75 output px (3 input px) off the mirrored image; official checkpoints
carry that shift and the inference code compensates it for them only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "get_affine_matrix",
    "invert_affine",
    "warp_points",
    "flip_keypoints",
    "flip_matrix",
    "compose",
    "sample_affine_params",
    "augment_sample",
    "normalize_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_affine_matrix(
    center: Sequence[float], crop_size: float, rotation: float, output_size: int
) -> np.ndarray:
    """(2, 3) matrix taking a square crop of side ``crop_size`` around ``center`` to (S, S).

    The crop centre maps to the output image centre ``((S−1)/2, (S−1)/2)``; the crop is rotated by
    ``rotation`` degrees about it (counter-clockwise in the picture for positive angles).
    """
    s = output_size / float(crop_size)
    a = math.radians(rotation)
    cos, sin = math.cos(a) * s, math.sin(a) * s
    # y points down, so [[cos, sin], [-sin, cos]] turns the picture counter-clockwise.
    lin = np.array([[cos, sin], [-sin, cos]])
    mid = (output_size - 1) / 2.0
    t = np.array([mid, mid]) - lin @ np.asarray(center, dtype=np.float64)
    return np.concatenate([lin, t[:, None]], axis=1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def flip_matrix(width: int) -> np.ndarray:
    """(2, 3) horizontal mirror of an image ``width`` pixels wide: ``x' = width − 1 − x``."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(2, 3) matrix of ``outer ∘ inner``."""
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], axis=1)


def warp_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to points (..., 2)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def flip_keypoints(keypoints: np.ndarray, width: float, flip_index: Sequence[int]) -> np.ndarray:
    """Mirror keypoints (N, K, 3) in an image ``width`` px wide and swap left/right joints.

    ``flipped[:, k] = keypoints[:, flip_index[k]]`` with ``x' = width − 1 − x``; ``v`` is kept.
    Float dtypes are kept, so flipping twice is exactly the identity.
    """
    out = np.asarray(keypoints)[:, list(flip_index)]  # a copy (fancy indexing)
    if not np.issubdtype(out.dtype, np.floating):
        out = out.astype(np.float32)
    out[..., 0] = (width - 1) - out[..., 0]
    return out


def sample_affine_params(
    rng: np.random.Generator,
    image_hw: tuple[int, int],
    *,
    min_scale: float = 0.75,
    max_scale: float = 1.5,
    max_rotation: float = 30.0,
    max_translate: float = 40.0,
) -> tuple[np.ndarray, float, float]:
    """Random ``(center (2,), crop_size, rotation)`` with the official ranges.

    Crop side = short side × U[min_scale, max_scale) (TRAIN.MIN_SCALE/MAX_SCALE, SCALE_TYPE
    'short'); rotation U[−max_rotation, max_rotation) (TRAIN.MAX_ROTATION); the centre moves by
    U(−1, 1) · max_translate · crop/200 per axis (TRAIN.MAX_TRANSLATE, 200-px scale units).
    """
    h, w = image_hw
    crop = min(h, w) * rng.uniform(min_scale, max_scale)
    rot = rng.uniform(-max_rotation, max_rotation)
    shift = rng.uniform(-1.0, 1.0, size=2) * max_translate * crop / 200.0
    center = np.array([w / 2.0, h / 2.0]) + shift
    return center, float(crop), float(rot)


def augment_sample(
    sample: dict[str, Any],
    *,
    rng: np.random.Generator,
    flip_index: Sequence[int],
    input_size: int = 512,
    stride: int = 4,
    flip_prob: float = 0.5,
    **affine: float,
) -> dict[str, Any]:
    """Random affine + flip of a raw sample (docs/architecture.md) for training.

    Returns ``image`` uint8 (S, S, 3), ``keypoints`` float32 (N, K, 3) in OUTPUT pixels,
    ``areas`` (N,) unchanged (original pixels², the small-person rule of the targets uses them as
    the official code does, before augmentation), ``valid_mask`` bool (S/stride, S/stride) and
    ``image_id``. ``affine`` goes to :func:`sample_affine_params`.
    """
    image = sample["image"]
    center, crop, rot = sample_affine_params(rng, image.shape[:2], **affine)
    mat = get_affine_matrix(center, crop, rot, input_size)
    kps = np.array(sample["keypoints"], dtype=np.float32).reshape(-1, len(flip_index), 3)
    kps[..., :2] = warp_points(kps[..., :2], mat)
    if rng.random() < flip_prob:
        mat = compose(flip_matrix(input_size), mat)
        kps = flip_keypoints(kps, input_size, flip_index)
    kps[..., :2] /= stride
    out_size = input_size // stride
    to_out = np.array([[1.0 / stride, 0.0, 0.0], [0.0, 1.0 / stride, 0.0]])
    warped = cv2.warpAffine(
        image, mat, (input_size, input_size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
    )
    valid = (~np.asarray(sample["ignore_mask"], dtype=bool)).astype(np.uint8) * 255
    valid = cv2.warpAffine(
        valid, compose(to_out, mat), (out_size, out_size), flags=cv2.INTER_LINEAR, borderValue=0
    )
    return {
        "image": warped,
        "keypoints": kps,
        "areas": np.asarray(sample["areas"], dtype=np.float32),
        "valid_mask": valid > 127,  # official threshold 0.5 after the bilinear warp
        "image_id": sample["image_id"],
    }


def normalize_image(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 tensor (3, H, W), ``(x/255 − mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(3, 1, 1)
    return x.sub_(m).div_(s)
