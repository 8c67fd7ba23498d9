"""Train the rescoring net on a trained DEKR model's predictions (official RESCORE recipe).

    python tools/train_rescore.py CHECKPOINT [key=value ...] --annotations TRAIN.json \\
        --images DIR --output rescore.pth [--epochs 20] [--batch-size 1024] [--lr 1e-3]

The model predicts with its recipe's test settings (scales, flip, thresholds; ``key=value``
overrides them, e.g. ``data.input_size=640``) and without any earlier rescoring net. Use the result
with ``decode.rescore_checkpoint=rescore.pth``.

Each image's predictions (top ``top_k`` by score, as the official data dump) are matched to the
image's labelled, non-crowd ground truth; the target is the best OKS with any of them (COCO
formula, spec sigmas). Differences from the official dump: every detection appears once (the
official one repeats it for three area ranges), and OKS = 1 targets are kept (officially set to 0).
"""

from __future__ import annotations

import argparse
import sys
import warnings
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
    parser.add_argument(
        "overrides", nargs="*", default=[],
        help="test-time recipe overrides key=value, e.g. decode.flip=false data.input_size=640",
    )  # fmt: skip
    parser.add_argument("--annotations", type=Path, required=True, help="COCO keypoint JSON")
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--output", type=Path, default=Path("rescore.pth"))
    parser.add_argument("--max-images", type=int, default=None, help="use the first N images")
    parser.add_argument("--images-per-batch", type=int, default=8, help="images per forward")
    parser.add_argument("--device", default="cpu", help="torch device of the pose model")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--top-k", type=int, default=20)
    return parser


def predict_dataset(
    module: Any, coco: COCO, images: Path, image_ids: Sequence[int], per_batch: int
) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Predictions of ``module.predict_images`` for every readable image; (ids, predictions)."""
    import cv2  # heavy import only for the full run

    done_ids: list[int] = []
    preds: list[dict[str, np.ndarray]] = []
    for start in range(0, len(image_ids), per_batch):
        batch, batch_ids = [], []
        for image_id in image_ids[start : start + per_batch]:
            path = images / coco.loadImgs([image_id])[0]["file_name"]
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
                continue
            batch.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            batch_ids.append(image_id)
        if batch:
            preds += module.predict_images(batch)
            done_ids += batch_ids
    return done_ids, preds


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Predict on the annotated images, build (features, OKS) pairs, fit and save the net."""
    args = build_parser().parse_args(argv)
    from dekr.module import load_checkpoint  # the training system; loaded lazily

    # the dump uses the pose model's own scores: an earlier rescoring net is switched off
    overrides = [*args.overrides, "decode.rescore_checkpoint=null"]
    module = load_checkpoint(args.checkpoint, overrides, map_location=args.device)
    coco = COCO(str(args.annotations))
    ids = sorted(coco.getImgIds())[: args.max_images]
    with torch.no_grad():
        ids, preds = predict_dataset(module, coco, args.images, ids, args.images_per_batch)
    feats, targets = build_rescore_dataset(ids, preds, coco, module.spec, top_k=args.top_k)
    if not len(feats):
        print(f"error: the model predicted no poses on {len(ids)} images of {args.images}; "
              "nothing to train on (is the checkpoint trained?)", file=sys.stderr)  # fmt: skip
        return 2
    net, losses = fit_rescore_net(feats, targets, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr)  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.output)
    print(f"{len(feats)} poses from {len(ids)} images, final loss {losses[-1]:.5f} -> "
          f"{args.output} (use with decode.rescore_checkpoint={args.output})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
