"""Checks a training run passes before anything is printed or written.

:func:`dekr.training.train` runs them in this order: recipe values (:func:`check_values`),
keypoint spec, data (the datasets are read), checkpoints (``resume``, ``model.weights``,
``model.pretrained``, ``decode.rescore_checkpoint``), devices (:func:`count_processes`), optimizer
steps per epoch (:func:`check_steps`) and the output folder (:func:`check_output_dir`); only then
is the Trainer built and ``recipe.yaml`` written. Each failure is a :class:`dekr.errors.UserError`
naming the key, file or value and what was expected.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dekr.errors import (
    CheckpointError,
    DeviceError,
    MissingDependencyError,
    MissingFileError,
    OutputDirError,
    OutputError,
    RecipeError,
)
from dekr.models.adaptive import ADAPTIVE_IMPLS
from dekr.models.hrnet import HRNET_SPECS
from dekr.models.weights import read_checkpoint

__all__ = [
    "check_values",
    "check_resume",
    "count_processes",
    "training_device",
    "check_steps",
    "check_output_dir",
    "clear_run",
    "is_rank_zero",
    "RUN_ENTRIES",
]

# What a run writes into its output_dir (removed by ``--overwrite``; anything else stays).
RUN_ENTRIES = ("recipe.yaml", "keypoints.json", "checkpoints", "logs", "wandb", "results.json")


# ------------------------------------------------------------------------ recipe values
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ge(low: float) -> Callable[[Any], bool]:
    return lambda v: _num(v) and v >= low


def _gt(low: float) -> Callable[[Any], bool]:
    return lambda v: _num(v) and v > low


def _within(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: _num(v) and low <= v <= high


def _opt(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


def _batches(v: Any) -> bool:
    """Lightning's limit_*_batches: an int counts batches, a float is a fraction."""
    return v is None or (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1)


def _interval(v: Any) -> bool:
    return v is None or (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)


def _scales(v: Any) -> bool:
    return bool(v) and all(_gt(0)(s) for s in v) and 1.0 in list(v)


def _milestones(v: Any) -> bool:
    """Epochs >= 0 in increasing order, or fractions of the run, all in (0, 1)."""
    fractions = bool(v) and all(_num(m) and 0 < m < 1 for m in v)
    epochs = all(_num(m) and m >= 1 for m in v) or not v
    return (fractions or epochs) and list(v) == sorted(v)


_COUNT, _PROB, _POS = "an integer >= 1", "a probability in [0, 1]", "a number > 0"
_LIMIT = "an int >= 0 (batches) or a float in [0, 1] (a fraction)"
# (dotted key, rule, what is expected); the rule sees the resolved value.
_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model.backbone", lambda v: v in HRNET_SPECS, f"one of {sorted(HRNET_SPECS)}"),
    ("model.adaptive_impl", lambda v: v in ADAPTIVE_IMPLS, f"one of {list(ADAPTIVE_IMPLS)}"),
    ("model.offset_blocks", _ge(1), _COUNT),
    ("data.source", lambda v: v in ("coco", "synthetic"), "coco or synthetic"),
    ("data.input_size", lambda v: _gt(0)(v) and v % 4 == 0, "a positive multiple of 4"),
    ("data.batch_size", _ge(1), _COUNT),
    ("data.val_batch_size", _ge(1), _COUNT),
    ("data.num_workers", _ge(0), "an integer >= 0"),
    ("data.max_val_images", _opt(_ge(1)), f"{_COUNT} or null (all)"),
    ("data.max_bad_image_fraction", _within(0, 1), "a fraction in [0, 1]"),
    ("data.synthetic.train_images", _ge(1), _COUNT),
    ("data.synthetic.val_images", _ge(1), _COUNT),
    ("data.synthetic.size", _ge(32), "an integer >= 32"),
    ("data.synthetic.max_people", _within(0, 250), "an integer in 0..250"),
    ("data.synthetic.min_height", _within(0.01, 1), "a fraction of the image height in (0, 1]"),
    ("data.synthetic.max_height", _within(0.01, 1), "a fraction of the image height in (0, 1]"),
    ("data.synthetic.occluder_prob", _within(0, 1), _PROB),
    ("data.synthetic.crowd_prob", _within(0, 1), _PROB),
    ("data.synthetic.unlabelled_prob", _within(0, 1), _PROB),
    ("data.synthetic.max_rotation", _ge(0), "degrees >= 0"),
    ("data.synthetic.jpeg_quality", _within(1, 100), "a JPEG quality in 1..100"),
    ("augment.min_scale", _gt(0), _POS),
    ("augment.max_scale", _gt(0), _POS),
    ("augment.max_rotation", _ge(0), "degrees >= 0"),
    ("augment.max_translate", _ge(0), "pixels >= 0"),
    ("augment.flip_prob", _within(0, 1), _PROB),
    ("targets.sigma", _gt(0), _POS),
    ("targets.center_sigma", _gt(0), _POS),
    ("targets.bg_weight", _ge(0), "a weight >= 0"),
    ("targets.offset_radius", _ge(0), "an integer >= 0"),
    ("targets.min_center_area", _ge(0), "an area >= 0"),
    ("loss.heatmap_factor", _ge(0), "a factor >= 0"),
    ("loss.offset_factor", _ge(0), "a factor >= 0"),
    ("loss.offset_beta", _gt(0), _POS),
    ("decode.max_people", _ge(1), _COUNT),
    ("decode.center_threshold", _ge(0), "a threshold >= 0"),
    ("decode.nms_threshold", _ge(0), "a threshold >= 0"),
    ("decode.nms_num", _opt(_ge(0)), "an integer >= 0 or null (K // 2)"),
    ("decode.matching.num_candidates", _ge(1), _COUNT),
    ("decode.matching.max_absorb_distance", _ge(0), "pixels >= 0"),
    ("decode.matching.pool_radius", _ge(0), "an integer >= 0"),
    ("decode.matching.window_radius", _ge(0), "an integer >= 0"),
    ("decode.scales", _scales, "a list of scales > 0 that holds 1.0 (the reference)"),
    ("decode.scale_decrease", _gt(0), _POS),
    ("optim.name", lambda v: v in ("adam", "adamw", "sgd"), "adam, adamw or sgd"),
    ("optim.lr", _gt(0), _POS),
    ("optim.weight_decay", _ge(0), "a number >= 0"),
    ("optim.schedule", lambda v: v in ("multistep", "cosine", "linear", "constant"),
     "multistep, cosine, linear or constant"),
    ("optim.milestones", _milestones,
     "epochs >= 1, or fractions of the run all in (0, 1), in increasing order"),
    ("optim.gamma", _gt(0), _POS),
    ("optim.warmup_epochs", _ge(0), "epochs >= 0"),
    ("optim.reference_batch", _ge(1), _COUNT),
    ("optim.ema_decay", _opt(lambda v: _num(v) and 0 < v < 1), "a decay in (0, 1) or null"),
    ("optim.offset_lr_factor", _gt(0), _POS),
    ("trainer.max_epochs", lambda v: v == -1 or _ge(1)(v), f"{_COUNT} (or -1: no limit)"),
    ("trainer.max_steps", lambda v: v == -1 or _ge(1)(v), f"{_COUNT} (or -1: no limit)"),
    ("trainer.max_time_minutes", _opt(_gt(0)), "minutes > 0 or null"),
    ("trainer.budget_minutes", _opt(_gt(0)), "minutes > 0 or null"),
    ("trainer.num_nodes", _ge(1), _COUNT),
    ("trainer.accumulate_grad_batches", _ge(1), _COUNT),
    ("trainer.gradient_clip_val", _opt(_ge(0)), "a norm >= 0 or null"),
    ("trainer.check_val_every_n_epoch", _ge(1), _COUNT),
    ("trainer.val_check_interval", _interval,
     "an int >= 1 (batches) or a float in (0, 1] (a fraction of the epoch)"),
    ("trainer.log_every_n_steps", _ge(1), _COUNT),
    ("trainer.limit_train_batches", _batches, _LIMIT),
    ("trainer.limit_val_batches", _batches, _LIMIT),
    ("trainer.num_sanity_val_steps", _ge(-1), "an integer >= -1"),
    ("trainer.max_bad_loss_batches", _ge(0), "an integer >= 0"),
    ("trainer.process_group_timeout_minutes", _gt(0), "minutes > 0"),
    ("trainer.log_images_every_n_epochs", _ge(0), "an integer >= 0 (0: never)"),
]  # fmt: skip


def check_values(recipe: DictConfig, *, custom_data: bool = False) -> None:
    """Every recipe value in its range (types are checked when the recipe loads).

    ``custom_data``: both datasets are given, so ``data.source`` and its paths are not used.
    """
    for key, rule, expected in _RULES:
        if custom_data and key.startswith(("data.source", "data.synthetic.")):
            continue
        value = OmegaConf.select(recipe, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if not rule(value):
            raise RecipeError(f"{key}={value!r}: expected {expected}")
    pairs = [("augment.min_scale", "augment.max_scale"),
             ("data.synthetic.min_height", "data.synthetic.max_height")]  # fmt: skip
    for low, high in pairs:
        if OmegaConf.select(recipe, low) > OmegaConf.select(recipe, high):
            raise RecipeError(
                f"{low}={OmegaConf.select(recipe, low)} is above "
                f"{high}={OmegaConf.select(recipe, high)}"
            )
    _check_budget(recipe)
    resume = recipe.resume
    if resume is not None and resume != "auto" and not Path(resume).is_file():
        state = "is a folder, not a checkpoint file" if Path(resume).is_dir() else "not found"
        raise MissingFileError(f"resume={resume}: checkpoint {state}", hint=_RESUME_HINT)
    if recipe.trainer.wandb_project and importlib.util.find_spec("wandb") is None:
        raise MissingDependencyError(
            f"trainer.wandb_project={recipe.trainer.wandb_project!r} needs wandb, which is not "
            "installed",
            hint='pip install "dekr[wandb]", or trainer.wandb_project=null',
        )


def _check_budget(recipe: DictConfig) -> None:
    """A time budget plans epochs, so the schedule's milestones must be fractions of the run,
    the epoch cap a number and Lightning's hard stop above the budget."""
    t, o = recipe.trainer, recipe.optim
    if not t.budget_minutes:
        return
    if o.schedule == "multistep" and any(m >= 1 for m in o.milestones):
        raise RecipeError(
            f"optim.milestones={list(o.milestones)} are epochs, but with trainer.budget_minutes="
            f"{t.budget_minutes:g} the number of epochs is planned from the measured speed",
            hint="give them as fractions of the run, e.g. optim.milestones=[0.64,0.86]",
        )
    if t.max_epochs == -1:
        raise RecipeError(
            "trainer.max_epochs=-1: with trainer.budget_minutes it is the most epochs the plan "
            "may take; give a number"
        )
    if t.max_time_minutes is not None and t.max_time_minutes <= t.budget_minutes:
        raise RecipeError(
            f"trainer.max_time_minutes={t.max_time_minutes:g} stops the run before its budget "
            f"trainer.budget_minutes={t.budget_minutes:g} ends; it is a safety net above it "
            "(null: 1.5 x the budget + 1 minute)"
        )


_RESUME_HINT = "resume=auto continues output_dir's last.ckpt; resume=PATH names a .ckpt file"


# ------------------------------------------------------------------------ checkpoints
def _heads(state: Mapping[str, Tensor], prefix: str) -> Optional[int]:
    """K of a DEKR state dict (heatmap output channels - 1), or None when it has no head."""
    weight = state.get(f"{prefix}head_heatmap.1.weight")
    return int(weight.shape[0]) - 1 if isinstance(weight, Tensor) else None


def check_resume(path: Path, own: Mapping[str, Tensor], backbone: str) -> Mapping[str, Any]:
    """``path`` is a dekr training checkpoint that Lightning can resume into the recipe's model
    (``own``: the LightningModule's state dict): same keys and shapes. Returns the recipe saved
    in it."""
    ckpt = read_checkpoint(path)
    what = f"resume={path}"
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{what}: not a dekr training checkpoint (no state_dict inside)")
    recipe = (ckpt.get("hyper_parameters") or {}).get("recipe")
    if recipe is None or "loops" not in ckpt or "optimizer_states" not in ckpt:
        raise CheckpointError(
            f"{what}: holds weights but no training state (recipe, optimizer, loops) to resume",
            hint="start from its weights instead: model.weights=PATH",
        )
    state = ckpt["state_dict"]
    theirs_k, own_k = _heads(state, "model."), _heads(own, "model.")
    their_backbone = (recipe.get("model") or {}).get("backbone", "?")
    if theirs_k != own_k or any(
        k not in own or tuple(v.shape) != tuple(own[k].shape) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{what}: the checkpoint's model (K={theirs_k} keypoints, backbone "
            f"{their_backbone}) is not the recipe's (K={own_k}, backbone {backbone})",
            hint="resume with the recipe of that run (its recipe.yaml), or start a new run "
            "from its weights: model.weights=PATH (model.weights_partial=true for another K)",
        )
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(f"{what}: the checkpoint lacks {missing[:3]}")
    return recipe


# ------------------------------------------------------------------------ devices
def _device_count(devices: Any) -> Optional[int]:
    """Lightning's ``devices`` as a count: an int (-1: all), a list, or "0,1" / "2"; None for
    ``auto`` or -1."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(list(devices))
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        return int(text)
    except ValueError:
        raise RecipeError(
            f"trainer.devices={devices!r}: expected auto, a count, -1 (all) or a list of ids"
        ) from None


def training_device(accelerator: str) -> torch.device:
    """The device Lightning trains on for ``trainer.accelerator`` (rank 0's; ``auto``: a CUDA
    GPU when there is one, else Apple MPS when there is one, else the CPU)."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    if name == "mps" or (name == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def count_processes(trainer: DictConfig) -> int:
    """The number of training processes (devices x nodes) Lightning will start; a
    :class:`DeviceError` for devices this machine does not have."""
    accelerator = str(trainer.accelerator).lower()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise DeviceError(
            f"trainer.accelerator={trainer.accelerator}: no CUDA GPU is available here "
            "(torch.cuda.is_available() is False)",
            hint="use trainer.accelerator=cpu, or auto (a GPU when there is one)",
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("trainer.accelerator=mps: no Apple MPS device is available here")
    count = _device_count(trainer.devices)
    on_gpu = training_device(accelerator).type == "cuda"
    if on_gpu:
        if count is not None and count > gpus:
            raise DeviceError(
                f"trainer.devices={trainer.devices}: {count} GPU(s) asked for, {gpus} available"
            )
        count = gpus if count is None else count
    elif accelerator in ("cpu", "auto"):
        every = str(trainer.devices).strip() == "-1"  # Lightning: "all" exists for GPUs only
        if every or (count is not None and count < 1):
            raise DeviceError(
                f"trainer.devices={trainer.devices} on the CPU: expected a process count >= 1"
            )
        count = 1 if count is None else count
    return max(count or 1, 1) * int(trainer.num_nodes)


# ------------------------------------------------------------------------ steps per epoch
def check_steps(recipe: DictConfig, images: int, processes: int) -> int:
    """Training batches per process and epoch (Lightning's DistributedSampler pads the images to
    a multiple of the process count; incomplete batches are dropped); zero is an error."""
    batch = int(recipe.data.batch_size)
    per_process = math.ceil(images / processes)
    batches = per_process // batch
    limit = recipe.trainer.limit_train_batches
    limited = batches
    if isinstance(limit, float):
        limited = int(batches * limit)
    elif isinstance(limit, int):
        limited = min(batches, limit)
    if limited >= 1:
        return limited
    if batches == 0:
        raise RecipeError(
            f"no optimizer step per epoch: {images} training image(s) shared by {processes} "
            f"process(es) (trainer.devices x trainer.num_nodes) give {per_process} per process, "
            f"fewer than data.batch_size={batch} (incomplete batches are dropped)",
            hint=f"use data.batch_size<={per_process}, fewer processes or more images",
        )
    raise RecipeError(
        f"no optimizer step per epoch: trainer.limit_train_batches={limit} of {batches} "
        f"batch(es) leaves none ({images} training image(s), {processes} process(es), "
        f"data.batch_size={batch})"
    )


# ------------------------------------------------------------------------ output folder
def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_output_dir(output_dir: Path, resume: Optional[str], *, overwrite: bool) -> None:
    """``output_dir`` is a new or empty folder, or holds the run that ``resume`` continues
    (``auto``, or a checkpoint inside it), or ``overwrite`` was asked for; and it can be
    created and written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output_dir={output_dir} is a file, not a folder")
    continues = resume == "auto" or (resume is not None and _inside(Path(resume), output_dir))
    if output_dir.is_dir() and not (continues or overwrite):
        entries = sorted(p.name for p in output_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise OutputDirError(
                f"output_dir={output_dir} is not empty ({shown}): continue that run with "
                "resume=auto, choose a new output_dir, or replace it with --overwrite"
            )
    check_creatable(output_dir, f"output_dir={output_dir}")


def check_creatable(path: Path, label: str) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable folder. ``label``
    names the argument in the error (``output_dir=...``, ``--out ...``)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{label}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: the folder {existing} is not writable")


def clear_run(output_dir: Path) -> list[str]:
    """Remove what an earlier run wrote into ``output_dir`` (:data:`RUN_ENTRIES`; other files
    stay). Returns the names removed."""
    import shutil

    removed = []
    for name in RUN_ENTRIES:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def is_rank_zero() -> bool:
    """False in the processes Lightning (or torchrun / SLURM) starts for ranks > 0: they run the
    same command line again, after rank 0 has checked and written the output folder."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "0").strip() not in ("", "0"):
            return False
    return True
