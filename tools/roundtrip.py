"""Encoder → decoder agreement: targets of the ground truth, decoded as if a network made them.

For every image of a COCO keypoint JSON the labelled people are resized to the eval input
resolution (official test resize), encoded with :func:`dekr.targets.encode_targets`, the
heatmaps and offsets are fed to :class:`dekr.decoder.DEKRDecoder`, the poses mapped back to
original pixels and scored with :class:`dekr.evaluation.COCOEvaluator`. A correct pair of
encoder and decoder gives AP ≈ 1 (people below the encoder's minimum centre area have no centre
and are lost, as officially).

    python tools/roundtrip.py --annotations ANN.json --images DIR [--spec coco] [--input-size 512]
        [decode.nms_threshold=0.05 targets.sigma=2 ...]

Prints the COCO table, ending with ``AP <value>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from dekr.decoder import DEKRDecoder
from dekr.evaluation import COCOEvaluator
from dekr.inference import eval_transform
from dekr.keypoints import KeypointSpec


def roundtrip_image(
    keypoints: np.ndarray,
    areas: np.ndarray,
    height: int,
    width: int,
    *,
    decoder: DEKRDecoder,
    input_size: int = 512,
    target_kwargs: Optional[dict[str, Any]] = None,
) -> dict[str, np.ndarray]:
    """Encode one image's people (N, K, 3) original px and decode them back to original px."""
    from dekr.targets import encode_targets  # written alongside; imported when used

    stride = decoder.stride
    t = eval_transform(height, width, input_size)
    out_h, out_w = t.input_hw.h // stride, t.input_hw.w // stride
    raw = np.asarray(keypoints, dtype=np.float64)
    kps = raw.copy()
    kps[..., :2] = t.to_input(kps[..., :2]) / stride
    kps[kps[..., 2] <= 0] = 0.0
    extra: dict[str, np.ndarray] = {}
    if (target_kwargs or {}).get("official"):  # official centres/areas from original pixels
        from dekr.data.transforms import official_people

        to_out = t.matrix() / stride
        extra["official_centers"], extra["official_areas"] = official_people(raw, to_out, stride)
    targets = encode_targets(
        kps, np.asarray(areas, dtype=np.float64), None,
        output_size=(out_h, out_w), stride=stride, **(target_kwargs or {}), **extra,
    )  # fmt: skip
    heat = torch.from_numpy(targets["heatmaps"])[None]
    offsets = torch.from_numpy(targets["offsets"] * (targets["offset_weights"] > 0))[None]
    det = decoder(heat, offsets)[0]
    out = det["keypoints"].double().clone()
    out[..., :2] = t.to_original(out[..., :2])
    return {"keypoints": out.numpy(), "scores": det["scores"].double().numpy()}


def run_roundtrip(
    annotations: Path,
    images: Optional[Path],
    *,
    spec: KeypointSpec,
    input_size: int = 512,
    decoder_kwargs: Optional[dict[str, Any]] = None,
    target_kwargs: Optional[dict[str, Any]] = None,
) -> dict[str, float]:
    """Round trip over every image of ``annotations``; returns the COCO metrics."""
    data = json.loads(Path(annotations).read_text())
    decoder = DEKRDecoder(spec, **(decoder_kwargs or {}))
    evaluator = COCOEvaluator.from_json(spec, annotations)
    k = spec.num_keypoints
    for im in data["images"]:
        if images is not None and not (Path(images) / im["file_name"]).exists():
            raise FileNotFoundError(f"{Path(images) / im['file_name']} listed in {annotations}")
        anns = [
            a for a in data["annotations"]
            if a["image_id"] == im["id"] and not a.get("iscrowd", 0) and any(a["keypoints"][2::3])
        ]  # fmt: skip
        kps = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, k, 3)
        areas = np.array([evaluator.coco_gt.anns[a["id"]]["area"] for a in anns], np.float64)
        pred = roundtrip_image(kps, areas, im["height"], im["width"], decoder=decoder,
                               input_size=input_size, target_kwargs=target_kwargs)  # fmt: skip
        evaluator.process([im["id"]], [pred])
    return evaluator.evaluate()


def recipe_settings(recipe: Any) -> dict[str, Any]:
    """Spec, input size, decoder and target keyword arguments from a loaded recipe."""
    from dekr.binding import decoder_kwargs, target_kwargs
    from dekr.module import spec_from_recipe

    return {
        "spec": spec_from_recipe(recipe),
        "input_size": recipe.data.input_size,
        "decoder_kwargs": decoder_kwargs(recipe),
        "target_kwargs": target_kwargs(recipe),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path, help="recipe YAML (targets, decode, input size, spec)")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO keypoint JSON")
    parser.add_argument("--images", type=Path, default=None, help="image folder (checked)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. targets.sigma=3")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dekr.config import load_recipe

    args = build_parser().parse_intermixed_args(argv)
    settings = recipe_settings(load_recipe(args.recipe, args.overrides))
    metrics = run_roundtrip(args.annotations, args.images, **settings)
    print(COCOEvaluator(settings["spec"]).summary(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
