"""Train the rescoring net on a trained DEKR model's predictions (official RESCORE recipe).

    python tools/train_rescore.py CHECKPOINT --annotations TRAIN.json --images DIR \\
        --output rescore.pth [--epochs 20] [--batch-size 1024] [--lr 1e-3]

Each image's predictions (top ``top_k`` by score, as the official data dump) are matched to the
image's labelled, non-crowd ground truth; the target is the best OKS with any of them (COCO
formula, spec sigmas). Differences from the official dump: every detection appears once (the
official one repeats it for three area ranges), and OKS = 1 targets are kept (officially set to 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from pycocotools.coco import COCO

from dekr.keypoints import KeypointSpec
from dekr.rescore import fit_rescore_net, rescore_features


def oks_matrix(dts: np.ndarray, gts: np.ndarray, areas: np.ndarray, sigmas: Sequence[float]):
    """OKS (D, G) between detections (D, K, 3) and ground truths (G, K, 3) with v > 0 joints."""
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    d2 = ((dts[:, None, :, :2] - gts[None, :, :, :2]) ** 2).sum(-1)  # (D, G, K)
    e = d2 / var / (areas[None, :, None] + np.spacing(1)) / 2
    vis = gts[None, :, :, 2] > 0
    return (np.exp(-e) * vis).sum(-1) / np.maximum(vis.sum(-1), 1)


def build_rescore_dataset(
    image_ids: Sequence[int],
    predictions: Sequence[dict[str, Any]],
    coco_gt: COCO,
    spec: KeypointSpec,
    *,
    top_k: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 3·L + K), target OKS (N,)) from per-image predictions in original pixels.

    Args:
        predictions: one dict per image with ``keypoints`` (N, K, 3) and ``scores`` (N,).
    """
    feats, targets = [], []
    k = spec.num_keypoints
    for image_id, pred in zip(image_ids, predictions):
        kps = np.asarray(pred["keypoints"], dtype=np.float64).reshape(-1, k, 3)
        order = np.argsort(-np.asarray(pred["scores"]).reshape(-1), kind="stable")[:top_k]
        kps = kps[order]
        if not len(kps):
            continue
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[int(image_id)], iscrowd=False))
        anns = [a for a in anns if np.any(np.asarray(a["keypoints"])[2::3] > 0)]
        if anns:
            gts = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, k, 3)
            areas = np.array([a["area"] for a in anns], dtype=np.float64)
            best = oks_matrix(kps, gts, areas, spec.sigmas).max(1)
        else:
            best = np.zeros(len(kps))
        feats.append(rescore_features(kps, spec))
        targets.append(torch.from_numpy(best).float())
    if not feats:
        width = 3 * len(spec.limbs) + k
        return torch.zeros(0, width), torch.zeros(0)
    return torch.cat(feats), torch.cat(targets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="trained DEKR Lightning checkpoint")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO keypoint JSON")
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--output", type=Path, default=Path("rescore.pth"))
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--top-k", type=int, default=20)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import cv2  # heavy imports only for the full run

    from dekr.inference import predict_poses
    from dekr.module import DekrModule  # the training system; loaded lazily

    module = DekrModule.load_from_checkpoint(str(args.checkpoint), map_location="cpu").eval()
    spec = module.spec
    coco = COCO(str(args.annotations))
    ids = sorted(coco.getImgIds())
    preds = []
    for image_id in ids:
        info = coco.loadImgs([image_id])[0]
        image = cv2.cvtColor(cv2.imread(str(args.images / info["file_name"])), cv2.COLOR_BGR2RGB)
        preds += predict_poses(module.model, [image], spec=spec, input_size=args.input_size)
    feats, targets = build_rescore_dataset(ids, preds, coco, spec, top_k=args.top_k)
    net, losses = fit_rescore_net(feats, targets, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr)  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.output)
    print(f"{len(feats)} poses, final loss {losses[-1]:.5f} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
