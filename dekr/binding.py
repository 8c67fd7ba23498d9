"""The one edge where recipe sections become objects.

Each :class:`Binding` names a recipe section and the callables whose keyword arguments its fields
are. :func:`section_kwargs` turns the section into those keyword arguments by name, so no field is
ever copied by hand; fields that belong to the run rather than to the object (where the object is
built, how often something happens) are listed in ``exempt`` with the reason, and everything else
must be an argument of the target with the same default (``tests/test_binding.py`` checks both
directions). Settings whose right value depends on the keypoint set are ``None`` in the recipe and
resolved by the object from its :class:`~dekr.keypoints.KeypointSpec` (e.g. ``decode.nms_num``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dekr.config import (
    AugmentConfig,
    DataConfig,
    DecodeConfig,
    LossConfig,
    MatchConfig,
    ModelConfig,
    SyntheticConfig,
    TargetConfig,
    TrainerConfig,
)

__all__ = [
    "Binding",
    "BINDINGS",
    "binding",
    "section_kwargs",
    "target_kwargs",
    "decoder_kwargs",
    "trainer_kwargs",
]


@dataclass(frozen=True)
class Binding:
    """A recipe section and the callables its fields are arguments of.

    Args:
        section: dotted recipe path (``"decode"``, ``"data.synthetic"``).
        schema: the section's dataclass in :mod:`dekr.config`.
        targets: ``"module:qualname"`` of the callables; a field is an argument of one of them.
        exempt: fields that are not arguments of a target, each with the reason.
        given: target arguments that the run supplies (not recipe fields), each with the reason.
        defaults: fields whose default differs on purpose from the target's, with the reason.
        complete: every target argument is a field or ``given``.
    """

    section: str
    schema: type
    targets: tuple[str, ...]
    exempt: Mapping[str, str] = field(default_factory=dict)
    given: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, str] = field(default_factory=dict)
    # every argument of the targets is a field or given (False where the target is a library's
    # class with many settings dekr does not expose, e.g. Lightning's Trainer)
    complete: bool = True

    def resolve_targets(self) -> list[Callable[..., Any]]:
        import importlib

        out = []
        for path in self.targets:
            module, _, name = path.partition(":")
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            out.append(obj)
        return out


_OFFICIAL = "the official recipe's value, which dekr keeps as its default"

BINDINGS: tuple[Binding, ...] = (
    Binding(
        "model",
        ModelConfig,
        ("dekr.models.dekr:build_model",),
        exempt={
            "pretrained": "a file loaded into the built backbone (dekr.models.weights)",
            "weights": "a file loaded into the built network (dekr.models.weights)",
            "weights_partial": "how model.weights loads: re-initialise layers of another K",
            "channels_last": "the memory format the LightningModule runs the network in",
        },
        given={"num_keypoints": "the recipe's keypoint set"},
    ),
    Binding(
        "targets",
        TargetConfig,
        ("dekr.targets:encode_targets", "dekr.targets:encode_targets_batch"),
        exempt={"on_device": "where the targets are built (data workers or training device)"},
        given={
            "keypoints": "the sample",
            "areas": "the sample",
            "valid_mask": "the sample",
            "output_size": "data.input_size / stride",
            "stride": "the network's output stride",
            "official_centers": "the sample (official mode)",
            "official_areas": "the sample (official mode)",
        },
    ),
    Binding("loss", LossConfig, ("dekr.loss:DEKRLoss",)),
    Binding(
        "decode",
        DecodeConfig,
        ("dekr.decoder:DEKRDecoder",),
        exempt={
            "flip": "test-time augmentation of the run (dekr.inference.predict_poses)",
            "flip_shift": "test-time augmentation of the run (dekr.inference.predict_poses)",
            "scales": "test-time augmentation of the run (dekr.inference.predict_poses)",
            "rescore_checkpoint": "a file; the decoder gets the loaded Rescorer as `rescorer`",
        },
        given={
            "spec": "the recipe's keypoint set",
            "stride": "the network's output stride",
            "rescorer": "loaded from decode.rescore_checkpoint",
        },
    ),
    Binding("decode.matching", MatchConfig, ("dekr.matching:MatchSettings",)),
    Binding(
        "augment",
        AugmentConfig,
        ("dekr.data.transforms:sample_affine_params",),
        exempt={"flip_prob": "the sample transform's flip (dekr.data.datamodule)"},
        given={"rng": "the worker's generator", "image_hw": "the sample"},
    ),
    Binding(
        "data.synthetic",
        SyntheticConfig,
        ("dekr.data.synthetic:ensure_synthetic_splits", "dekr.data.synthetic:SceneOptions"),
        given={
            "spec": "the recipe's keypoint set",
            "options": "built from the same fields",
            "progress": "a message and a progress bar on rank 0",
        },
        defaults={"root": "the library function needs a folder; a recipe's is data/synthetic"},
    ),
    Binding(
        "data",
        DataConfig,
        ("dekr.data.datamodule:DekrDataModule",),
        exempt={
            "source": "which reader builds the datasets (dekr.training)",
            "synthetic": "the synthetic source's own section, bound as data.synthetic",
            "train_annotations": "the training reader's file",
            "train_images": "the training reader's folder",
            "val_annotations": "the validation reader's file",
            "val_images": "the validation reader's folder",
            "train_dataset": "a user dataset built from its own _target_",
            "val_dataset": "a user dataset built from its own _target_",
            "input_size": "the sample transform's input side and the inference settings",
            "drop_images_without_annotations": "the training reader's image list",
            "max_val_images": "a subset of the validation reader",
            "max_bad_image_fraction": "the training split's unreadable-image rule",
        },
        given={
            "train_dataset": "built from the recipe's data source",
            "val_dataset": "built from the recipe's data source",
            "targets_on_device": "targets.on_device",
            "target_kwargs": "the targets section",
            "drop_last": "always on for training, as the official loader",
        },
        defaults={
            "val_batch_size": "batched validation by default in a recipe",
            "num_workers": "a training run uses worker processes; the library class none",
            "pin_memory": "faster host-to-GPU copies in a training run",
            "persistent_workers": "workers kept between epochs in a training run",
        },
    ),
    Binding(
        "trainer",
        TrainerConfig,
        ("pytorch_lightning:Trainer",),
        exempt={
            "max_time_minutes": "Lightning's `max_time`, given in minutes",
            "budget_minutes": "the run's time budget (dekr.budget.TimeBudget)",
            "max_bad_loss_batches": "the LightningModule's non-finite loss rule",
            "process_group_timeout_minutes": "the DDP strategy's collective timeout",
            "log_images_every_n_epochs": "the LightningModule's picture logging",
            "wandb_project": "an extra logger",
        },
        complete=False,
        defaults={
            "max_epochs": _OFFICIAL + " (TRAIN.END_EPOCH 140)",
            "precision": "Lightning's default (None, meaning 32-true) spelled out",
            "check_val_every_n_epoch": "COCO validation is expensive: every 10 epochs",
            "log_every_n_steps": "Lightning's default (None, meaning 50) spelled out",
            "deterministic": "Lightning's None means False, said explicitly",
            "benchmark": "cudnn.benchmark on, as the official training",
            "num_sanity_val_steps": "no sanity validation: a COCO evaluation before training "
            "costs minutes and proves nothing about the run",
        },
        given={
            "max_time": "trainer.max_time_minutes",
            "callbacks": "the run's checkpoints, progress bar and schedule",
            "logger": "the run's loggers",
            "plugins": "atomic checkpoint writes",
            "default_root_dir": "output_dir",
        },
    ),
)


def binding(section: str) -> Binding:
    """The binding of a dotted recipe section."""
    for b in BINDINGS:
        if b.section == section:
            return b
    raise KeyError(f"no binding for recipe section {section!r}")


def _node(recipe: DictConfig | Mapping[str, Any], section: str) -> Any:
    node: Any = recipe
    for part in section.split("."):
        node = node[part]
    return node


def section_kwargs(recipe: DictConfig | Mapping[str, Any], section: str) -> dict[str, Any]:
    """The recipe section as keyword arguments of its targets (exempt fields and nested
    sections left out), plain Python values (lists, dicts, numbers)."""
    b = binding(section)
    node = _node(recipe, section)
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    nested = _nested_names(b.schema)
    return {k: v for k, v in dict(values).items() if k not in b.exempt and k not in nested}


def _nested_names(schema: type) -> set[str]:
    """Fields of ``schema`` that are sections of their own (bound separately)."""
    hints = typing.get_type_hints(schema)
    return {f.name for f in dataclasses.fields(schema) if dataclasses.is_dataclass(hints[f.name])}


def target_kwargs(recipe: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's ``targets`` section as keyword arguments of ``encode_targets``."""
    return section_kwargs(recipe, "targets")


def decoder_kwargs(recipe: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's ``decode`` section as keyword arguments of :class:`~dekr.decoder.DEKRDecoder`
    (its ``matching`` subsection as a :class:`~dekr.matching.MatchSettings`)."""
    from dekr.matching import MatchSettings

    return {
        **section_kwargs(recipe, "decode"),
        "matching": MatchSettings(**section_kwargs(recipe, "decode.matching")),
    }


def trainer_kwargs(recipe: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's ``trainer`` section as keyword arguments of ``pytorch_lightning.Trainer``
    (``max_time`` from ``max_time_minutes``; the strategy, callbacks and loggers are the run's)."""
    kwargs = section_kwargs(recipe, "trainer")
    t = _node(recipe, "trainer")
    minutes = t["max_time_minutes"]
    if not minutes and t.get("budget_minutes"):  # a safety net well above the budget
        minutes = 1.5 * t["budget_minutes"] + 1
    kwargs["max_time"] = {"minutes": minutes} if minutes else None
    return kwargs
