"""COCO-format keypoint datasets (COCO, CrowdPose, any K) read through pycocotools.

A sample is the raw dict of docs/architecture.md, :class:`~dekr.data.types.RawSample`: ``image``
uint8 (H, W, 3) RGB, ``keypoints`` float32 (N, K, 3), ``areas`` float32 (N,), ``ignore_mask`` bool
(H, W) and ``image_id`` (the id in the JSON). Behaviour (DEKR_REFERENCE.md §3.1-3.3, COCOKeypoints.py):

* People are the non-crowd annotations with at least one labelled keypoint (v > 0; CrowdPose's
  ``num_keypoints`` counts only v = 2, so the field itself is not trusted).
* ``official=True`` (recipe ``targets.official``, training split) reads as the official reader
  does, for the official target rules: non-crowd annotations without labelled keypoints are
  people too (all v = 0; they stay in the ignore mask; the official targets give them a centre at
  the image origin), and keypoints stay float64 as parsed from the JSON (the official overlap rule
  compares a float32 area map with float64 areas, so float32 coordinates change who wins at some
  pixels).
* The ignore mask is the union of crowd regions and of non-crowd annotations without labelled
  keypoints (their segmentation, or their bbox when there is none, e.g. CrowdPose).
* Labelled keypoints outside ``[0, W) × [0, H)`` are kept as labelled, as the official reader
  does: they still say where the person is, so they count for the centre (the mean of the
  labelled keypoints) and the person's size, and a person partly outside the image keeps its
  centre where the body is. The targets skip every keypoint that falls outside the warped output
  map, and the valid mask ignores the heatmap loss outside the original image, so no peak is
  trained on the black border. They are counted in ``num_outside_keypoints`` (keypoints exactly on
  the right/bottom edge, ``x = W``, are common rounding and counted too).
* Areas follow :func:`dekr.evaluation.annotation_area`, the evaluator's rule too: ``area``;
  where missing (CrowdPose) the bbox w·h; without a bbox the labelled keypoints' box.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from dekr.data.types import RawSample
from dekr.evaluation import annotation_area
from dekr.keypoints import KeypointSpec

__all__ = ["COCOKeypoints", "read_image"]


def read_image(path: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) image; FileNotFoundError / OSError naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot decode image file: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _load_coco(path: str) -> COCO:
    """pycocotools ``COCO`` of a JSON file; ValueError naming ``path`` when it is not one."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON (truncated or malformed?): {err}") from None
    except (AssertionError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path}: not a COCO annotation file (a JSON object with 'images', 'annotations' "
            f"and 'categories' lists expected): {type(err).__name__}: {err}"
        ) from None


class COCOKeypoints:
    """Map-style dataset over a COCO-format keypoint JSON.

    Args:
        annotation_file: COCO-format JSON with ``images``, ``annotations``, ``categories``.
        image_dir: folder that ``file_name`` is relative to.
        spec: the keypoint set; categories whose keypoint list has another length are dropped.
        transform: optional callable applied to the raw sample dict.
        drop_images_without_annotations: keep only images with >= 1 annotation of any kind
            (crowd included), as the official training list does (COCOKeypoints.py:37-42).
        official: read people and keypoint precision as the official reader does (module
            docstring): keypoints float64, people without labelled keypoints included.
    """

    def __init__(
        self,
        annotation_file: str,
        image_dir: str,
        spec: KeypointSpec,
        *,
        transform: Callable[[RawSample], Any] | None = None,
        drop_images_without_annotations: bool = False,
        official: bool = False,
    ) -> None:
        if not os.path.isfile(annotation_file):
            raise FileNotFoundError(f"annotation file not found: {annotation_file}")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        self.annotation_file = str(annotation_file)
        self.image_dir = str(image_dir)
        self.spec = spec
        self.transform = transform
        self.official = bool(official)
        self.coco = _load_coco(self.annotation_file)
        self.category_ids = self._keypoint_categories()
        self.image_ids: list[int] = sorted(self.coco.getImgIds())
        self._people: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ignored: dict[int, list[dict[str, Any]]] = {}
        self.num_outside_keypoints = 0
        for img_id in self.image_ids:
            self._index_image(img_id)
        if drop_images_without_annotations:
            self.image_ids = [
                i for i in self.image_ids if len(self._people[i][1]) or self._ignored[i]
            ]

    def _keypoint_categories(self) -> list[int]:
        k = self.spec.num_keypoints
        cats = self.coco.loadCats(self.coco.getCatIds())
        found = {c["id"]: len(c.get("keypoints") or []) for c in cats}
        ids = [cid for cid, n in found.items() if n == k]
        if not ids:
            raise ValueError(
                f"{self.annotation_file}: no category has {k} keypoints as the keypoint spec "
                f"'{self.spec.name}' expects; keypoint counts per category id: {found}"
            )
        return sorted(ids)

    def _keypoints_of(self, ann: dict[str, Any], width: int, height: int) -> np.ndarray:
        k = self.spec.num_keypoints
        raw = np.asarray(ann.get("keypoints") or np.zeros(3 * k), dtype=np.float64)
        if raw.size != 3 * k:
            raise ValueError(
                f"{self.annotation_file}: annotation id {ann.get('id')} has {raw.size} keypoint "
                f"numbers, expected {3 * k} (K={k}, spec '{self.spec.name}')"
            )
        kps = raw.reshape(k, 3)
        if not np.isfinite(kps).all():
            raise ValueError(
                f"{self.annotation_file}: annotation id {ann.get('id')} has NaN or infinite "
                "keypoint values"
            )
        x, y = kps[:, 0], kps[:, 1]
        outside = (kps[:, 2] > 0) & ((x < 0) | (y < 0) | (x >= width) | (y >= height))
        self.num_outside_keypoints += int(outside.sum())  # kept as labelled (module docstring)
        return kps if self.official else kps.astype(np.float32)

    def _index_image(self, img_id: int) -> None:
        info = self.coco.imgs[img_id]
        ann_ids = self.coco.getAnnIds(imgIds=img_id, catIds=self.category_ids, iscrowd=None)
        kps_list, areas, ignored = [], [], []
        for ann in self.coco.loadAnns(ann_ids):
            kps = self._keypoints_of(ann, info["width"], info["height"])
            crowd = bool(ann.get("iscrowd", 0))
            if crowd or not (kps[:, 2] > 0).any():
                ignored.append(ann)
                if crowd or not self.official:
                    continue
            kps_list.append(kps)
            areas.append(annotation_area(ann))
        k = self.spec.num_keypoints
        dtype = np.float64 if self.official else np.float32
        kps_arr = np.stack(kps_list) if kps_list else np.zeros((0, k, 3), dtype)
        self._people[img_id] = (kps_arr, np.asarray(areas, dtype=np.float32))
        self._ignored[img_id] = ignored

    def ignore_mask(self, img_id: int) -> np.ndarray:
        """bool (H, W): crowd regions and people without labelled keypoints."""
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        mask = np.zeros((h, w), dtype=bool)
        for ann in self._ignored[img_id]:
            segm = ann.get("segmentation")
            if segm:
                if isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
                    rle = dict(segm)  # already a compressed RLE
                    if isinstance(rle["counts"], str):
                        rle["counts"] = rle["counts"].encode("ascii")
                else:  # polygons or an uncompressed RLE
                    rles = mask_utils.frPyObjects(segm, h, w)
                    rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
                with warnings.catch_warnings():  # pycocotools vs numpy 2 copy= keyword
                    warnings.simplefilter("ignore", DeprecationWarning)
                    mask |= mask_utils.decode(rle).astype(bool)
            elif ann.get("bbox"):
                x0, y0, bw, bh = ann["bbox"]
                x1, y1 = int(np.ceil(x0 + bw)), int(np.ceil(y0 + bh))
                mask[max(int(y0), 0) : max(y1, 0), max(int(x0), 0) : max(x1, 0)] = True
        return mask

    def load_image(self, img_id: int) -> np.ndarray:
        """RGB uint8 image of ``img_id``; the single place to add a skip/replace policy."""
        info = self.coco.imgs[img_id]
        path = os.path.join(self.image_dir, info["file_name"])
        image = read_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} but "
                f"{self.annotation_file} says {info['width']}x{info['height']}"
            )
        return image

    def raw_sample(self, index: int) -> RawSample:
        """The raw sample dict of image ``self.image_ids[index]`` (no transform)."""
        img_id = self.image_ids[index]
        kps, areas = self._people[img_id]
        return {
            "image": self.load_image(img_id),
            "keypoints": kps.copy(),
            "areas": areas.copy(),
            "ignore_mask": self.ignore_mask(img_id),
            "image_id": int(img_id),
        }

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Any:
        """The raw sample of ``index``, or what ``transform`` makes of it."""
        sample = self.raw_sample(index)
        return self.transform(sample) if self.transform is not None else sample
