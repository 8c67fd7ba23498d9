"""The package's size convention and the typed dicts of the data pipeline.

Sizes are ``(h, w)``: rows first, like numpy shapes and torch maps (docs/architecture.md). A pair
that means a size is a :class:`Size`, or any ``(h, w)`` sequence that :func:`as_size` turns into
one; a single int is a square. Points are the other way round, ``(x, y)``: a size is not a point.

The dicts that flow from a dataset to the training step, in order:

* :class:`RawSample`: what a dataset returns (:class:`dekr.data.coco.COCOKeypoints`, or any
  ``Dataset`` of these dicts); validation batches are lists of them;
* :class:`WarpedSample`: a raw sample after the training warp
  (:func:`dekr.data.transforms.warp_sample`), keypoints in output pixels;
* :class:`TrainSample`: what :class:`dekr.data.datamodule.TrainSampleTransform` returns, in one of
  two layouts: with the target maps (:data:`TARGET_MAP_KEYS`), or, when the targets are built on
  the training device, with what they are built from (:data:`DEVICE_TARGET_KEYS`);
* :class:`TrainBatch`: collated training samples (:func:`dekr.data.datamodule.collate_train`);
  :func:`dekr.data.datamodule.add_device_targets` adds the maps to the second layout;
* :class:`TargetMaps` / :class:`BatchTargetMaps`: what :func:`dekr.targets.encode_targets` /
  :func:`dekr.targets.encode_targets_batch` return.

The annotations declare the dtypes: ``NDArray[np.float32]`` for numpy arrays and
``Annotated[Tensor, "float32"]`` for tensors (the name of the torch dtype); shapes are in the
comments (N people, K keypoints, S the square input side, h × w the output maps, S / stride).
``tests/test_samples.py`` checks the samples against these declarations.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, NamedTuple, TypedDict, Union

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "Size",
    "as_size",
    "RawSample",
    "WarpedSample",
    "TrainSample",
    "TrainBatch",
    "TargetMaps",
    "BatchTargetMaps",
    "TARGET_MAP_KEYS",
    "DEVICE_TARGET_KEYS",
    "OFFICIAL_TARGET_KEYS",
]


class Size(NamedTuple):
    """A size in pixels, rows first: ``Size(h, w)`` (``Size(h=480, w=640)`` for 640 × 480)."""

    h: int
    w: int


def as_size(value: Union[int, Sequence[int]], name: str = "size") -> Size:
    """:class:`Size` of a square side ``n`` or of an ``(h, w)`` pair (a :class:`Size` included).

    ``name`` is the argument's name in the error message; ValueError for anything but one or two
    positive integers.
    """
    items = [value] * 2 if isinstance(value, numbers.Integral) else list(value)
    if len(items) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair of them, got {value!r}")
    return Size(int(items[0]), int(items[1]))


class RawSample(TypedDict):
    """A dataset item: one image and its people in image pixels (docs/architecture.md)."""

    image: NDArray[np.uint8]  # (H, W, 3) RGB
    # (N, K, 3) x, y, v; float64 from the reader's official=True
    keypoints: Union[NDArray[np.float32], NDArray[np.float64]]
    areas: NDArray[np.float32]  # (N,) annotation area, image pixels² (dekr.evaluation.annotation_area)
    ignore_mask: NDArray[np.bool_]  # (H, W) True where the loss ignores the image
    image_id: int  # the id in the COCO JSON


class _WarpedSample(TypedDict):
    image: NDArray[np.uint8]  # (S, S, 3) RGB, the network input before normalisation
    # (N, K, 3) in OUTPUT pixels; the raw sample's float dtype
    keypoints: Union[NDArray[np.float32], NDArray[np.float64]]
    areas: NDArray[np.float32]  # (N,) unchanged: original image pixels²
    valid_mask: NDArray[np.bool_]  # (h, w) True where the loss counts
    image_id: int


class WarpedSample(_WarpedSample, total=False):
    """A raw sample after the training warp; ``official_*`` only with ``official=True``."""

    official_centers: NDArray[np.float64]  # (N, 2) output pixels
    official_areas: NDArray[np.float64]  # (N,) input pixels²


class _TrainSample(TypedDict):
    image: Annotated[Tensor, "float32"]  # (3, S, S) normalised RGB
    image_id: int


class TrainSample(_TrainSample, total=False):
    """A training sample: ``image``, ``image_id`` and either the four target maps
    (:data:`TARGET_MAP_KEYS`) or what they are built from on the device
    (:data:`DEVICE_TARGET_KEYS`, and :data:`OFFICIAL_TARGET_KEYS` under the official rules)."""

    heatmaps: Annotated[Tensor, "float32"]  # (K+1, h, w), the centre last
    heatmap_weights: Annotated[Tensor, "float32"]  # (K+1, h, w)
    offsets: Annotated[Tensor, "float32"]  # (2K, h, w), channel 2k x, 2k+1 y
    offset_weights: Annotated[Tensor, "float32"]  # (2K, h, w)
    keypoints: Annotated[Tensor, "float32", "float64"]  # (N, K, 3) output pixels
    areas: Annotated[Tensor, "float32"]  # (N,) original image pixels²
    valid_mask: Annotated[Tensor, "bool"]  # (h, w)
    official_centers: Annotated[Tensor, "float64"]  # (N, 2) output pixels
    official_areas: Annotated[Tensor, "float64"]  # (N,) input pixels²


class _TrainBatch(TypedDict):
    image: Annotated[Tensor, "float32"]  # (B, 3, S, S)
    image_id: Annotated[Tensor, "int64"]  # (B,)


class TrainBatch(_TrainBatch, total=False):
    """Collated training samples: every key of :class:`TrainSample` with a batch axis first.

    People are padded to the batch's largest N with v = 0 and area −1 (keypoints become float32);
    after :func:`dekr.data.datamodule.add_device_targets` a batch of the device layout also has
    the four maps.
    """

    heatmaps: Annotated[Tensor, "float32"]  # (B, K+1, h, w)
    heatmap_weights: Annotated[Tensor, "float32"]  # (B, K+1, h, w)
    offsets: Annotated[Tensor, "float32"]  # (B, 2K, h, w)
    offset_weights: Annotated[Tensor, "float32"]  # (B, 2K, h, w)
    keypoints: Annotated[Tensor, "float32"]  # (B, N, K, 3)
    areas: Annotated[Tensor, "float32"]  # (B, N)
    valid_mask: Annotated[Tensor, "bool"]  # (B, h, w)
    official_centers: Annotated[Tensor, "float64"]  # (B, N, 2)
    official_areas: Annotated[Tensor, "float64"]  # (B, N)


class TargetMaps(TypedDict):
    """The training targets of one sample (:func:`dekr.targets.encode_targets`)."""

    heatmaps: NDArray[np.float32]  # (K+1, h, w)
    heatmap_weights: NDArray[np.float32]  # (K+1, h, w)
    offsets: NDArray[np.float32]  # (2K, h, w)
    offset_weights: NDArray[np.float32]  # (2K, h, w)


class BatchTargetMaps(TypedDict):
    """The training targets of a batch (:func:`dekr.targets.encode_targets_batch`), in the dtype
    of its keypoints (float32 from :func:`dekr.data.datamodule.collate_train`)."""

    heatmaps: Tensor  # (B, K+1, h, w)
    heatmap_weights: Tensor  # (B, K+1, h, w)
    offsets: Tensor  # (B, 2K, h, w)
    offset_weights: Tensor  # (B, 2K, h, w)


TARGET_MAP_KEYS = ("heatmaps", "heatmap_weights", "offsets", "offset_weights")
DEVICE_TARGET_KEYS = ("keypoints", "areas", "valid_mask")
OFFICIAL_TARGET_KEYS = ("official_centers", "official_areas")
