"""Convert official DEKR checkpoints and ImageNet HRNets into files ``dekr`` reads directly.

``official``: an official DEKR checkpoint (``pose_dekr_hrnetw32_coco.pth`` layout; COCO or
CrowdPose, W32 or W48, told apart by its tensors) becomes a dekr checkpoint (``.ckpt``) that
:func:`dekr.module.load_checkpoint`, ``dekr-eval``, ``dekr-predict`` and ``dekr-export`` accept:
the matching recipe of ``recipes/`` (plus overrides) and the weights, loaded strictly. The
resolved recipe is also written as YAML next to it.

``imagenet``: an ImageNet HRNet classification checkpoint (official ``hrnet_w32-36af842e.pth`` or
timm ``hrnet_w32``) becomes a plain state dict of the backbone keys, checked by loading it into
the backbone of the detected width; use it with ``model.pretrained=FILE``.

    python tools/convert_checkpoint.py official pose_dekr_hrnetw32_coco.pth --out w32.ckpt \\
        data.val_images=/data/coco/val2017
    python tools/convert_checkpoint.py imagenet hrnet_w32-36af842e.pth --out hrnet_w32.pth

Bad input (a missing file, an unknown keypoint count, a file of another layout) ends with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dekr.config import load_recipe
from dekr.models.dekr import build_model
from dekr.models.hrnet import HRNET_SPECS
from dekr.models.weights import (
    CLASSIFICATION_ONLY_PREFIXES,
    load_imagenet_backbone,
    load_official_dekr,
    read_state_dict,
)
from dekr.module import DekrModule, spec_from_recipe

__all__ = [
    "ConversionError",
    "DATASETS",
    "detect_backbone",
    "detect_num_keypoints",
    "official_recipe",
    "save_checkpoint",
    "convert_official",
    "convert_imagenet",
    "main",
]

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DATASETS = {17: "coco", 14: "crowdpose"}  # K -> recipe prefix (recipes/<dataset>_w<width>.yaml)
PathLike = Union[str, Path]


class ConversionError(ValueError):
    """A file that cannot be converted, with the reason."""


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


def _shape(state: Mapping[str, Tensor], key: str, source: str, hint: str) -> tuple[int, ...]:
    if key not in state:
        if any(k.startswith("model.") for k in state):
            raise ConversionError(
                f"{source} is already a dekr checkpoint (keys 'model.*'); use it as it is"
            )
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


def official_recipe(
    backbone: str,
    num_keypoints: int,
    recipe: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """The recipe for a checkpoint: ``recipe`` (a file or a name in ``recipes/``) or the one
    matching K and the backbone, with ``key=value`` overrides; it must agree with both."""
    if recipe is None:
        dataset = DATASETS.get(num_keypoints)
        if dataset is None:
            raise ConversionError(
                f"checkpoint predicts K={num_keypoints} keypoints; no official recipe has that "
                f"(COCO 17, CrowdPose 14): pass --recipe"
            )
        recipe = f"{dataset}_{backbone.removeprefix('hrnet_')}"
    path = Path(recipe)
    if not path.is_file() and not path.suffix:
        path = RECIPES / f"{recipe}.yaml"
    if not path.is_file():
        raise ConversionError(f"recipe not found: {recipe} (looked for {path}); pass --recipe")
    cfg = load_recipe(path, list(overrides))
    if cfg.model.backbone != backbone:
        raise ConversionError(
            f"recipe {path.name} has model.backbone={cfg.model.backbone}, the checkpoint is "
            f"{backbone}"
        )
    spec = spec_from_recipe(cfg)
    if spec.num_keypoints != num_keypoints:
        raise ConversionError(
            f"the checkpoint predicts K={num_keypoints} keypoints, recipe {path.name} has "
            f"keypoints '{spec.name}' with K={spec.num_keypoints}"
        )
    return cfg


def _atomic_write(path: Path, write: Any) -> Path:
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


def save_checkpoint(module: DekrModule, path: PathLike) -> Path:
    """Save ``module`` as a minimal Lightning-compatible dekr checkpoint, atomically.

    The file holds ``state_dict`` (``model.<official key>``), ``hyper_parameters.recipe`` (the
    resolved recipe as a plain dict), ``pytorch-lightning_version``, ``epoch`` and
    ``global_step`` (0): what :func:`dekr.module.load_checkpoint` and Lightning read.
    """
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "hyper_parameters": {"recipe": OmegaConf.to_container(module.recipe, resolve=True)},
        "pytorch-lightning_version": pl.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    return _atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def convert_official(
    source: PathLike,
    out: PathLike,
    *,
    recipe: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
) -> tuple[Path, Path, DictConfig]:
    """Official DEKR checkpoint -> dekr checkpoint ``out`` and its recipe ``out`` .yaml.

    Returns:
        the checkpoint path, the YAML path and the resolved recipe.
    """
    state = read_weights(source)
    backbone = detect_backbone(state, str(source))
    k = detect_num_keypoints(state, str(source))
    cfg = official_recipe(backbone, k, recipe, overrides)
    module = DekrModule.from_recipe(cfg)
    load_official_dekr(module.model, state)
    path = save_checkpoint(module, out)
    yaml = path.with_suffix(".yaml")
    _atomic_write(yaml, lambda tmp: tmp.write_text(OmegaConf.to_yaml(module.recipe)))
    return path, yaml, module.recipe


def convert_imagenet(source: PathLike, out: PathLike) -> tuple[Path, str, int]:
    """ImageNet HRNet classification checkpoint -> plain state dict of its backbone keys.

    The result is checked by :func:`load_imagenet_backbone` into a model of the detected width.

    Returns:
        the path written, the backbone name and the number of tensors.
    """
    state = read_weights(source)
    backbone = detect_backbone(state, str(source))
    kept = {k: v for k, v in state.items() if not k.startswith(CLASSIFICATION_ONLY_PREFIXES)}
    model = build_model(backbone, num_keypoints=1)  # heads are not loaded: any K works
    count = load_imagenet_backbone(model, kept)
    loaded = model.state_dict()
    if any(not torch.equal(loaded[key], value) for key, value in kept.items()):
        raise ConversionError(f"{source}: tensors changed while loading")  # defensive
    path = _atomic_write(Path(out), lambda tmp: torch.save(kept, tmp))
    return path, backbone, count


def _official_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_checkpoint.py official",
        description="Official DEKR checkpoint -> dekr checkpoint (.ckpt) and recipe YAML.",
    )
    parser.add_argument("input", type=Path, help="official DEKR checkpoint (.pth)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.val_images=...")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint (.ckpt)")
    parser.add_argument("--recipe", default=None, help="recipe name or YAML (default: by K, W)")
    args = parser.parse_intermixed_args(argv)
    path, yaml, cfg = convert_official(
        args.input, args.out, recipe=args.recipe, overrides=args.overrides
    )
    print(f"wrote {path} ({cfg.model.backbone}, keypoints {cfg.keypoints}) and {yaml}")
    print(f"evaluate: dekr-eval {path} data.val_images=... data.val_annotations=...")
    return 0


def _imagenet_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_checkpoint.py imagenet",
        description="ImageNet HRNet classification checkpoint -> backbone initialisation file.",
    )
    parser.add_argument("input", type=Path, help="official or timm HRNet checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="output state dict (.pth)")
    args = parser.parse_args(argv)
    path, backbone, count = convert_imagenet(args.input, args.out)
    print(f"wrote {path}: {count} backbone tensors of {backbone}")
    print(f"recipe line: model.backbone={backbone} model.pretrained={path.resolve()}")
    return 0


MODES = {"official": _official_main, "imagenet": _imagenet_main}
USAGE = "usage: convert_checkpoint.py {official,imagenet} IN --out OUT [options]"
MODE_HELP = "A mode's options: convert_checkpoint.py MODE --help"


def main(argv: Optional[list[str]] = None) -> int:
    """``convert_checkpoint.py {official,imagenet} IN --out OUT [...]``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE, __doc__.strip(), MODE_HELP, sep="\n\n")
        return 0
    if not argv or argv[0] not in MODES:
        print(f"error: {USAGE}", file=sys.stderr)
        return 2
    try:
        return MODES[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {str(err).strip() or type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
