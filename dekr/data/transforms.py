"""Training augmentation: random affine crop, horizontal flip, ImageNet normalisation.

Official semantics (DEKR_REFERENCE.md §3.5, transforms.py:130-183): a square crop of side
``short side × U[0.75, 1.5)`` centred on the image centre shifted by ``±40/200`` of the crop side
(TRAIN.MAX_TRANSLATE 40, in units of the 200-px "person scale"), rotated by ``U[−30°, 30°)``,
resampled to ``input_size``; then a flip with probability 0.5.

Everything is one affine matrix at input resolution, ``x' = R·(S/crop)·(x − c) + S/2``: the crop
centre ``c`` lands on ``(S/2, S/2)`` as in the official matrix and the eval resize
(``dekr/inference.py``), so a zero augmentation is the pure scale ``x' = (S/crop)·x`` (the identity
for a square image of side S) and ``x_in = stride·x_out`` holds between image and labels
(docs/architecture.md). The image is warped with the matrix, keypoints and the valid mask with
``diag(1/stride) · matrix`` straight to output resolution (mask border 0: outside the original
image is ignored, as the official mask warp does).

Flip (differs from the official code on purpose): the mirror ``x' = S − 1 − x`` is composed into
the input-resolution matrix, so labels and mask at output resolution become ``(S − 1)/stride −
x_out`` (127.75 − x_out at 512). The official code mirrors labels and mask as ``128 − 1 − x_out``
at output resolution, which is 0.75 output px (3 input px) off the mirrored image; official
checkpoints carry that shift and the inference code compensates it for them only.
``official=True`` (recipe ``targets.official``) reproduces the official flip, and also returns the
per-person centres and "areas" of the official target rules (:func:`official_people`), which are
defined in original image coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from dekr.data.types import RawSample, WarpedSample

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
    "warp_sample",
    "official_people",
    "normalize_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_affine_matrix(
    center: Sequence[float], crop_size: float, rotation: float, output_size: int
) -> np.ndarray:
    """(2, 3) matrix taking a square crop of side ``crop_size`` around ``center`` to (S, S).

    The crop centre maps to ``(S/2, S/2)`` (official transforms.py:96-121, and the eval resize), so
    an unrotated crop centred on ``(crop/2, crop/2)`` is the pure scale ``x' = (S/crop)·x``; the
    crop is rotated by ``rotation`` degrees about it (counter-clockwise in the picture for
    positive angles; the official matrix for the same ``rot``).
    """
    s = output_size / float(crop_size)
    a = math.radians(rotation)
    cos, sin = math.cos(a) * s, math.sin(a) * s
    # y points down, so [[cos, sin], [-sin, cos]] turns the picture counter-clockwise.
    lin = np.array([[cos, sin], [-sin, cos]])
    mid = output_size / 2.0
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
    sample: RawSample,
    *,
    rng: np.random.Generator,
    flip_index: Sequence[int],
    input_size: int = 512,
    stride: int = 4,
    flip_prob: float = 0.5,
    official: bool = False,
    **affine: float,
) -> WarpedSample:
    """Random affine + flip of a raw sample (docs/architecture.md) for training.

    Draws ``(center, crop, rotation)`` with :func:`sample_affine_params` (``affine`` goes there)
    and the flip, then applies them with :func:`warp_sample` (see there for the outputs).
    """
    center, crop, rot = sample_affine_params(rng, sample["image"].shape[:2], **affine)
    flip = bool(rng.random() < flip_prob)
    return warp_sample(
        sample,
        get_affine_matrix(center, crop, rot, input_size),
        flip=flip,
        flip_index=flip_index,
        input_size=input_size,
        stride=stride,
        official=official,
    )


def warp_sample(
    sample: RawSample,
    matrix: np.ndarray,
    *,
    flip: bool,
    flip_index: Sequence[int],
    input_size: int = 512,
    stride: int = 4,
    official: bool = False,
) -> WarpedSample:
    """Apply the (2, 3) input-resolution ``matrix`` and an optional flip to a raw sample.

    Returns a :class:`~dekr.data.types.WarpedSample`: ``image`` uint8 (S, S, 3), ``keypoints`` (N, K, 3) in OUTPUT pixels (float32, or
    float64 when the sample's are, as from the official reader), ``areas`` (N,) unchanged
    (original pixels², the small-person rule of the targets uses them as the official code does,
    before augmentation), ``valid_mask`` bool (S/stride, S/stride) and ``image_id``. With ``official`` the flip mirrors labels and mask at output resolution
    (``S/stride − 1 − x``, official transforms.py:54-74) and ``official_centers`` (N, 2), output
    pixels, and ``official_areas`` (N,), input pixels², both float64, are added
    (:func:`official_people`).
    """
    out_size = input_size // stride
    kps = np.array(sample["keypoints"], dtype=np.float64).reshape(-1, len(flip_index), 3)
    mat = np.asarray(matrix, dtype=np.float64)
    to_out = np.array([[1.0 / stride, 0.0, 0.0], [0.0, 1.0 / stride, 0.0]])
    label_mat = compose(to_out, mat)  # original pixels -> output pixels
    valid = (~np.asarray(sample["ignore_mask"], dtype=bool)).astype(np.uint8) * 255
    warped = cv2.warpAffine(sample["image"], mat, (input_size, input_size),
                            flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))  # fmt: skip
    if flip:  # mirroring the warped image = the mirror x' = S - 1 - x composed into the matrix
        warped = np.ascontiguousarray(warped[:, ::-1])
        if official:  # labels and mask mirrored at output resolution
            valid = _warp_mask(valid, label_mat, out_size)[:, ::-1]
            label_mat = compose(flip_matrix(out_size), label_mat)
        else:
            label_mat = compose(to_out, compose(flip_matrix(input_size), mat))
            valid = _warp_mask(valid, label_mat, out_size)
    else:
        valid = _warp_mask(valid, label_mat, out_size)
    out_kps = kps.copy()
    out_kps[..., :2] = warp_points(kps[..., :2], label_mat)
    if flip:
        out_kps = out_kps[:, list(flip_index)]
    out: WarpedSample = {
        "image": warped,
        "keypoints": out_kps.astype(np.result_type(sample["keypoints"], np.float32)),
        "areas": np.asarray(sample["areas"], dtype=np.float32),
        "valid_mask": valid > 127,  # official threshold 0.5 after the bilinear warp
        "image_id": sample["image_id"],
    }
    if official:
        out["official_centers"], out["official_areas"] = official_people(kps, label_mat, stride)
    return out


def _warp_mask(valid: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(valid, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def official_people(
    keypoints: np.ndarray, label_matrix: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centres and "areas" of the official target rules (COCOKeypoints.py:74-98), warped.

    Both are defined on the raw keypoints (N, K, 3) in ORIGINAL pixels, unlabelled rows included:
    the centre is the sum of ALL K rows over the number of labelled ones, or ``(0, 0)`` (the image
    origin) for a person without labelled keypoints; the area is ``w² + h²`` of the box around
    all K rows and ``(0, 0)`` (the still empty centre row), which is ``max_x² + max_y²`` for
    people with non-negative coordinates. The centre is moved by ``label_matrix`` (original ->
    output pixels, flip included); the area is scaled by the squared input-resolution zoom
    (``final_scale``, transforms.py:174-178).

    Returns:
        ``centers`` (N, 2) in output pixels and ``areas`` (N,) in input pixels².
    """
    kps = np.asarray(keypoints, dtype=np.float64)
    n_lab = (kps[..., 2] != 0).sum(-1)
    centers = np.where(
        n_lab[:, None] > 0, kps[..., :2].sum(-2) / np.maximum(n_lab, 1)[:, None], 0.0
    )
    lo = np.minimum(kps[..., :2].min(-2, initial=np.inf), 0.0)
    hi = np.maximum(kps[..., :2].max(-2, initial=-np.inf), 0.0)
    zoom2 = abs(np.linalg.det(label_matrix[:, :2])) * stride**2
    return warp_points(centers, label_matrix), ((hi - lo) ** 2).sum(-1) * zoom2


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
