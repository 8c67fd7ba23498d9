"""dekr: bottom-up multi-person pose estimation with Disentangled Keypoint Regression.

The public API, by stage (each name is documented where it is defined):

* keypoint sets: :class:`KeypointSpec`, :data:`COCO_KEYPOINTS`, :data:`CROWDPOSE_KEYPOINTS`
* data: :class:`COCOKeypoints` (any COCO-format JSON), :func:`generate_synthetic_dataset`,
  :func:`ensure_synthetic_splits`, :class:`TrainSampleTransform`, :class:`DekrDataModule`,
  :func:`encode_targets`, :func:`encode_targets_batch`
* sizes and samples (:mod:`dekr.data.types`): :class:`Size` ``(h, w)``, the typed dicts
  :class:`RawSample`, :class:`WarpedSample`, :class:`TrainSample`, :class:`TrainBatch`,
  :class:`TargetMaps`, :class:`BatchTargetMaps`
* network: :func:`build_model`, :class:`DEKR`, :func:`load_official_dekr`,
  :func:`load_imagenet_backbone`
* decoding and metric: :class:`DEKRDecoder`, :func:`predict_poses`, :class:`COCOEvaluator`,
  :func:`draw_poses`
* training system: :class:`DekrModule`, :func:`load_recipe`, :func:`recipe_from_dict`,
  :func:`train`, :func:`evaluate`, :func:`load_checkpoint`, :func:`predict_files`
* errors (:mod:`dekr.errors`): :class:`DekrError`, :class:`UserError` (bad input) and its
  subclasses
* pretrained weights by name (:mod:`dekr.weights`): :func:`list_weights`

Heavy submodules are imported on first use, so ``import dekr`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names load lazily below
    from dekr.config import load_recipe, recipe_from_dict
    from dekr.data.coco import COCOKeypoints
    from dekr.data.datamodule import DekrDataModule, TrainSampleTransform
    from dekr.data.synthetic import ensure_synthetic_splits, generate_synthetic_dataset
    from dekr.data.types import (
        BatchTargetMaps,
        RawSample,
        Size,
        TargetMaps,
        TrainBatch,
        TrainSample,
        WarpedSample,
    )
    from dekr.decoder import DEKRDecoder
    from dekr.drawing import draw_poses
    from dekr.errors import DekrError, UserError
    from dekr.evaluation import COCOEvaluator
    from dekr.inference import predict_poses
    from dekr.keypoints import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointSpec, get_keypoint_spec
    from dekr.models.dekr import DEKR, build_model
    from dekr.models.weights import load_imagenet_backbone, load_official_dekr
    from dekr.module import DekrModule, load_checkpoint
    from dekr.predict import predict_files
    from dekr.targets import encode_targets, encode_targets_batch
    from dekr.training import evaluate, train
    from dekr.weights import list_weights

_EXPORTS = {
    "KeypointSpec": "dekr.keypoints",
    "COCO_KEYPOINTS": "dekr.keypoints",
    "CROWDPOSE_KEYPOINTS": "dekr.keypoints",
    "get_keypoint_spec": "dekr.keypoints",
    "COCOKeypoints": "dekr.data.coco",
    "generate_synthetic_dataset": "dekr.data.synthetic",
    "ensure_synthetic_splits": "dekr.data.synthetic",
    "TrainSampleTransform": "dekr.data.datamodule",
    "DekrDataModule": "dekr.data.datamodule",
    "Size": "dekr.data.types",
    "RawSample": "dekr.data.types",
    "WarpedSample": "dekr.data.types",
    "TrainSample": "dekr.data.types",
    "TrainBatch": "dekr.data.types",
    "TargetMaps": "dekr.data.types",
    "BatchTargetMaps": "dekr.data.types",
    "encode_targets": "dekr.targets",
    "encode_targets_batch": "dekr.targets",
    "build_model": "dekr.models.dekr",
    "DEKR": "dekr.models.dekr",
    "load_official_dekr": "dekr.models.weights",
    "load_imagenet_backbone": "dekr.models.weights",
    "DEKRDecoder": "dekr.decoder",
    "predict_poses": "dekr.inference",
    "COCOEvaluator": "dekr.evaluation",
    "draw_poses": "dekr.drawing",
    "DekrModule": "dekr.module",
    "load_checkpoint": "dekr.module",
    "load_recipe": "dekr.config",
    "recipe_from_dict": "dekr.config",
    "train": "dekr.training",
    "evaluate": "dekr.training",
    "predict_files": "dekr.predict",
    "DekrError": "dekr.errors",
    "UserError": "dekr.errors",
    "list_weights": "dekr.weights",
}

__all__ = ["__version__", *_EXPORTS]


# Submodules that the documentation uses as ``dekr.<name>.…`` after a plain ``import dekr``.
_SUBMODULES = ("weights",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"dekr.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dekr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
