"""``KeypointAP``: validation predictions and ground truth gathered across processes (torchmetrics).

Each process adds the samples it validated; ``compute()`` concatenates the states of all processes
(torchmetrics pads and trims uneven shards itself) and evaluates OKS AP with
:class:`~dekr.evaluation.COCOEvaluator`. Every image counts once: a distributed sampler repeats
samples to even out the shards, and a repeated image keeps only the records of one of its
occurrences (the first by ``(process token, sample number)``, never a mix of two).

Ground truth is either given (a pycocotools ``COCO`` of the validation split, crowd regions and
people without keypoints included: the DataModule's :meth:`val_ground_truth`) and never modified, or
built from the samples' own keypoints and areas.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from dekr.evaluation import COCOEvaluator
from dekr.keypoints import KeypointSpec

__all__ = ["KeypointAP"]


def _cat(state: Any) -> Tensor:
    """A concatenated list state (before sync) or an already concatenated tensor (after)."""
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if len(state) else torch.zeros(0)


class KeypointAP(Metric):
    """OKS keypoint AP of the validated images of all processes.

    Args:
        spec: the keypoint set (its sigmas, K).
        ground_truth: the split's pycocotools ``COCO`` (copied before the evaluator fills missing
            fields, never modified); ``None``: built from the samples given to :meth:`update`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, spec: KeypointSpec, ground_truth: Optional[Any] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec
        self.ground_truth = ground_truth
        width = 3 * spec.num_keypoints
        # one row per sample: image id, height, width, process token, sample number
        self.add_state("samples", default=[], dist_reduce_fx="cat")
        # one row per predicted / true person: its sample's row key and the values
        self.add_state("pred_owner", default=[], dist_reduce_fx="cat")
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("gt_owner", default=[], dist_reduce_fx="cat")
        self.add_state("gts", default=[], dist_reduce_fx="cat")
        self._width = width
        # a random token per process (not from the seeded generators, which agree across ranks)
        self._token = uuid.uuid4().int >> 66
        self._count = 0
        self.last_evaluator: Optional[COCOEvaluator] = None

    def update(
        self,
        image_ids: Sequence[int],
        predictions: Sequence[dict[str, Any]],
        ground_truths: Sequence[dict[str, Any]],
    ) -> None:
        """Add samples: ``predictions`` with ``keypoints`` (N, K, 3) and ``scores`` (N,);
        ``ground_truths`` with ``keypoints`` (M, K, 3), ``areas`` (M,), ``height``, ``width``."""
        k = self.spec.num_keypoints
        for image_id, pred, truth in zip(image_ids, predictions, ground_truths):
            number = self._count
            self._count += 1
            key = torch.tensor([[self._token, number]], dtype=torch.int64)
            self.samples.append(
                torch.tensor(
                    [[int(image_id), int(truth["height"]), int(truth["width"]), *key[0].tolist()]],
                    dtype=torch.int64,
                    device=self.device,
                )
            )
            kp = np.asarray(pred["keypoints"], np.float64).reshape(-1, 3 * k)
            sc = np.asarray(pred["scores"], np.float64).reshape(-1, 1)
            self.preds.append(torch.from_numpy(np.concatenate([kp, sc], 1)).to(self.device))
            self.pred_owner.append(key.expand(len(kp), 2).to(self.device))
            gk = np.asarray(truth["keypoints"], np.float64).reshape(-1, 3 * k)
            ga = np.asarray(truth["areas"], np.float64).reshape(-1, 1)
            self.gts.append(torch.from_numpy(np.concatenate([gk, ga], 1)).to(self.device))
            self.gt_owner.append(key.expand(len(gk), 2).to(self.device))

    def _chosen_samples(self) -> list[list[int]]:
        """Sample rows ``[image id, h, w, token, number]``, one per image: its first occurrence."""
        samples = _cat(self.samples).reshape(-1, 5).cpu().tolist()
        chosen: dict[int, list[int]] = {}
        for row in samples:
            if row[0] not in chosen or row[3:] < chosen[row[0]][3:]:
                chosen[row[0]] = row
        return [chosen[i] for i in sorted(chosen)]

    @staticmethod
    def _by_owner(owner: Any, values: Any, width: int) -> dict[tuple[int, int], np.ndarray]:
        own = _cat(owner).reshape(-1, 2).cpu().tolist()
        vals = _cat(values).reshape(-1, width).cpu().numpy()
        out: dict[tuple[int, int], list[np.ndarray]] = {}
        for key, row in zip(own, vals):
            out.setdefault((key[0], key[1]), []).append(row)
        return {key: np.stack(rows) for key, rows in out.items()}

    def evaluator(self) -> COCOEvaluator:
        """A :class:`COCOEvaluator` holding every image once (the states of all processes once
        synced, e.g. inside :meth:`compute`)."""
        k = self.spec.num_keypoints
        preds = self._by_owner(self.pred_owner, self.preds, 3 * k + 1)
        gts = self._by_owner(self.gt_owner, self.gts, 3 * k + 1)
        empty = np.zeros((0, 3 * k + 1))
        evaluator = COCOEvaluator(self.spec, coco_gt=self.ground_truth)
        for image_id, h, w, token, number in self._chosen_samples():
            if self.ground_truth is None:
                g = gts.get((token, number), empty)
                evaluator.add_ground_truth(
                    image_id, g[:, : 3 * k].reshape(-1, k, 3), g[:, 3 * k], width=w, height=h
                )
            p = preds.get((token, number), empty)
            evaluator.process(
                [image_id], [{"keypoints": p[:, : 3 * k].reshape(-1, k, 3), "scores": p[:, 3 * k]}]
            )
        return evaluator

    def compute(self) -> dict[str, float]:
        """Metrics of :meth:`COCOEvaluator.evaluate` over all processes' images (its evaluator
        stays in :attr:`last_evaluator`, for the table and the results file)."""
        evaluator = self.last_evaluator = self.evaluator()
        return evaluator.evaluate() if evaluator.image_ids else {"AP": 0.0}
