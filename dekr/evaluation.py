"""Keypoint AP with the spec's OKS sigmas (detectron2-style evaluator), under the dataset's rules.

Two rule sets, chosen from the keypoint spec (:func:`evaluation_rules`):

* ``"coco"`` (every spec but CrowdPose's): pycocotools ``keypoints``. OKS scale = the annotation's
  area by :func:`annotation_area`, the reader's rule too (``area``; where missing the ``bbox``
  w·h, then the labelled keypoints' box); AP, AP50, AP75, APM, APL, AR,
  AR50, AR75, ARM, ARL.
* ``"crowdpose"`` (the CrowdPose keypoint set): the CrowdPose benchmark's rules (crowdposetools,
  xtcocotools ``keypoints_crowd`` with ``use_area=False``), computed by faster-coco-eval in that
  mode. OKS scale = 0.53 · w · h of the ground-truth ``bbox`` (the ``area`` field is not used; where
  ``bbox`` is missing it is the labelled keypoints' box); no area ranges; AP, AP50, AP75, AR, AR50,
  AR75 and, when every evaluated image carries ``crowdIndex``, AP on its easy (crowdIndex < 0.2),
  medium (0.2 <= crowdIndex < 0.8) and hard (>= 0.8) images (APE, APM_crowd, APH).

``COCOEvaluator.process`` keeps one entry per image id, so repeated images (the distributed
sampler pads the last batch by repeating samples; gathered predictions of all ranks may be fed
again) are never counted twice. Its inputs and :meth:`COCOEvaluator.state` are plain lists, easy to
all-gather. Without a COCO JSON, ground truth is built in memory from samples
(:meth:`COCOEvaluator.add_ground_truth`). Only the images with predictions are evaluated (all of
them in a full validation run, as the official tools do).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import faster_coco_eval
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dekr.keypoints import CROWDPOSE_KEYPOINTS, KeypointSpec

__all__ = [
    "COCOEvaluator",
    "CROWD_INDEX_THRESHOLDS",
    "RULES",
    "evaluation_rules",
    "format_table",
    "keypoint_box_area",
    "annotation_area",
]

_STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
_CROWD_STAT_NAMES = ("AP", "AP50", "AP75", "AR", "AR50", "AR75")
_CROWD_SPLIT_NAMES = ("APE", "APM_crowd", "APH")
# crowdposetools' COCOeval.summarize calls get_type_result(first=0.2, second=0.8): easy =
# crowdIndex < 0.2, medium = crowdIndex < 0.8, hard = the rest (faster-coco-eval's summarize too).
CROWD_INDEX_THRESHOLDS = (0.2, 0.8)

RULES = {  # what the table's first line says about the numbers
    "coco": "COCO rules (pycocotools keypoints): OKS scale = annotation area; area ranges M, L",
    "crowdpose": (
        "CrowdPose benchmark rules (faster-coco-eval keypoints_crowd, use_area=False): OKS scale = "
        "0.53 * GT bbox w*h; easy / medium / hard = crowdIndex < {0} / < {1} / >= {1}"
    ).format(*CROWD_INDEX_THRESHOLDS),
}


def evaluation_rules(spec: KeypointSpec) -> str:
    """``"crowdpose"`` for the CrowdPose keypoint set (its 14 names, in order), else ``"coco"``."""
    return "crowdpose" if tuple(spec.names) == CROWDPOSE_KEYPOINTS.names else "coco"


def keypoint_box_area(keypoints: np.ndarray) -> float:
    """Area of the box of the labelled keypoints (K, 3); 0 without any."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    xy = kp[kp[:, 2] > 0, :2]
    if len(xy) == 0:
        return 0.0
    w, h = xy.max(0) - xy.min(0)
    return float(w * h)


def annotation_area(ann: dict[str, Any]) -> float:
    """The area of a COCO annotation, the one rule of the reader and the evaluator: its
    ``area``; where missing (CrowdPose) the ``bbox`` w·h; without a bbox the box of the labelled
    keypoints; 0 without any of them."""
    if ann.get("area") is not None:
        return float(ann["area"])
    box = ann.get("bbox")
    if box is not None and len(box) == 4:
        return float(box[2]) * float(box[3])
    return keypoint_box_area(np.asarray(ann.get("keypoints") or [], dtype=np.float64))


def _fill_missing(dataset: dict[str, Any]) -> None:
    """Give annotations without ``area`` / ``bbox`` / ``num_keypoints`` keypoint-derived ones."""
    for ann in dataset.get("annotations", []):
        kp = np.asarray(ann.get("keypoints") or [], dtype=np.float64).reshape(-1, 3)
        if ann.get("num_keypoints") is None:
            ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
        if ann.get("area") is None:
            ann["area"] = annotation_area(ann)
        if ann.get("bbox") is None:
            xy = kp[kp[:, 2] > 0, :2]
            lo, hi = (xy.min(0), xy.max(0)) if len(xy) else (np.zeros(2), np.zeros(2))
            ann["bbox"] = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
        if ann.get("iscrowd") is None:
            ann["iscrowd"] = 0
        if ann.get("category_id") is None:
            ann["category_id"] = 1


def _needs_fill(dataset: dict[str, Any]) -> bool:
    keys = ("num_keypoints", "area", "bbox", "iscrowd", "category_id")
    return any(ann.get(key) is None for ann in dataset.get("annotations", []) for key in keys)


def _quiet_coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def format_table(
    metrics: dict[str, float], rules: Optional[str] = None, ap_line: bool = True
) -> str:
    """Two-row table of the metrics, ending with a line ``AP <value>`` (unless ``ap_line`` is
    false: the commands print that line once, as their last).

    With ``rules`` (a key of :data:`RULES`) a first line names the rules the numbers follow.
    """
    known = _STAT_NAMES + _CROWD_SPLIT_NAMES
    names = [n for n in known if n in metrics]
    head = "| " + " | ".join(f"{n:>9}" for n in names) + " |"
    rule = "|" + "|".join("-" * 11 for _ in names) + "|"
    row = "| " + " | ".join(f"{metrics[n]:9.4f}" for n in names) + " |"
    lines = [head, rule, row] + [f"AP {metrics.get('AP', 0.0):.4f}"] * ap_line
    if rules is not None:
        lines.insert(0, f"Keypoint AP under {RULES[rules]}")
    return "\n".join(lines)


def _silent(*args: Any, **kwargs: Any) -> None:
    pass


class COCOEvaluator:
    """Collect predictions per image and evaluate OKS AP (pycocotools, or the CrowdPose rules).

    Args:
        spec: keypoint set; its sigmas become ``kpt_oks_sigmas``.
        coco_gt: ground truth; ``None`` to build it from :meth:`add_ground_truth` calls.
        category_id: the person category of results.
        rules: ``"coco"`` or ``"crowdpose"`` (see the module docstring); default
            :func:`evaluation_rules` of ``spec``.
    """

    def __init__(
        self,
        spec: KeypointSpec,
        coco_gt: Optional[COCO] = None,
        category_id: int = 1,
        rules: Optional[str] = None,
    ):
        self.spec = spec
        self.category_id = category_id
        self.rules = evaluation_rules(spec) if rules is None else rules
        if self.rules not in RULES:
            raise ValueError(
                f"unknown evaluation rules {self.rules!r}; expected one of {list(RULES)}"
            )
        if coco_gt is not None and _needs_fill(coco_gt.dataset):
            dataset = copy.deepcopy(coco_gt.dataset)  # the caller's object stays as it is
            _fill_missing(dataset)
            coco_gt = _quiet_coco(dataset)
        self.coco_gt = coco_gt
        self._gt_images: dict[int, dict[str, Any]] = {}
        self._gt_annotations: dict[int, list[dict[str, Any]]] = {}
        self.reset()

    @classmethod
    def from_json(cls, spec: KeypointSpec, path: Union[str, Path]) -> COCOEvaluator:
        """Evaluator on a COCO keypoint JSON (areas filled from keypoints where missing)."""
        dataset = json.loads(Path(path).read_text())
        _fill_missing(dataset)
        return cls(spec, _quiet_coco(dataset))

    def reset(self) -> None:
        """Forget all predictions (ground truth added by samples is kept)."""
        self._predictions: dict[int, list[dict[str, Any]]] = {}

    def add_ground_truth(
        self,
        image_id: int,
        keypoints: np.ndarray,
        areas: Optional[np.ndarray] = None,
        *,
        width: int = 0,
        height: int = 0,
        crowd_index: Optional[float] = None,
    ) -> None:
        """Ground truth of one image from a sample: keypoints (N, K, 3), areas (N,); idempotent."""
        kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, self.spec.num_keypoints, 3)
        image: dict[str, Any] = {"id": int(image_id), "width": int(width), "height": int(height)}
        if crowd_index is not None:
            image["crowdIndex"] = float(crowd_index)
        anns = []
        for i, kp in enumerate(kps):
            area = float(areas[i]) if areas is not None and areas[i] > 0 else keypoint_box_area(kp)
            anns.append({"keypoints": kp.reshape(-1).tolist(), "area": area})
        self._gt_images[int(image_id)] = image
        self._gt_annotations[int(image_id)] = anns

    def _build_gt(self) -> COCO:
        anns, next_id = [], 1
        for image_id, image_anns in sorted(self._gt_annotations.items()):
            for ann in image_anns:
                anns.append({**ann, "image_id": image_id, "id": next_id})
                next_id += 1
        dataset = {
            "images": [self._gt_images[i] for i in sorted(self._gt_images)],
            "annotations": anns,
            "categories": [{"id": self.category_id, "name": "person",
                            "keypoints": list(self.spec.names)}],
        }  # fmt: skip
        _fill_missing(dataset)
        return _quiet_coco(dataset)

    def process(self, image_ids: Sequence[int], predictions: Sequence[dict[str, Any]]) -> None:
        """Add predictions: one dict per image with ``keypoints`` (N, K, 3) and ``scores`` (N,).

        An image id seen before replaces its earlier records, so repeated images count once.
        """
        for image_id, pred in zip(image_ids, predictions):
            kps = np.asarray(pred["keypoints"], dtype=np.float64)
            kps = kps.reshape(-1, self.spec.num_keypoints, 3)
            scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
            self._predictions[int(image_id)] = [
                {
                    "image_id": int(image_id),
                    "category_id": self.category_id,
                    "keypoints": [round(float(v), 3) for v in kp.reshape(-1)],
                    "score": float(np.nan_to_num(s)),
                }
                for kp, s in zip(kps, scores)
            ]

    def state(self) -> list[dict[str, Any]]:
        """All result records (plain lists / numbers), e.g. for an all-gather."""
        return [r for i in sorted(self._predictions) for r in self._predictions[i]]

    @property
    def image_ids(self) -> list[int]:
        """Image ids with predictions, sorted."""
        return sorted(self._predictions)

    def write_results(self, path: Union[str, Path]) -> Path:
        """COCO results JSON of all records."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.state()))
        return path

    def _coco_eval(self, gt: COCO, results: list[dict[str, Any]], img_ids: list[int]) -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(copy.deepcopy(results))
            ev = COCOeval(gt, dt, "keypoints")
            ev.params.kpt_oks_sigmas = np.asarray(self.spec.sigmas, dtype=np.float64)
            ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return np.maximum(ev.stats, 0.0)

    def _crowdpose_eval(
        self, gt: COCO, results: list[dict[str, Any]], img_ids: list[int]
    ) -> dict[str, float]:
        """The CrowdPose benchmark's numbers on ``img_ids`` through faster-coco-eval.

        Its ground truth holds just these images, so its easy/medium/hard split (which reads the
        ground truth's image list) partitions exactly the evaluated images.
        """
        ids = set(img_ids)
        images = [dict(gt.imgs[i]) for i in sorted(ids)]
        dataset = {
            "images": images,
            "annotations": [dict(a) for a in gt.dataset["annotations"] if a["image_id"] in ids],
            "categories": copy.deepcopy(gt.dataset["categories"]),
        }
        fgt = faster_coco_eval.COCO(dataset, print_function=_silent)
        fdt = fgt.loadRes(copy.deepcopy(results))
        ev = faster_coco_eval.COCOeval_faster(
            fgt, fdt, "keypoints_crowd", print_function=_silent,
            kpt_oks_sigmas=list(self.spec.sigmas), use_area=False,
        )  # fmt: skip
        ev.evaluate()
        ev.accumulate()
        max_dets = ev.params.maxDets[-1]  # 20
        # what ev.summarize() prints for keypoints_crowd, in two parts: the overall numbers ...
        values = [
            ev._summarize(ap, iouThr=thr, maxDets=max_dets)
            for ap in (1, 0)
            for thr in (None, 0.5, 0.75)
        ]
        names = _CROWD_STAT_NAMES
        if all("crowdIndex" in im for im in images):  # ... and AP on easy / medium / hard images
            values += ev.get_type_result(*CROWD_INDEX_THRESHOLDS)
            names += _CROWD_SPLIT_NAMES
        return {n: max(float(v), 0.0) for n, v in zip(names, values)}

    def evaluate(self) -> dict[str, float]:
        """Metrics under :attr:`rules`: COCO (AP, AP50, AP75, APM, APL, AR, …) or CrowdPose (AP,
        AP50, AP75, AR, AR50, AR75, and APE / APM_crowd / APH when the images carry crowdIndex)."""
        gt = self.coco_gt if self.coco_gt is not None else self._build_gt()
        results = self.state()
        img_ids = self.image_ids
        if self.rules == "crowdpose":
            if results and img_ids:
                return self._crowdpose_eval(gt, results, img_ids)
            split = bool(img_ids) and all("crowdIndex" in gt.imgs.get(i, {}) for i in img_ids)
            return {n: 0.0 for n in _CROWD_STAT_NAMES + (_CROWD_SPLIT_NAMES if split else ())}
        if not (results and img_ids):
            return {n: 0.0 for n in _STAT_NAMES}
        return dict(zip(_STAT_NAMES, map(float, self._coco_eval(gt, results, img_ids))))

    def summary(self, metrics: Optional[dict[str, float]] = None, ap_line: bool = True) -> str:
        """:func:`format_table` of ``metrics`` (default: :meth:`evaluate`), naming the rules."""
        metrics = self.evaluate() if metrics is None else metrics
        return format_table(metrics, self.rules, ap_line=ap_line)
