"""Recipes: typed sections merged with omegaconf, so a wrong key or type fails at load time.

A recipe is a YAML file whose sections mirror the dataclasses below; ``key=value`` overrides use
dotted paths (``trainer.devices=8 data.batch_size=5``). Field names equal the constructor argument
names of what they configure. ``_target_`` import paths appear only where users plug in their own
code (``data.train_dataset``, ``data.val_dataset``): such a recipe runs the user's code, so only
load recipes you trust.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dekr.errors import RecipeError, first_line

__all__ = [
    "Recipe",
    "RecipeError",
    "load_recipe",
    "recipe_from_dict",
    "import_target",
]


@dataclass
class ModelConfig:
    backbone: str = "hrnet_w32"  # a name from dekr.models.hrnet.HRNET_SPECS
    adaptive_impl: str = "auto"  # auto | deform | grid_sample (same weights)
    offset_scale: float = 1.0  # output px per unit of the offset convs' output (official: 1)
    offset_blocks: int = 2  # AdaptBlocks in each keypoint's offset branch (official: 2)
    pretrained: Optional[str] = None  # ImageNet HRNet checkpoint for the backbone (official/timm)
    weights: Optional[str] = None  # DEKR weights to start from: official .pth or a dekr .ckpt
    # weights of another keypoint count: load the backbone and K-independent head layers only
    weights_partial: bool = False
    channels_last: bool = False  # NHWC memory format (measured 1.5x faster training on CPU)
    # official: N(0, 0.001²) convolutions (an ImageNet backbone is loaded over them); scratch:
    # Kaiming-scale convolutions before BatchNorms, for training without pretrained weights
    init: str = "official"


@dataclass
class SyntheticConfig:
    root: str = "data/synthetic"
    train_images: int = 1000
    val_images: int = 200
    size: int = 256  # side of the square images (dekr.data.synthetic.ensure_synthetic_splits)
    seed: int = 0
    # scene difficulty (dekr.data.synthetic.SceneOptions)
    max_people: int = 6
    min_height: float = 0.25  # smallest person, fraction of the image height
    max_height: float = 0.85
    occluder_prob: float = 0.3
    crowd_prob: float = 0.1
    unlabelled_prob: float = 0.02
    max_rotation: float = 12.0  # in-plane rotation of a figure, degrees
    jpeg_quality: int = 95
    # processes that render (None: one per CPU core; the images are the same for any count)
    workers: Optional[int] = None


@dataclass
class DataConfig:
    # "coco": COCO-format JSON + image folder; "synthetic": the embedded generator.
    source: str = "coco"
    train_annotations: Optional[str] = None
    train_images: Optional[str] = None
    val_annotations: Optional[str] = None
    val_images: Optional[str] = None
    # Any Dataset of raw samples (docs/architecture.md) instead: {_target_: pkg.Class, arg: ...}
    train_dataset: Optional[dict[str, Any]] = None
    val_dataset: Optional[dict[str, Any]] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    input_size: int = 512  # DATASET.INPUT_SIZE (512 for W32, 640 for W48)
    batch_size: int = 10  # images per process (TRAIN.IMAGES_PER_GPU)
    val_batch_size: int = 4
    num_workers: int = 4  # WORKERS
    pin_memory: bool = True
    persistent_workers: bool = True
    drop_images_without_annotations: bool = True  # official train list: >= 1 annotation
    max_val_images: Optional[int] = None
    max_bad_image_fraction: float = 0.01  # unreadable training images skipped up to this fraction


@dataclass
class AugmentConfig:
    min_scale: float = 0.75  # DATASET.MIN_SCALE
    max_scale: float = 1.5  # DATASET.MAX_SCALE
    max_rotation: float = 30.0  # DATASET.MAX_ROTATION
    max_translate: float = 40.0  # DATASET.MAX_TRANSLATE
    flip_prob: float = 0.5  # DATASET.FLIP


@dataclass
class TargetConfig:
    sigma: float = 2.0  # DATASET.SIGMA
    center_sigma: float = 4.0  # DATASET.CENTER_SIGMA
    bg_weight: float = 0.1  # DATASET.BG_WEIGHT
    offset_radius: int = 4  # DATASET.OFFSET_RADIUS
    min_center_area: float = 1024.0  # 32²: smaller people get no centre (COCOKeypoints.py)
    min_box_diagonal: float = 32.0  # input px; offset weights use max(person diagonal, this)
    on_device: bool = False  # build targets on the training device instead of in workers
    # the official targets exactly (area rule, (0, 0) centre, 8x8 window, overlap rule, flip at
    # output resolution, official reader); default: the fixed rules of dekr/targets.py
    official: bool = False


@dataclass
class LossConfig:
    heatmap_factor: float = 1.0  # LOSS.HEATMAPS_LOSS_FACTOR
    offset_factor: float = 0.03  # LOSS.OFFSETS_LOSS_FACTOR ("reg03")
    offset_beta: float = 1.0 / 9  # smooth-L1 beta (loss.py)


@dataclass
class MatchConfig:
    """Heatmap matching (``decode.match_heatmaps``): :class:`dekr.matching.MatchSettings`."""

    num_candidates: int = 30  # peaks per keypoint type (DATASET.MAX_NUM_PEOPLE)
    max_absorb_distance: float = 75.0  # input px (TEST.MAX_ABSORB_DISTANCE)
    adjust_threshold: float = 0.05  # joints above this score are refined (TEST.ADJUST_THRESHOLD)
    pool_radius: float = 2.0  # input px of the peak max-filter
    window_radius: float = 6.0  # input px of the refinement window


@dataclass
class DecodeConfig:
    max_people: int = 30  # DATASET.MAX_NUM_PEOPLE
    center_threshold: float = 0.01  # TEST.KEYPOINT_THRESHOLD
    nms_threshold: float = 0.05  # TEST.NMS_THRE (0.15 for multi-scale)
    # TEST.NMS_NUM_THRE; None = K // 2 of the keypoint set (COCO 8, CrowdPose 7, as official)
    nms_num: Optional[int] = None
    # centre NMS kernel 3 / 5 / 7 above these map sizes (TEST.POOL_THRESHOLD2, POOL_THRESHOLD1)
    pool_thresholds: list[int] = field(default_factory=lambda: [200, 300])
    flip: bool = True  # TEST.FLIP_TEST
    # input px; 3 = stride - 1 mirrors the maps exactly on the output grid (official TEST flip)
    flip_shift: int = 3
    scales: list[float] = field(default_factory=lambda: [1.0])  # TEST.SCALE_FACTOR
    scale_decrease: float = 0.9  # TEST.DECREASE (COCO 0.9, CrowdPose 0.8)
    match_heatmaps: bool = False  # TEST.MATCH_HMP
    matching: MatchConfig = field(default_factory=MatchConfig)
    rescore_checkpoint: Optional[str] = None  # rescoring net weights (tools/train_rescore.py)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3  # TRAIN.LR
    weight_decay: float = 0.0  # official Adam: no weight decay
    momentum: float = 0.9  # sgd only
    schedule: str = "multistep"  # multistep | cosine | linear | constant
    # TRAIN.LR_STEP: epochs, or fractions of the run (all in (0, 1)), as a budget run needs
    milestones: list[float] = field(default_factory=lambda: [90, 120])
    gamma: float = 0.1  # TRAIN.LR_FACTOR
    warmup_epochs: float = 0.0
    reference_batch: int = 40  # global batch of the official recipe (4 GPUs x 10)
    scale_lr: bool = False  # linear scaling lr x global_batch / reference_batch
    ema_decay: Optional[float] = None  # weight EMA (e.g. 0.9998); None = off
    # lr multiplier of the offset output convs (offset_final_layer). Offsets are regressed in
    # output pixels (up to tens), so with Adam's ~lr-sized steps their output layer needs many
    # steps to reach that scale: > 1 speeds up short runs. The official recipes use 1.
    offset_lr_factor: float = 1.0


@dataclass
class TrainerConfig:
    max_epochs: int = 140  # TRAIN.END_EPOCH
    max_steps: int = -1  # optimizer steps (-1: no limit); with it the schedule spans max_steps
    # a wall-clock budget for the whole run that the schedule follows (dekr/budget.py); with
    # it, max_epochs is the most epochs the plan may take
    budget_minutes: Optional[float] = None
    max_time_minutes: Optional[float] = None  # Lightning's hard stop: a safety net
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    # 32-true | 16-mixed | bf16-mixed | auto: bf16-mixed where it trains faster (dekr/precision.py)
    precision: str = "32-true"
    sync_batchnorm: bool = False
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    check_val_every_n_epoch: int = 10
    # Lightning's meaning: an int counts batches, a float is a fraction (1 = one batch, 1.0 = all)
    val_check_interval: Optional[Union[int, float]] = None
    log_every_n_steps: int = 50
    limit_train_batches: Optional[Union[int, float]] = None
    limit_val_batches: Optional[Union[int, float]] = None
    deterministic: bool = False
    benchmark: bool = True  # cudnn.benchmark, as the official training
    num_sanity_val_steps: int = 0
    max_bad_loss_batches: int = 0  # non-finite losses tolerated (skipped) before stopping
    process_group_timeout_minutes: float = 30.0  # DDP collective timeout (torch default 30)
    log_images_every_n_epochs: int = 1
    wandb_project: Optional[str] = None  # also log to Weights & Biases (pip install "dekr[wandb]")


@dataclass
class Recipe:
    keypoints: Any = "coco"  # a built-in name or an inline spec {names, sigmas, flip_pairs, ...}
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output_dir: str = "outputs/run"
    seed: int = 0
    resume: Optional[str] = None  # auto | PATH


def _valid_keys(section: type | None) -> list[str]:
    return (
        [f.name for f in fields(section)] if section is not None and is_dataclass(section) else []
    )


def _section_type(dotted: str) -> type | None:
    cls: Any = Recipe
    for part in dotted.split(".")[:-1] if dotted else []:
        match = {f.name: f.type for f in fields(cls)}.get(part)
        cls = globals().get(match) if isinstance(match, str) else match
        if cls is None or not is_dataclass(cls):
            return None
    return cls


# keys that were renamed: the old spelling's error names the new one
_RENAMED = {"data.synthetic.image_size": "data.synthetic.size"}


def _explain(err: OmegaConfBaseException, source: str) -> RecipeError:
    key = getattr(err, "full_key", None) or ""
    msg = first_line(err)
    if "not in" in msg or "Key" in msg and "not" in msg:
        options = _valid_keys(_section_type(key))
        if key in _RENAMED:
            return RecipeError(f"{source}: unknown key '{key}': it is now '{_RENAMED[key]}'")
        near = difflib.get_close_matches(key.split(".")[-1], options, n=1)
        hint = f"; did you mean '{'.'.join([*key.split('.')[:-1], near[0]])}'?" if near else ""
        return RecipeError(f"{source}: unknown key '{key}'{hint} (valid here: {options})")
    return RecipeError(f"{source}: bad value for '{key}': {msg}")


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """The typed recipe schema, built once (reading the dataclasses takes most of a recipe load);
    ``OmegaConf.merge`` copies it and never changes it."""
    return OmegaConf.structured(Recipe)


def recipe_from_dict(
    data: Any, overrides: list[str] | tuple[str, ...] = (), *, source: str = "recipe"
) -> DictConfig:
    """Merge a mapping (or DictConfig) and ``key=value`` overrides into the typed schema."""
    schema = _schema()
    if not isinstance(data, (Mapping, DictConfig)):
        raise RecipeError(
            f"{source}: a recipe is a mapping of sections (model, data, ...), "
            f"got {'a list' if isinstance(data, (list, ListConfig)) else type(data).__name__}"
        )
    try:
        for item in overrides:
            if "=" not in item:
                raise RecipeError(f"override {item!r} is not of the form key=value")
        # one merge for all overrides (later ones win): each merge copies the whole recipe
        merged = OmegaConf.merge(schema, data, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise _explain(err, source) from None
    check_targets(merged, source)
    return merged


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a recipe YAML (safe loader) with dotted ``key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise RecipeError(f"recipe path {path} is a folder; give a recipe YAML file")
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors (with their line and column), bad encodings
        raise _yaml_error(err, path) from None
    return recipe_from_dict(data, overrides, source=str(path))


def _yaml_error(err: Exception, path: Path) -> RecipeError:
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or first_line(err)
    return RecipeError(f"{where}: not a valid YAML recipe: {problem}")


def import_target(target: str) -> Any:
    """Import ``package.module.Name``; a clear error when it does not exist."""
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise RecipeError(f"_target_ {target!r} is not an import path like 'package.module.Name'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"_target_ {target!r} cannot be imported: {err}") from None


def check_targets(recipe: DictConfig, source: str) -> None:
    """Bind every ``_target_`` section's arguments against the callable's signature now."""
    for key in ("train_dataset", "val_dataset"):
        node = recipe.data.get(key)
        if node is None:
            continue
        kwargs = OmegaConf.to_container(node, resolve=True)
        target = kwargs.pop("_target_", None)
        if not target:
            raise RecipeError(f"{source}: data.{key} needs a '_target_' import path")
        obj = import_target(target)
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        if "spec" in params and "spec" not in kwargs:
            kwargs["spec"] = None  # injected at build time
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for name in [] if takes_any else sorted(set(kwargs) - set(params)):
            near = difflib.get_close_matches(name, list(params), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; it takes {list(params)}"
            raise RecipeError(f"{source}: data.{key}.{name} is not an argument of {target}{hint}")
        try:
            inspect.signature(obj).bind(**kwargs)
        except TypeError as err:
            raise RecipeError(f"{source}: data.{key} ({target}): {err}") from None
