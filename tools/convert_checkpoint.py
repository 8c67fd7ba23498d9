"""Convert official DEKR checkpoints and ImageNet HRNets into files ``dekr`` reads directly.

``official``: an official DEKR checkpoint (``pose_dekr_hrnetw32_coco.pth`` layout; COCO or
CrowdPose, W32 or W48, told apart by its tensors) becomes a dekr checkpoint (``.ckpt``) that
:func:`dekr.module.load_checkpoint`, ``dekr-eval``, ``dekr-predict`` and ``dekr-export`` accept:
the matching recipe of ``recipes/`` (plus overrides) and the weights, loaded strictly. The
resolved recipe is also written as YAML next to it.

``imagenet``: an ImageNet HRNet classification checkpoint (official ``hrnet_w32-36af842e.pth`` or
timm ``hrnet_w32``) becomes a plain state dict of the backbone keys, checked by loading it into
the backbone of the detected width; use it with ``model.pretrained=FILE``.

``mmpose``: an MMPose 1.x DEKR checkpoint (``dekr_hrnet-w32_..._ac7c17bf-20221228.pth``) becomes a
dekr checkpoint as in ``official`` (key map: :func:`dekr.convert.mmpose_to_official`).

The conversions live in :mod:`dekr.convert`; registered weights are converted by name without
this script (``dekr-predict NAME ...``, see :func:`dekr.list_weights`).

    python tools/convert_checkpoint.py official pose_dekr_hrnetw32_coco.pth --out w32.ckpt \\
        data.val_images=/data/coco/val2017
    python tools/convert_checkpoint.py imagenet hrnet_w32-36af842e.pth --out hrnet_w32.pth

Bad input (a missing file, an unknown keypoint count, a file of another layout) ends with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from omegaconf import DictConfig

from dekr import convert as _convert
from dekr.convert import (
    DATASETS,
    ConversionError,
    convert_imagenet,
    detect_backbone,
    detect_num_keypoints,
    read_weights,
    save_checkpoint,
)

__all__ = [
    "ConversionError",
    "DATASETS",
    "detect_backbone",
    "detect_num_keypoints",
    "official_recipe",
    "save_checkpoint",
    "convert_official",
    "convert_imagenet",
    "read_weights",
    "main",
]

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PathLike = Union[str, Path]


def official_recipe(
    backbone: str,
    num_keypoints: int,
    recipe: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """:func:`dekr.convert.official_recipe` with the repository's ``recipes/`` folder."""
    return _convert.official_recipe(backbone, num_keypoints, recipe, overrides, RECIPES)


def convert_official(
    source: PathLike,
    out: PathLike,
    *,
    recipe: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
    layout: str = "official_dekr",
) -> tuple[Path, Path, DictConfig]:
    """:func:`dekr.convert.convert_official` with the repository's ``recipes/`` folder."""
    return _convert.convert_official(
        source, out, recipe=recipe, overrides=overrides, layout=layout, recipes_dir=RECIPES
    )


def _official_main(argv: list[str], layout: str = "official_dekr") -> int:
    what = "Official" if layout == "official_dekr" else "MMPose 1.x"
    parser = argparse.ArgumentParser(
        prog=f"convert_checkpoint.py {'official' if layout == 'official_dekr' else 'mmpose'}",
        description=f"{what} DEKR checkpoint -> dekr checkpoint (.ckpt) and recipe YAML.",
    )
    parser.add_argument("input", type=Path, help=f"{what} DEKR checkpoint (.pth)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.val_images=...")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint (.ckpt)")
    parser.add_argument("--recipe", default=None, help="recipe name or YAML (default: by K, W)")
    args = parser.parse_intermixed_args(argv)
    path, yaml, cfg = convert_official(
        args.input, args.out, recipe=args.recipe, overrides=args.overrides, layout=layout
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


MODES = {
    "official": _official_main,
    "mmpose": lambda argv: _official_main(argv, layout="mmpose_dekr"),
    "imagenet": _imagenet_main,
}
USAGE = "usage: convert_checkpoint.py {official,mmpose,imagenet} IN --out OUT [options]"
MODE_HELP = "A mode's options: convert_checkpoint.py MODE --help"


def main(argv: Optional[list[str]] = None) -> int:
    """``convert_checkpoint.py {official,mmpose,imagenet} IN --out OUT [...]``; the exit code."""
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
