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

Storage: the JSON is parsed once at construction and dropped. What training reads is kept in flat
numpy arrays (:class:`CompactAnnotations`): people's keypoints, areas, boxes and annotation ids
indexed by image through an offsets array, each image's ignore mask as one compressed RLE, file
names as one byte buffer. No Python object per annotation survives construction, so DataLoader
workers do not copy pages by touching reference counts. The evaluation ground truth (crowd regions
included) is built on request from the JSON by :meth:`COCOKeypoints.ground_truth`.

Data checks (docs/reliability.md): the file's structure, duplicate image or annotation ids, image
entries without ``file_name`` or a positive size, annotations without an ``id``, a ``bbox`` that is
not 4 finite numbers with non-negative size, keypoints that are not 3·K numbers, NaN or
infinite keypoints, an ``area`` that is negative or not a number: each raises
:class:`AnnotationError` (a ``ValueError``) naming the file and the image or annotation id.
People of area 0 are kept (they get no centre under the small-person rule) and counted in one
warning, as are annotations of images missing from ``images`` (not read) and annotations without
``bbox`` (``bbox`` is optional: such an annotation gets the box of its segmentation, else of its
labelled keypoints, in the stored boxes and in :meth:`COCOKeypoints.ground_truth`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from dekr.data.cache import cached_arrays
from dekr.data.types import RawSample
from dekr.errors import DataError
from dekr.evaluation import annotation_area
from dekr.keypoints import KeypointSpec

__all__ = ["AnnotationError", "COCOKeypoints", "CompactAnnotations", "ImageIds", "read_image"]


CACHE_MIN_BYTES = 16 << 20  # smaller files parse in well under a second
_FORMAT = 3  # bump when the arrays change meaning


def _variant(spec: KeypointSpec, official: bool) -> str:
    return f"coco{_FORMAT}-k{spec.num_keypoints}-{'official' if official else 'default'}"


class AnnotationError(DataError):
    """An annotation file that breaks the COCO format; the message names the file and the id."""


def read_image(path: str) -> np.ndarray:
    """RGB uint8 (H, W, 3) image; FileNotFoundError / OSError naming ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot decode image file: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _quiet_coco(source: Union[str, dict[str, Any]]) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        if isinstance(source, str):
            return COCO(source)
        coco = COCO()
        coco.dataset = source
        coco.createIndex()
        return coco


_NOT_PARSED = object()


def _fast_json(data: bytes) -> Any:
    """``data`` parsed by orjson (a third faster than the json module on a COCO-sized file, to
    the same objects); ``_NOT_PARSED`` where orjson is missing or refuses it (NaN literals,
    integers beyond 64 bits, malformed text), which the json module then reads or explains."""
    try:
        import orjson
    except ImportError:
        return _NOT_PARSED
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _NOT_PARSED


def _read_json(path: str) -> dict[str, Any]:
    """The parsed COCO document; AnnotationError naming ``path`` when it is not one."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        doc = _fast_json(data)
        if doc is _NOT_PARSED:
            doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not valid JSON (truncated or malformed?): {err}") from None
    lists = {key: doc.get(key, []) if isinstance(doc, dict) else None
             for key in ("images", "annotations", "categories")}  # fmt: skip
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in lists.values()):
        got = type(doc).__name__ if not isinstance(doc, dict) else {
            k: type(v).__name__ for k, v in lists.items()}  # fmt: skip
        raise AnnotationError(
            f"{path}: not a COCO annotation file (a JSON object with 'images', 'annotations' "
            f"and 'categories' lists expected; got {got})"
        )
    return doc


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _id_like(value: Any) -> bool:
    return _number(value) or isinstance(value, (np.integer, np.floating))


def _rectangle_rle(bbox: Sequence[float], h: int, w: int) -> dict[str, Any]:
    """Compressed RLE of the bbox rectangle, rounded outwards, clipped to the image."""
    x0, y0, bw, bh = bbox
    r0, c0 = max(int(y0), 0), max(int(x0), 0)
    r1, c1 = min(max(int(math.ceil(y0 + bh)), 0), h), min(max(int(math.ceil(x0 + bw)), 0), w)
    if r1 <= r0 or c1 <= c0:
        counts = [h * w]
    else:  # column-major runs: zeros, then per column ones / zeros
        rows = r1 - r0
        counts = [c0 * h + r0]
        for _ in range(c0, c1 - 1):
            counts += [rows, h - rows]
        counts += [rows, (w - c1) * h + (h - r1)]
    return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)


class ImageIds(Sequence):
    """Read-only sorted image ids over an int64 array (``list``-like: ``index``, ``in``)."""

    def __init__(self, ids: np.ndarray) -> None:
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [int(i) for i in self._ids[index]]
        return int(self._ids[index])

    def __iter__(self) -> Iterator[int]:
        return (int(i) for i in self._ids)

    def __contains__(self, value: object) -> bool:
        return _id_like(value) and self._find(value) >= 0  # type: ignore[arg-type]

    def _find(self, value: float) -> int:
        pos = int(np.searchsorted(self._ids, value))
        return pos if pos < len(self._ids) and self._ids[pos] == value else -1

    def index(self, value: Any, start: int = 0, stop: Any = None) -> int:
        pos = self._find(value) if _id_like(value) else -1
        if pos < 0 or pos < start or (stop is not None and pos >= stop):
            raise ValueError(f"image id {value!r} is not in this dataset")
        return pos

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"ImageIds({self._ids.tolist()!r})"


class CompactAnnotations:
    """The annotations training reads, as flat arrays (``arrays``), built from a COCO JSON.

    Per image i (sorted by id): ``image_ids``, ``heights``, ``widths``, ``annotated`` (any
    annotation of the keypoint categories), file names ``names[name_offsets[i]:name_offsets[i+1]]``
    (UTF-8), people ``person_offsets[i]:person_offsets[i+1]`` into the keypoints (P, K, 3),
    ``areas`` (P,), ``boxes`` (P, 4) and ``person_ids`` (P,), and the ignore mask's compressed RLE
    counts ``ignore_rle[ignore_offsets[i]:ignore_offsets[i+1]]`` (empty: nothing ignored).
    The keypoints are stored without loss as ``keypoint_rows``, ``keypoint_xy`` and
    ``keypoint_v`` (:func:`_pack_keypoints`). ``num_outside_keypoints``, ``num_zero_area`` and ``num_orphans`` are 0-d counts.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    @classmethod
    def from_json(cls, path: str, spec: KeypointSpec, official: bool) -> CompactAnnotations:
        return cls(_build(path, _read_json(path), spec, official))


def _categories(path: str, doc: dict[str, Any], spec: KeypointSpec) -> list[int]:
    k = spec.num_keypoints
    found = {}
    for c in doc["categories"]:
        if not isinstance(c, dict) or "id" not in c:
            raise AnnotationError(f"{path}: a category without an 'id': {str(c)[:80]}")
        found[c["id"]] = len(c.get("keypoints") or [])
    ids = [cid for cid, n in found.items() if n == k]
    if not ids:
        raise AnnotationError(
            f"{path}: no category has {k} keypoints as the keypoint spec "
            f"'{spec.name}' expects; keypoint counts per category id: {found}"
        )
    return sorted(ids)


def _images(path: str, doc: dict[str, Any]) -> dict[Any, tuple[int, int, str]]:
    images: dict[Any, tuple[int, int, str]] = {}
    for n, img in enumerate(doc["images"]):
        if not isinstance(img, dict) or not _number(img.get("id")):
            raise AnnotationError(f"{path}: image entry #{n} has no numeric 'id'")
        iid = img["id"]
        if iid in images:
            raise AnnotationError(f"{path}: image id {iid} appears more than once in 'images'")
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise AnnotationError(f"{path}: image id {iid} has no 'file_name'")
        h, w = img.get("height"), img.get("width")
        if not (_number(h) and _number(w) and h > 0 and w > 0):
            raise AnnotationError(
                f"{path}: image id {iid} needs a positive 'width' and 'height', got {w} x {h}"
            )
        images[iid] = (int(h), int(w), name)
    return images


def _check_annotation(path: str, ann: dict[str, Any], k: int) -> None:
    """The per-annotation checks of the module docstring (keypoints' values are checked later)."""
    aid = ann.get("id")
    box = ann.get("bbox")
    if box is not None and not (
        isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)
        and all(math.isfinite(v) for v in box) and box[2] >= 0 and box[3] >= 0
    ):  # fmt: skip
        raise AnnotationError(
            f"{path}: annotation id {aid} has bbox {str(box)[:60]}; [x, y, width, height] expected "
            "(4 finite numbers, width and height >= 0)"
        )
    if "area" in ann:
        area = ann["area"]
        if not _number(area) or not math.isfinite(area):
            raise AnnotationError(f"{path}: annotation id {aid} has area {area!r}, not a number")
        if area < 0:
            raise AnnotationError(
                f"{path}: annotation id {aid} has a negative area ({area}); expected >= 0"
            )
    kps = ann.get("keypoints")
    if kps and not isinstance(kps, list):
        raise AnnotationError(
            f"{path}: annotation id {aid} has keypoints of type {type(kps).__name__}; a list of "
            f"{3 * k} numbers expected"
        )


def _bad_keypoint_values(path: str, anns: list[dict[str, Any]], k: int) -> None:
    """Raise for the first annotation whose keypoints are not all numbers."""
    for ann in anns:
        for v in ann.get("keypoints") or ():
            if not _number(v):
                raise AnnotationError(
                    f"{path}: annotation id {ann.get('id')} has a keypoint value {v!r}; "
                    f"{3 * k} numbers expected"
                )


def _build(path: str, doc: dict[str, Any], spec: KeypointSpec, official: bool) -> dict:
    k = spec.num_keypoints
    cats = set(_categories(path, doc, spec))
    images = _images(path, doc)
    image_ids = np.asarray(sorted(images), dtype=np.int64)
    row_of = {iid: r for r, iid in enumerate(sorted(images))}
    seen_ids: set[Any] = set()
    kept: list[dict[str, Any]] = []
    rows: list[int] = []
    orphans = 0
    for n, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann:
            raise AnnotationError(f"{path}: annotation #{n} has no 'id'")
        aid = ann["id"]
        if aid in seen_ids:
            raise AnnotationError(f"{path}: annotation id {aid} appears more than once")
        seen_ids.add(aid)
        if ann.get("category_id") not in cats:
            continue
        row = row_of.get(ann.get("image_id"))
        if row is None:
            orphans += 1
            continue
        _check_annotation(path, ann, k)
        kept.append(ann)
        rows.append(row)
    del seen_ids
    zeros = [0.0] * (3 * k)
    flat = [ann.get("keypoints") or zeros for ann in kept]
    for ann, kp in zip(kept, flat):
        if len(kp) != 3 * k:
            raise AnnotationError(
                f"{path}: annotation id {ann.get('id')} has {len(kp)} keypoint "
                f"numbers, expected {3 * k} (K={k}, spec '{spec.name}')"
            )
    try:
        raw = np.array(flat, dtype=None) if flat else np.zeros((0, 3 * k))
    except (ValueError, TypeError):
        raw = np.zeros((0,), dtype=object)
    if raw.dtype.kind not in "iuf" or raw.shape != (len(kept), 3 * k):
        _bad_keypoint_values(path, kept, k)
    kps = raw.astype(np.float64).reshape(-1, k, 3)
    del flat, raw
    finite = np.isfinite(kps).all(axis=(1, 2))
    if not finite.all():
        aid = kept[int(np.argmin(finite))].get("id")
        raise AnnotationError(f"{path}: annotation id {aid} has NaN or infinite keypoint values")
    rows_a = np.asarray(rows, dtype=np.int64)
    heights = np.asarray([images[i][0] for i in image_ids.tolist()], dtype=np.int64)
    widths = np.asarray([images[i][1] for i in image_ids.tolist()], dtype=np.int64)
    labelled = kps[:, :, 2] > 0
    x, y = kps[:, :, 0], kps[:, :, 1]
    w_a, h_a = widths[rows_a][:, None], heights[rows_a][:, None]
    outside = labelled & ((x < 0) | (y < 0) | (x >= w_a) | (y >= h_a))
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in kept], dtype=bool)
    has_label = labelled.any(axis=1)
    person = ~crowd & (has_label | official)
    ignored = crowd | ~has_label
    # outside keypoints are counted on every annotation of the keypoint categories, as before
    num_outside = int(outside.sum())
    areas = np.zeros(len(kept), dtype=np.float64)
    for j in np.flatnonzero(person).tolist():
        areas[j] = annotation_area(kept[j])
    order = np.argsort(rows_a, kind="stable")
    people = order[person[order]]
    person_rows = rows_a[people]
    counts = np.bincount(person_rows, minlength=len(image_ids))
    person_offsets = np.zeros(len(image_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=person_offsets[1:])
    annotated = np.bincount(rows_a, minlength=len(image_ids)) > 0
    regions: dict[int, list[dict[str, Any]]] = {}
    for j in order[ignored[order]].tolist():
        regions.setdefault(rows[j], []).append(kept[j])
    blobs = [b""] * len(image_ids)
    with warnings.catch_warnings():  # pycocotools vs numpy 2 copy= keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        for row, anns in regions.items():
            merged = _ignore_region(path, anns, int(heights[row]), int(widths[row]))
            if merged is not None:
                blobs[row] = merged["counts"]
    ignore_offsets = np.zeros(len(image_ids) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=ignore_offsets[1:])
    names = [images[i][2].encode("utf-8") for i in image_ids.tolist()]
    name_offsets = np.zeros(len(image_ids) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in names], out=name_offsets[1:])
    person_ids = np.asarray([kept[j]["id"] for j in people.tolist()], dtype=np.int64)
    boxes = np.asarray([kept[j].get("bbox") or _keypoint_box(kps[j]) for j in people.tolist()],
                       dtype=np.float32)  # fmt: skip
    no_box = sum(1 for ann in kept if ann.get("bbox") is None)
    return {
        "image_ids": image_ids,
        "heights": heights.astype(np.int32),
        "widths": widths.astype(np.int32),
        "annotated": annotated,
        "names": np.frombuffer(b"".join(names), dtype=np.uint8).copy(),
        "name_offsets": name_offsets,
        "person_offsets": person_offsets,
        **_pack_keypoints(kps[people] if official else kps[people].astype(np.float32)),
        "areas": areas[people].astype(np.float32),
        "boxes": boxes.reshape(-1, 4),
        "person_ids": person_ids,
        "ignore_rle": np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(),
        "ignore_offsets": ignore_offsets,
        "num_outside_keypoints": np.asarray(num_outside, dtype=np.int64),
        "num_zero_area": np.asarray(int((areas[people] == 0).sum()), dtype=np.int64),
        "num_orphans": np.asarray(orphans, dtype=np.int64),
        "num_no_bbox": np.asarray(no_box, dtype=np.int64),
    }


def _pack_keypoints(kps: np.ndarray) -> dict[str, np.ndarray]:
    """(P, K, 3) keypoints stored without loss in fewer bytes: rows that are all zeros (people
    without labelled keypoints, official reader) are not stored (``keypoint_rows`` -1), x, y keep
    their dtype and the visibilities are uint8 when they all are integers 0-255."""
    bits = kps.view(np.uint64 if kps.dtype == np.float64 else np.uint32)
    stored = (bits != 0).any(axis=(1, 2))
    rows = np.full(len(kps), -1, dtype=np.int32)
    rows[stored] = np.arange(int(stored.sum()), dtype=np.int32)
    kept = kps[stored]
    v = kept[..., 2]
    small = v.astype(np.uint8)
    exact = np.array_equal(small.astype(v.dtype).view(bits.dtype), v.view(bits.dtype))
    return {"keypoint_rows": rows, "keypoint_xy": np.ascontiguousarray(kept[..., :2]),
            "keypoint_v": small if exact else np.ascontiguousarray(v)}  # fmt: skip


def _unpack_keypoints(a: dict[str, np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Keypoints (hi - lo, K, 3) of people ``lo:hi`` of :func:`_pack_keypoints`' arrays."""
    rows, xy = a["keypoint_rows"][lo:hi], a["keypoint_xy"]
    out = np.zeros((len(rows), xy.shape[1], 3), dtype=xy.dtype)
    has = rows >= 0
    out[has, :, :2] = xy[rows[has]]
    out[has, :, 2] = a["keypoint_v"][rows[has]]
    return out


def _keypoint_box(kps: np.ndarray) -> list[float]:
    """[x, y, w, h] of the labelled keypoints of (K, 3) ``kps``; zeros when none is labelled."""
    lab = kps[kps[:, 2] > 0, :2]
    if not len(lab):
        return [0.0, 0.0, 0.0, 0.0]
    lo, hi = lab.min(axis=0), lab.max(axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]


def _fill_boxes(doc: dict[str, Any]) -> dict[str, Any]:
    """Give annotations without ``bbox`` the box of their segmentation, else of their labelled
    keypoints (pycocotools' keypoint OKS reads the box of people without visible keypoints)."""
    sizes = {img["id"]: (img["height"], img["width"]) for img in doc["images"]}
    for ann in doc["annotations"]:
        if ann.get("bbox") is not None:
            continue
        rle = None
        if ann.get("segmentation") and ann.get("image_id") in sizes:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                rle = _region("", {**ann, "bbox": None}, *sizes[ann["image_id"]])
        if rle is not None:
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        else:
            kps = np.asarray(ann.get("keypoints") or [0, 0, 0], dtype=np.float64).reshape(-1, 3)
            ann["bbox"] = _keypoint_box(kps)
    return doc


def _region(path: str, ann: dict[str, Any], h: int, w: int) -> dict[str, Any] | None:
    """Compressed RLE of an ignored annotation's region: its segmentation, else its bbox."""
    segm = ann.get("segmentation")
    try:
        if segm:
            if isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
                rle = dict(segm)  # already a compressed RLE
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode("ascii")
                if list(rle.get("size", ())) != [h, w]:
                    raise AnnotationError(
                        f"{path}: annotation id {ann.get('id')} has an RLE of size "
                        f"{rle.get('size')}, but its image is {h} x {w} (height x width)"
                    )
                return rle
            rles = mask_utils.frPyObjects(segm, h, w)  # polygons or an uncompressed RLE
            return mask_utils.merge(rles) if isinstance(rles, list) else rles
    except (TypeError, ValueError, IndexError, OverflowError) as err:
        if isinstance(err, AnnotationError):
            raise
        raise AnnotationError(
            f"{path}: annotation id {ann.get('id')} has a segmentation that is neither polygons "
            f"nor an RLE: {err}"
        ) from None
    if ann.get("bbox"):
        return _rectangle_rle(ann["bbox"], h, w)
    return None


def _polygons(segm: Any) -> bool:
    """Whether ``segm`` is polygons that pycocotools reads as polygons (more than 4 numbers)."""
    return isinstance(segm, list) and bool(segm) and all(
        isinstance(p, list) and len(p) > 4 for p in segm)  # fmt: skip


def _ignore_region(
    path: str, anns: list[dict[str, Any]], h: int, w: int
) -> dict[str, Any] | None:
    """Compressed RLE of the union of the regions of one image's ignored annotations: the
    polygons of all of them rasterised in one call (the union is the same mask as merging them
    one by one), the other regions by :func:`_region`."""
    polys = [p for ann in anns if _polygons(ann.get("segmentation")) for p in ann["segmentation"]]
    try:
        rles = list(mask_utils.frPyObjects(polys, h, w)) if polys else []
        rest = [ann for ann in anns if not _polygons(ann.get("segmentation"))]
    except (TypeError, ValueError, IndexError, OverflowError):  # _region names the annotation
        rles, rest = [], anns
    rles += [rle for ann in rest if (rle := _region(path, ann, h, w)) is not None]
    if not rles:
        return None
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=0)


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
        cache: keep the compact arrays in a cache file (:mod:`dekr.data.cache`: next to the
            JSON or in ``$DEKR_HOME``, keyed by the JSON's size, mtime and hash, built by one
            process per node); ``None`` (default) caches files of at least 16 MiB.
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
        cache: bool | None = None,
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
        self._source_stat = _stat(self.annotation_file)
        if cache is None:
            cache = self._source_stat[0] >= CACHE_MIN_BYTES
        self.cache_status = "uncached"
        if cache:
            arrays, self.cache_status = cached_arrays(
                self.annotation_file, _variant(spec, self.official), self._build_arrays
            )
        else:
            arrays = self._build_arrays()
        self._set_arrays(arrays, drop_images_without_annotations)

    def _build_arrays(self) -> dict[str, np.ndarray]:
        return CompactAnnotations.from_json(self.annotation_file, self.spec, self.official).arrays

    def _set_arrays(self, a: dict[str, np.ndarray], drop: bool) -> None:
        self._a = a
        rows = np.flatnonzero(a["annotated"]) if drop else np.arange(len(a["image_ids"]))
        self._rows = rows.astype(np.int64)
        self.image_ids = ImageIds(a["image_ids"][self._rows])
        self.num_outside_keypoints = int(a["num_outside_keypoints"])
        zero, orphans = int(a["num_zero_area"]), int(a["num_orphans"])
        no_box = int(a["num_no_bbox"])
        if zero or orphans or no_box:
            parts = [f"{zero} people of area 0 kept (no centre, heatmaps trained)"] if zero else []
            if orphans:
                parts.append(f"{orphans} annotations of images not in 'images' not read")
            if no_box:
                parts.append(f"{no_box} annotations without bbox given the box of their "
                             "segmentation or labelled keypoints")  # fmt: skip
            warnings.warn(f"{self.annotation_file}: " + "; ".join(parts), stacklevel=3)

    def _row(self, img_id: int) -> int:
        pos = int(np.searchsorted(self._a["image_ids"], img_id))
        if pos >= len(self._a["image_ids"]) or self._a["image_ids"][pos] != img_id:
            raise KeyError(f"image id {img_id} is not in {self.annotation_file}")
        return pos

    def people(self, img_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, K, 3), a new array, and a view (read-only where stored so) of the areas
        (N,) of ``img_id``."""
        row = self._row(img_id)
        lo, hi = self._a["person_offsets"][row : row + 2]
        return _unpack_keypoints(self._a, int(lo), int(hi)), self._a["areas"][lo:hi]

    def person_ids(self, img_id: int) -> np.ndarray:
        """Annotation ids of the people of ``img_id``, in the order of :meth:`people`."""
        row = self._row(img_id)
        lo, hi = self._a["person_offsets"][row : row + 2]
        return self._a["person_ids"][lo:hi]

    def image_size(self, img_id: int) -> tuple[int, int]:
        """(height, width) of ``img_id`` as the JSON says."""
        row = self._row(img_id)
        return int(self._a["heights"][row]), int(self._a["widths"][row])

    def file_name(self, img_id: int) -> str:
        row = self._row(img_id)
        lo, hi = self._a["name_offsets"][row : row + 2]
        return self._a["names"][lo:hi].tobytes().decode("utf-8")

    def ignore_mask(self, img_id: int) -> np.ndarray:
        """bool (H, W): crowd regions and people without labelled keypoints."""
        row = self._row(img_id)
        h, w = int(self._a["heights"][row]), int(self._a["widths"][row])
        lo, hi = self._a["ignore_offsets"][row : row + 2]
        if hi == lo:
            return np.zeros((h, w), dtype=bool)
        rle = {"size": [h, w], "counts": self._a["ignore_rle"][lo:hi].tobytes()}
        with warnings.catch_warnings():  # pycocotools vs numpy 2 copy= keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)

    def ground_truth(self) -> COCO:
        """A fresh pycocotools ``COCO`` of the annotation file: the evaluation ground truth,
        crowd regions and people without keypoints included (callers may change it freely).

        Built from the JSON on each call (the validation split's file is small); AnnotationError
        when the file changed since this dataset read it, so AP never uses other annotations
        than the samples.
        """
        if _stat(self.annotation_file) != self._source_stat:
            raise AnnotationError(
                f"{self.annotation_file}: changed since the dataset was built; build the dataset "
                "again to evaluate against it"
            )
        return _quiet_coco(_fill_boxes(_read_json(self.annotation_file)))

    def load_image(self, img_id: int) -> np.ndarray:
        """RGB uint8 image of ``img_id``; the single place to add a skip/replace policy."""
        path = os.path.join(self.image_dir, self.file_name(img_id))
        image = read_image(path)
        h, w = self.image_size(img_id)
        if image.shape[:2] != (h, w):
            raise ValueError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} but "
                f"{self.annotation_file} says {w}x{h}"
            )
        return image

    def annotations(self, index: int) -> RawSample:
        """The raw sample of ``index`` without its image (keypoints, areas, mask, id)."""
        img_id = self.image_ids[index]
        kps, areas = self.people(img_id)
        return {  # type: ignore[typeddict-item]
            "keypoints": kps,
            "areas": np.array(areas),
            "ignore_mask": self.ignore_mask(img_id),
            "image_id": int(img_id),
        }

    def raw_sample(self, index: int) -> RawSample:
        """The raw sample dict of image ``self.image_ids[index]`` (no transform)."""
        sample = self.annotations(index)
        return {"image": self.load_image(sample["image_id"]), **sample}  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Any:
        """The raw sample of ``index``, or what ``transform`` makes of it."""
        sample = self.raw_sample(index)
        return self.transform(sample) if self.transform is not None else sample


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
