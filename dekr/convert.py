"""Conversion of published checkpoints into the files dekr reads, inside the package.

Layouts (:data:`LAYOUTS`):

* ``official_dekr``: the official DEKR release (``pose_dekr_hrnetw32_coco.pth``); dekr's network
  uses the same parameter names, so conversion is a strict load.
* ``mmpose_dekr``: MMPose 1.x ``BottomupPoseEstimator`` with ``HRNet`` + ``DEKRHead``
  (``dekr_hrnet-w32_8xb10-140e_coco-512x512_ac7c17bf-20221228.pth``); mapped by
  :func:`mmpose_to_official`.
* ``hrnet_imagenet`` / ``timm_hrnet``: ImageNet HRNet classifiers (official
  HRNet-Image-Classification, timm ``hrnet_w*``, ``.safetensors`` read with the optional
  ``safetensors`` package); the backbone keys are kept.

Every converted file records :data:`CONVERTER_VERSION`; the weights cache converts again when it
changes. ``tools/convert_checkpoint.py`` is a command-line wrapper over this module.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dekr.config import load_recipe, recipe_from_dict
from dekr.errors import CheckpointError
from dekr.keypoints import get_keypoint_spec
from dekr.models.dekr import build_model
from dekr.models.hrnet import HRNET_SPECS
from dekr.models.weights import (
    CLASSIFICATION_ONLY_PREFIXES,
    load_imagenet_backbone,
    load_official_dekr,
    read_state_dict,
)

__all__ = [
    "CONVERTER_VERSION",
    "LAYOUTS",
    "ConversionError",
    "DATASETS",
    "BUILTIN_RECIPES",
    "read_weights",
    "read_tensors_only",
    "detect_backbone",
    "detect_num_keypoints",
    "official_recipe",
    "save_checkpoint",
    "write_checkpoint",
    "convert_official",
    "convert_imagenet",
    "mmpose_to_official",
    "official_state",
    "backbone_state",
]

# Bump when a conversion changes what it writes: cached conversions of older versions are redone.
CONVERTER_VERSION = 1
LAYOUTS = ("official_dekr", "mmpose_dekr", "hrnet_imagenet", "timm_hrnet", "dekr")
DATASETS = {17: "coco", 14: "crowdpose"}  # K -> recipe prefix (recipes/<dataset>_w<width>.yaml)
PathLike = Union[str, Path]

# The test-time part of recipes/{coco,crowdpose}_w{32,48}.yaml, for installs without the
# repository's recipes/ folder (tests/test_weights_registry.py checks they agree with the YAML).
_COCO_DECODE = {"max_people": 30, "center_threshold": 0.01, "nms_threshold": 0.05, "nms_num": 8,
                "flip": True, "scales": [1.0], "scale_decrease": 0.9}  # fmt: skip
_CROWDPOSE_DECODE = {**_COCO_DECODE, "nms_num": 7, "scale_decrease": 0.8}
BUILTIN_RECIPES: dict[str, dict[str, Any]] = {
    f"{dataset}_{width}": {
        "keypoints": dataset,
        "model": {"backbone": f"hrnet_{width}"},
        "data": {"input_size": 512 if width == "w32" else 640},
        "targets": {"min_center_area": 1024.0 if dataset == "coco" else 0.0},
        "decode": _COCO_DECODE if dataset == "coco" else _CROWDPOSE_DECODE,
    }
    for dataset in ("coco", "crowdpose")
    for width in ("w32", "w48")
}


class ConversionError(CheckpointError):
    """A file that cannot be converted, with the reason."""


# ------------------------------------------------------------------------------------ reading
def _numpy_globals() -> list[Any]:
    """The NumPy array and scalar rebuilders, allowlisted for ``weights_only`` loads under their
    NumPy 1.x (``numpy.core``) and 2.x (``numpy._core``) names. They rebuild plain arrays; an
    array of Python objects still goes through the same allowlist item by item."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    named: list[Any] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        named += [(multiarray._reconstruct, f"{module}._reconstruct")]
        named += [(multiarray.scalar, f"{module}.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        named += [
            (getattr(dtypes, n), f"numpy.dtypes.{n}")
            for n in dir(dtypes)
            if n.endswith("DType") and n != "ObjectDType"
        ]
    return named


def read_tensors_only(path: PathLike) -> dict[str, Tensor]:
    """The state dict of a checkpoint whose other entries hold NumPy arrays.

    MMPose checkpoints keep ``meta`` (the config text, NumPy arrays of the dataset metadata) next
    to ``state_dict``; ``torch.load(weights_only=True)`` refuses NumPy arrays unless allowlisted.
    This loads with ``weights_only=True`` and the NumPy rebuilders allowlisted (nothing else), and
    returns the tensors under ``state_dict``; a file holding any other object is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        marker = "Unsupported global: GLOBAL "
        if marker in text:
            name = text.split(marker, 1)[1].split()[0]
            raise ValueError(
                f"cannot read checkpoint {path}: it holds a {name} object; only tensors and "
                "NumPy arrays are loaded (weights_only)"
            ) from None
        first = (text.strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path}: {first}") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path} does not hold a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: state dict entries that are not tensors: {bad[:3]}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def read_weights(path: PathLike) -> dict[str, Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``, or ``.safetensors``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_state_dict(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConversionError(
            f"{path}: reading .safetensors needs `pip install safetensors`"
        ) from None
    return {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}


# ------------------------------------------------------------------------------------ detection
def _shape(state: Mapping[str, Tensor], key: str, source: str, hint: str) -> tuple[int, ...]:
    if key not in state:
        if any(k.startswith("model.") for k in state):
            raise ConversionError(
                f"{source} is already a dekr checkpoint (keys 'model.*'); use it as it is"
            )
        if any(k.startswith("backbone.") for k in state):
            raise ConversionError(f"{source}: keys 'backbone.*' and 'head.*': an MMPose checkpoint")
        raise ConversionError(f"{source}: no '{key}' tensor; {hint}")
    return tuple(state[key].shape)


def detect_backbone(state: Mapping[str, Tensor], source: str = "checkpoint") -> str:
    """The :data:`HRNET_SPECS` name whose stem and first-branch widths the tensors have.

    ``conv1.weight`` (C_stem, 3, 3, 3) gives the stem width, ``transition1.0.0.weight``
    (C_0, 256, 3, 3) the HRNet width: 32 for hrnet_w32, 48 for hrnet_w48.
    """
    hint = "not an HRNet state dict in the official layout"
    stem = _shape(state, "conv1.weight", source, hint)[0]
    width = _shape(state, "transition1.0.0.weight", source, hint)[0]
    for name, spec in HRNET_SPECS.items():
        if spec.channels[0] == width and spec.stem_channels == stem:
            return name
    known = {n: s.channels[0] for n, s in HRNET_SPECS.items()}
    raise ConversionError(f"{source}: HRNet width {width} (stem {stem}) is none of {known}")


def detect_num_keypoints(state: Mapping[str, Tensor], source: str = "checkpoint") -> int:
    """K from ``head_heatmap.1.weight`` (K+1 output channels: keypoints and the centre)."""
    hint = "not an official DEKR checkpoint (an ImageNet backbone? use the 'imagenet' mode)"
    return _shape(state, "head_heatmap.1.weight", source, hint)[0] - 1


# ------------------------------------------------------------------------------------ MMPose
# MMPose 1.x DEKR, read from open-mmlab/mmpose (commit 759b39c1):
#   configs/body_2d_keypoint/dekr/*/dekr_hrnet-*.py: BottomupPoseEstimator = HRNet backbone
#     (stage4 multiscale_output=True) + FeatureMapProcessor(concat=True) neck (bilinear,
#     align_corners=False, no parameters) + DEKRHead; PoseDataPreprocessor mean
#     [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375], bgr_to_rgb=True, i.e. RGB input with
#     ImageNet mean/std on 0-255: exactly dekr's (x/255 - (0.485, 0.456, 0.406)) / (0.229, 0.224,
#     0.225) on RGB. mmengine registers mean/std as non-persistent buffers: not in checkpoints.
#   mmpose/models/backbones/hrnet.py: module names and structure of the official HRNet (conv1,
#     bn1, conv2, bn2, layer1, transition1-3, stage2-4 .branches / .fuse_layers, nearest
#     up-sampling): 'backbone.' + official key.
#   mmpose/models/heads/hybrid_heads/dekr_head.py (DEKRHead, _version 2):
#     heatmap_conv_layers = [ConvModule(1x1, BN) 'conv'/'bn', BasicBlock 'conv1/bn1/conv2/bn2',
#       Conv2d(hc, K+1, 1)], channels K keypoints then the root (centre) last, as dekr.
#     displacement_conv_layers = [ConvModule(1x1, K*15, BN), AdaptiveActivationBlock x2,
#       Conv2d(K*15, 2K, 1, groups=K)]: the K branches as grouped convolutions.
#     AdaptiveActivationBlock: transform_matrix_conv (6 per group: rows of a 2x3 matrix [M | t]
#       acting on (dy, dx, 1)), regular_matrix (3, 9) buffer, adapt_conv = mmcv DeformConv2d
#       (weight only, groups=deform_groups=K; mmcv adds the regular grid itself, offsets
#       [y0, x0, y1, x1, ...]), norm (BN), act(x + residual). Offsets = M r + t, so dekr's
#       (official) transform, whose deform offsets are M' r + t - r, is M' = M + I.
#   mmpose/codecs/spr.py decode: keypoint = pixel + displacement (x at 2k, y at 2k+1), so
#     displacement = -(dekr offset, which is pixel - keypoint): the final layer is negated.
#     The same sign flip appears in DEKRHead._load_state_dict_pre_hook for MMPose 0.x files.
_MM_HEAD = "head."
_MM_RESCORE = "head.rescore_net."
_MM_PREPROCESSOR = "data_preprocessor."
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_TAPS = torch.tensor(
    [[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]], dtype=torch.float32
)
_MM_REGULAR = torch.cat([_TAPS, torch.ones(1, 9)])  # DEKRHead's (3, 9) regular_matrix
_MM_MEAN = (123.675, 116.28, 103.53)
_MM_STD = (58.395, 57.12, 57.375)


def _take(state: dict[str, Tensor], key: str, source: str) -> Tensor:
    if key not in state:
        raise ConversionError(f"{source}: MMPose DEKR layout: missing key '{key}'")
    return state.pop(key)


def mmpose_to_official(
    state: Mapping[str, Tensor], source: str = "checkpoint"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An MMPose 1.x DEKR state dict -> the official / dekr network state dict.

    Every key must be mapped: a key of neither the backbone, the head, the (dropped) rescoring
    net nor the data preprocessor is an error, and so is a missing one.

    Returns:
        the state dict and facts about the file (``backbone``, ``num_keypoints``,
        ``dropped``: the MMPose rescoring net keys, not converted because its features follow
        MMPose's skeleton link order, not dekr's).
    """
    rest = dict(state)
    if any("offset_conv_layers" in k for k in rest):
        raise ConversionError(
            f"{source}: an MMPose 0.x DEKR checkpoint (keys 'offset_conv_layers'); only the "
            "MMPose 1.x layout is supported"
        )
    if not any(k.startswith(_MM_HEAD + "heatmap_conv_layers.") for k in rest):
        raise ConversionError(
            f"{source}: not an MMPose DEKR checkpoint (no 'head.heatmap_conv_layers.*')"
        )
    out: dict[str, Tensor] = {}
    for key in [k for k in rest if k.startswith("backbone.")]:
        out[key.removeprefix("backbone.")] = rest.pop(key)
    backbone = detect_backbone(out, source)
    spec = HRNET_SPECS[backbone]

    def move(src: str, dst: str) -> None:
        out[dst] = _take(rest, _MM_HEAD + src, source)

    def move_bn(src: str, dst: str) -> None:
        for p in _BN:
            if p == "num_batches_tracked" and _MM_HEAD + f"{src}.{p}" not in rest:
                continue  # absent from files of old PyTorch versions
            move(f"{src}.{p}", f"{dst}.{p}")

    move("heatmap_conv_layers.0.conv.weight", "transition_heatmap.0.weight")
    move_bn("heatmap_conv_layers.0.bn", "transition_heatmap.1")
    for conv in ("conv1", "conv2"):
        move(f"heatmap_conv_layers.1.{conv}.weight", f"head_heatmap.0.0.{conv}.weight")
    for bn in ("bn1", "bn2"):
        move_bn(f"heatmap_conv_layers.1.{bn}", f"head_heatmap.0.0.{bn}")
    move("heatmap_conv_layers.2.weight", "head_heatmap.1.weight")
    move("heatmap_conv_layers.2.bias", "head_heatmap.1.bias")
    k = out["head_heatmap.1.weight"].shape[0] - 1
    move("displacement_conv_layers.0.conv.weight", "transition_offset.0.weight")
    move_bn("displacement_conv_layers.0.bn", "transition_offset.1")
    c = out["transition_offset.0.weight"].shape[0] // k
    if (
        c * k != out["transition_offset.0.weight"].shape[0]
        or c != spec.offset_channels_per_keypoint
    ):
        raise ConversionError(
            f"{source}: {out['transition_offset.0.weight'].shape[0]} offset channels for K={k} "
            f"keypoints; {backbone} has {spec.offset_channels_per_keypoint} per keypoint"
        )
    matrix_rows = [0, 1, 3, 4]  # of each group's 6: [m00 m01 t_y m10 m11 t_x] -> M row-major
    shift_rows = [2, 5]
    identity = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for block in (1, 2):
        pre = f"{_MM_HEAD}displacement_conv_layers.{block}."
        tm_w = _take(rest, pre + "transform_matrix_conv.weight", source)
        tm_b = _take(rest, pre + "transform_matrix_conv.bias", source)
        adapt = _take(rest, pre + "adapt_conv.weight", source)
        regular = _take(rest, pre + "regular_matrix", source)
        if tuple(regular.shape) != (3, 9) or not torch.equal(regular.float(), _MM_REGULAR):
            raise ConversionError(f"{source}: {pre}regular_matrix is not DEKRHead's constant")
        if tm_w.shape[0] != 6 * k or adapt.shape[0] != c * k:
            raise ConversionError(
                f"{source}: {pre}transform_matrix_conv has {tm_w.shape[0]} outputs, expected "
                f"6 x K = {6 * k}"
            )
        norm = {p: rest.pop(pre + f"norm.{p}") for p in _BN if pre + f"norm.{p}" in rest}
        if set(norm) < set(_BN[:4]):
            raise ConversionError(f"{source}: MMPose DEKR layout: missing key '{pre}norm.*'")
        for j in range(k):
            dst = f"offset_feature_layers.{j}.{block - 1}."
            rows = slice(6 * j, 6 * j + 6)
            w, b = tm_w[rows], tm_b[rows]
            out[dst + "transform_matrix_conv.weight"] = w[matrix_rows].clone()
            out[dst + "transform_matrix_conv.bias"] = b[matrix_rows] + identity.to(b)
            out[dst + "translation_conv.weight"] = w[shift_rows].clone()
            out[dst + "translation_conv.bias"] = b[shift_rows].clone()
            out[dst + "adapt_conv.weight"] = adapt[c * j : c * (j + 1)].clone()
            out[dst + "regular_matrix"] = _TAPS.clone()
            for p, v in norm.items():
                out[dst + f"bn.{p}"] = (
                    v.clone() if p == "num_batches_tracked" else v[c * j : c * (j + 1)].clone()
                )
    final_w = _take(rest, _MM_HEAD + "displacement_conv_layers.3.weight", source)
    final_b = _take(rest, _MM_HEAD + "displacement_conv_layers.3.bias", source)
    for j in range(k):
        out[f"offset_final_layer.{j}.weight"] = -final_w[2 * j : 2 * j + 2]
        out[f"offset_final_layer.{j}.bias"] = -final_b[2 * j : 2 * j + 2]
    dropped = sorted(key for key in rest if key.startswith(_MM_RESCORE))
    for key in dropped:
        rest.pop(key)
    for name, expected in (("mean", _MM_MEAN), ("std", _MM_STD)):
        value = rest.pop(_MM_PREPROCESSOR + name, None)
        if value is not None and not torch.allclose(
            value.flatten().double(), torch.tensor(expected, dtype=torch.float64)
        ):
            raise ConversionError(
                f"{source}: data_preprocessor.{name} {value.flatten().tolist()} is not the "
                f"ImageNet RGB {list(expected)} dekr normalises with"
            )
    if rest:
        left = sorted(rest)
        raise ConversionError(
            f"{source}: MMPose DEKR layout: unmapped keys {', '.join(left[:5])}"
            + (f" (and {len(left) - 5} more)" if len(left) > 5 else "")
        )
    return out, {"backbone": backbone, "num_keypoints": k, "dropped": dropped}


# ------------------------------------------------------------------------------------ recipes
def official_recipe(
    backbone: str,
    num_keypoints: int,
    recipe: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    recipes_dir: Optional[PathLike] = None,
) -> DictConfig:
    """The recipe for a checkpoint: ``recipe`` (a file, a name in ``recipes_dir`` or a name of
    :data:`BUILTIN_RECIPES`) or the one matching K and the backbone, with ``key=value``
    overrides; it must agree with both."""
    if recipe is None:
        dataset = DATASETS.get(num_keypoints)
        if dataset is None:
            raise ConversionError(
                f"checkpoint predicts K={num_keypoints} keypoints; no official recipe has that "
                f"(COCO 17, CrowdPose 14): pass --recipe"
            )
        recipe = f"{dataset}_{backbone.removeprefix('hrnet_')}"
    path = Path(recipe)
    if not path.is_file() and not path.suffix and recipes_dir is not None:
        path = Path(recipes_dir) / f"{recipe}.yaml"
    if path.is_file():
        cfg = load_recipe(path, list(overrides))
        label = path.name
    elif str(recipe) in BUILTIN_RECIPES:
        cfg = recipe_from_dict(BUILTIN_RECIPES[str(recipe)], list(overrides), source=str(recipe))
        label = str(recipe)
    else:
        raise ConversionError(f"recipe not found: {recipe} (looked for {path}); pass --recipe")
    if cfg.model.backbone != backbone:
        raise ConversionError(
            f"recipe {label} has model.backbone={cfg.model.backbone}, the checkpoint is {backbone}"
        )
    node = cfg.keypoints
    spec = get_keypoint_spec(OmegaConf.to_container(node) if isinstance(node, DictConfig) else node)
    if spec.num_keypoints != num_keypoints:
        raise ConversionError(
            f"the checkpoint predicts K={num_keypoints} keypoints, recipe {label} has "
            f"keypoints '{spec.name}' with K={spec.num_keypoints}"
        )
    return cfg


# ------------------------------------------------------------------------------------ writing
def atomic_write(path: Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_checkpoint(module: Any, path: PathLike, extra: Optional[dict] = None) -> Path:
    """Save a :class:`~dekr.module.DekrModule` as a minimal Lightning-compatible dekr
    checkpoint, atomically (see :func:`write_checkpoint`)."""
    recipe = OmegaConf.to_container(module.recipe, resolve=True)
    return write_checkpoint(module.state_dict(), recipe, path, extra)


def write_checkpoint(
    state: Mapping[str, Tensor], recipe: dict, path: PathLike, extra: Optional[dict] = None
) -> Path:
    """A minimal Lightning-compatible dekr checkpoint, written atomically: ``state_dict``
    (``model.<official key>``), ``hyper_parameters.recipe`` (the resolved recipe as a plain
    dict), ``pytorch-lightning_version``, ``epoch`` and ``global_step`` (0): what
    :func:`dekr.module.load_checkpoint` and Lightning read; ``extra`` entries are added (e.g. the
    converter version)."""
    import pytorch_lightning as pl

    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "hyper_parameters": {"recipe": recipe},
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
        **(extra or {}),
    }
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def official_state(source: PathLike, layout: str) -> dict[str, Tensor]:
    """The DEKR network state dict (official keys) of a file in ``official_dekr`` or
    ``mmpose_dekr`` layout."""
    if layout == "official_dekr":
        return read_weights(source)
    if layout == "mmpose_dekr":
        return mmpose_to_official(read_tensors_only(source), str(source))[0]
    raise ConversionError(f"{source}: layout {layout!r} is not a DEKR network layout")


def convert_official(
    source: PathLike,
    out: PathLike,
    *,
    recipe: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    layout: str = "official_dekr",
    recipes_dir: Optional[PathLike] = None,
) -> tuple[Path, Path, DictConfig]:
    """Official (or MMPose) DEKR checkpoint -> dekr checkpoint ``out`` and its recipe ``out``
    .yaml, loaded strictly.

    Returns:
        the checkpoint path, the YAML path and the resolved recipe.
    """
    state = official_state(source, layout)
    backbone = detect_backbone(state, str(source))
    k = detect_num_keypoints(state, str(source))
    cfg = official_recipe(backbone, k, recipe, overrides, recipes_dir)
    model = build_model(backbone, num_keypoints=k, adaptive_impl=cfg.model.adaptive_impl)
    load_official_dekr(model, state)  # strict: every key, every shape
    weights = {f"model.{key}": value for key, value in model.state_dict().items()}
    plain = OmegaConf.to_container(cfg, resolve=True)
    path = write_checkpoint(weights, plain, out, {"dekr_converter_version": CONVERTER_VERSION})
    yaml = path.with_suffix(".yaml")
    atomic_write(yaml, lambda tmp: tmp.write_text(OmegaConf.to_yaml(cfg)))
    return path, yaml, cfg


def backbone_state(source: PathLike) -> tuple[dict[str, Tensor], str]:
    """The backbone keys of an ImageNet HRNet classifier, checked by loading them into a
    backbone of the detected width; returns them and the backbone name."""
    state = read_weights(source)
    backbone = detect_backbone(state, str(source))
    kept = {k: v for k, v in state.items() if not k.startswith(CLASSIFICATION_ONLY_PREFIXES)}
    model = build_model(backbone, num_keypoints=1)  # heads are not loaded: any K works
    load_imagenet_backbone(model, kept)
    return kept, backbone


def convert_imagenet(source: PathLike, out: PathLike) -> tuple[Path, str, int]:
    """ImageNet HRNet classification checkpoint -> plain state dict of its backbone keys.

    Returns:
        the path written, the backbone name and the number of tensors.
    """
    kept, backbone = backbone_state(source)
    path = atomic_write(Path(out), lambda tmp: torch.save(kept, tmp))
    return path, backbone, len(kept)
