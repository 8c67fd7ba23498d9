"""Render the training targets of one augmented sample as PNG overlays, to check alignment.

    python tools/show_targets.py --annotations JSON --images DIR [--spec coco|crowdpose]
        [--index I] [--input-size 512] [--seed S] --out DIR

Writes ``image.png`` (augmented input with the keypoint labels), ``heatmaps.png`` (max over the
keypoint channels), ``centers.png`` (centre channel), ``weights.png`` (heatmap weights: black 0 =
ignored, grey = background weight, white = 1) and ``offsets.png`` (arrows from every other pixel
with an offset weight to the keypoint it points at).
"""

from __future__ import annotations

import argparse
import copy
import os
from typing import Any

import cv2
import numpy as np
import torch

from dekr.data.coco import COCOKeypoints
from dekr.data.datamodule import TrainSampleTransform
from dekr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dekr.keypoints import KeypointSpec, get_keypoint_spec


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, S, S) normalised tensor -> BGR uint8 (S, S, 3) for OpenCV drawing."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = ((image * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


def _upsample(m: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Output map (h, w) -> input resolution, honouring ``x_in = stride · x_out``."""
    mat = np.array([[stride, 0.0, 0.0], [0.0, stride, 0.0]])
    return cv2.warpAffine(m.astype(np.float32), mat, (size, size), flags=cv2.INTER_LINEAR)


def _overlay(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    color = cv2.applyColorMap((np.clip(m, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(img, 0.5, color, 0.5, 0)


def draw_keypoints(img: np.ndarray, kps: np.ndarray, spec: KeypointSpec, stride: int) -> None:
    """Draw people (N, K, 3) in output pixels onto ``img`` (input resolution), in place."""
    for person in kps:
        xy = person[:, :2] * stride
        lab = person[:, 2] > 0
        for (a, b), col in zip(spec.limbs, spec.colors):
            if lab[a] and lab[b]:
                pa, pb = tuple(int(round(v)) for v in xy[a]), tuple(int(round(v)) for v in xy[b])
                cv2.line(img, pa, pb, col[::-1], 1, cv2.LINE_AA)
        for x, y in xy[lab]:
            cv2.circle(img, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)


def draw_offsets(img: np.ndarray, maps: dict[str, np.ndarray], stride: int, step: int = 2) -> None:
    """Arrows from every ``step``-th pixel with an offset weight to its keypoint, in place."""
    off, w = maps["offsets"], maps["offset_weights"]
    k = off.shape[0] // 2
    colors = [tuple(int(c) for c in cv2.applyColorMap(np.uint8([[i * 255 // k]]), 2)[0, 0])
              for i in range(k)]  # fmt: skip
    for j in range(k):
        ys, xs = np.nonzero(w[2 * j])
        keep = (ys % step == 0) & (xs % step == 0)
        for y, x in zip(ys[keep], xs[keep]):
            kx, ky = x - off[2 * j, y, x], y - off[2 * j + 1, y, x]
            p0 = (int(x * stride), int(y * stride))
            p1 = (int(round(kx * stride)), int(round(ky * stride)))
            cv2.arrowedLine(img, p0, p1, colors[j], 1, cv2.LINE_AA, tipLength=0.03)


def render(sample: dict[str, Any], spec: KeypointSpec, stride: int) -> dict[str, np.ndarray]:
    """PNG images (BGR) of one transformed training sample that still carries its keypoints."""
    img = denormalize(sample["image"])
    size = img.shape[0]
    maps = {k: sample[k].numpy() for k in ("heatmaps", "heatmap_weights", "offsets",
                                            "offset_weights")}  # fmt: skip
    labelled = img.copy()
    draw_keypoints(labelled, sample["keypoints"], spec, stride)
    weights = _upsample(maps["heatmap_weights"].max(0), size, stride)
    offsets = img.copy()
    draw_offsets(offsets, maps, stride)
    return {
        "image": labelled,
        "heatmaps": _overlay(img, _upsample(maps["heatmaps"][:-1].max(0), size, stride)),
        "centers": _overlay(img, _upsample(maps["heatmaps"][-1], size, stride)),
        "weights": cv2.addWeighted(
            img, 0.4, cv2.cvtColor((weights * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR), 0.6, 0
        ),  # fmt: skip
        "offsets": offsets,
    }


def _transforms(args: argparse.Namespace) -> tuple[KeypointSpec, TrainSampleTransform]:
    """Spec and training transform from the recipe (when given) or the command line."""
    if args.recipe:
        from dekr.config import load_recipe
        from dekr.training import build_datamodule

        datamodule = build_datamodule(load_recipe(args.recipe, args.overrides))
        return datamodule.spec, datamodule.transform
    spec = get_keypoint_spec(args.spec)
    return spec, TrainSampleTransform(spec, input_size=args.input_size)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=None, help="recipe YAML: spec, input size, targets, augment")
    p.add_argument("--annotations", required=True, help="COCO-format keypoint JSON")
    p.add_argument("--images", required=True, help="image folder of the JSON's file names")
    p.add_argument("--spec", default="coco", help="keypoint spec without a recipe")
    p.add_argument("--index", type=int, default=0, help="sample index in the dataset")
    p.add_argument("--input-size", type=int, default=512, help="input side without a recipe")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.add_argument("overrides", nargs="*", help="recipe overrides (key=value)")
    args = p.parse_intermixed_args(argv)
    spec, tf = _transforms(args)
    ds = COCOKeypoints(args.annotations, args.images, spec)
    raw = ds[args.index]
    kps_sample = tf(raw, rng=np.random.default_rng(args.seed))
    tf_dev = copy.copy(tf)
    tf_dev.targets_on_device = True  # same augmentation, keypoints instead of maps
    kps = tf_dev(raw, rng=np.random.default_rng(args.seed))["keypoints"].numpy()
    os.makedirs(args.out, exist_ok=True)
    for name, png in render({**kps_sample, "keypoints": kps}, spec, tf.output_stride).items():
        path = os.path.join(args.out, f"{name}.png")
        cv2.imwrite(path, png)
        print(path)


if __name__ == "__main__":
    main()
