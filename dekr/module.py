"""``DekrModule``: the Lightning system around the DEKR network (model + loss + decoder + metric).

The module is built from typed parts (network, loss, decoder, optimiser settings, inference
settings); :meth:`DekrModule.from_recipe` binds them from a recipe (:mod:`dekr.binding`) and saves
the recipe in every checkpoint, so a checkpoint loads without its YAML (:func:`load_checkpoint`).
Validation results are gathered across processes by a torchmetrics metric
(:class:`dekr.metric.KeypointAP`), with the ground truth the DataModule provides. Devices,
processes, precision and gradient accumulation belong to Lightning; nothing here calls
``torch.distributed`` directly.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dekr.binding import decoder_kwargs, section_kwargs
from dekr.config import OptimConfig, recipe_from_dict
from dekr.decoder import DEKRDecoder
from dekr.errors import CheckpointError, first_line
from dekr.evaluation import COCOEvaluator
from dekr.inference import predict_poses
from dekr.keypoints import KeypointSpec, get_keypoint_spec
from dekr.loss import DEKRLoss
from dekr.metric import KeypointAP
from dekr.models.dekr import DEKR, build_model
from dekr.models.weights import read_checkpoint
from dekr.rescore import Rescorer

__all__ = ["DekrModule", "InferenceSettings", "load_checkpoint", "spec_from_recipe", "lr_factor"]


def spec_from_recipe(recipe: DictConfig) -> KeypointSpec:
    """The recipe's keypoint spec: a built-in name or an inline mapping."""
    node = recipe.keypoints
    return get_keypoint_spec(OmegaConf.to_container(node) if isinstance(node, DictConfig) else node)


def lr_factor(
    epoch: float,
    *,
    schedule: str,
    max_epochs: int,
    milestones: Sequence[float],
    gamma: float,
    warmup_epochs: float,
) -> float:
    """Learning-rate multiplier at fractional ``epoch`` (linear warm-up, then the schedule).

    ``milestones`` are epochs, or fractions of the run (all in (0, 1)) of ``max_epochs``, as a
    time-budget run needs (its epochs are planned: dekr/budget.py)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (epoch + 1e-3) / warmup_epochs
    if schedule == "multistep":
        if milestones and all(0 < m < 1 for m in milestones):
            milestones = [m * max_epochs for m in milestones]
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule in ("cosine", "linear"):  # from 1 after the warm-up to 0 at the end of the run
        span = max(max_epochs - warmup_epochs, 1e-6)
        done = min((epoch - warmup_epochs) / span, 1.0)
        return 0.5 * (1 + math.cos(math.pi * done)) if schedule == "cosine" else 1.0 - done
    if schedule == "constant":
        return 1.0
    raise ValueError(
        f"optim.schedule {schedule!r} unknown; expected multistep, cosine, linear or constant"
    )


@dataclass(frozen=True)
class InferenceSettings:
    """How validation and prediction run the network: the input side, test scales and flip."""

    input_size: int = 512  # side S of the resized, padded input (data.input_size)
    scales: tuple[float, ...] = (1.0,)  # decode.scales
    flip: bool = True  # decode.flip
    flip_shift: int = 3  # decode.flip_shift


class DekrModule(pl.LightningModule):
    """Training and validation of a DEKR network, built from its parts.

    Args:
        model: the network.
        spec: its keypoint set.
        criterion: the loss (default :class:`~dekr.loss.DEKRLoss` with the official factors).
        decoder: network outputs → people (default ``DEKRDecoder(spec)``).
        optim: optimiser and schedule (default :class:`~dekr.config.OptimConfig`).
        inference: validation/prediction settings (default :class:`InferenceSettings`).
        channels_last: run the network in NHWC memory format.
        max_bad_loss_batches: batches with a non-finite loss skipped before the run stops.
        log_images_every_n_epochs: truth | prediction pictures to the logger (0: never).
        recipe: the recipe the parts were built from (:meth:`from_recipe`), saved in checkpoints
            so that :func:`load_checkpoint` rebuilds the module from the file alone.
    """

    def __init__(
        self,
        model: DEKR,
        spec: KeypointSpec,
        *,
        criterion: Optional[DEKRLoss] = None,
        decoder: Optional[DEKRDecoder] = None,
        optim: Optional[OptimConfig] = None,
        inference: Optional[InferenceSettings] = None,
        channels_last: bool = False,
        max_bad_loss_batches: int = 0,
        log_images_every_n_epochs: int = 1,
        recipe: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if recipe is not None:
            self.save_hyperparameters({"recipe": recipe})
        self.recipe: Optional[DictConfig] = recipe_from_dict(recipe) if recipe else None
        self.spec = spec
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = channels_last
        self.criterion = criterion or DEKRLoss()
        self.decoder = decoder or DEKRDecoder(spec)
        self.optim = optim or OptimConfig()
        self.inference = inference or InferenceSettings()
        self.max_bad_loss_batches = int(max_bad_loss_batches)
        self.log_images_every_n_epochs = int(log_images_every_n_epochs)
        self.val_metric = KeypointAP(spec)
        self.evaluator: Optional[COCOEvaluator] = None
        self.bad_loss_batches = 0
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        self.last_validated_step = -1
        self._fit_start: Optional[float] = None
        # the schedule's length in epochs when a time budget plans it (dekr/budget.py);
        # None: trainer.max_epochs
        self.schedule_epochs: Optional[float] = None
        # run epoch -> the schedule's epoch, when a re-planned budget paces the schedule
        self.schedule_progress: Optional[Callable[[float], float]] = None

    @classmethod
    def from_recipe(
        cls, recipe: Union[DictConfig, dict[str, Any]], model: Optional[DEKR] = None
    ) -> DekrModule:
        """The module a recipe describes (``model``: an already built network instead of a
        randomly initialised one); every part is bound by :mod:`dekr.binding`."""
        cfg = recipe_from_dict(recipe)
        spec = spec_from_recipe(cfg)
        model = model or build_model(
            **section_kwargs(cfg, "model"), num_keypoints=spec.num_keypoints
        )
        path = cfg.decode.rescore_checkpoint
        d = cfg.decode
        return cls(
            model,
            spec,
            criterion=DEKRLoss(**section_kwargs(cfg, "loss")),
            decoder=DEKRDecoder(
                spec, **decoder_kwargs(cfg), rescorer=Rescorer.load(path, spec) if path else None
            ),
            optim=OmegaConf.to_object(cfg.optim),
            inference=InferenceSettings(
                input_size=cfg.data.input_size,
                scales=tuple(float(s) for s in d.scales),
                flip=d.flip,
                flip_shift=d.flip_shift,
            ),
            channels_last=cfg.model.channels_last,
            max_bad_loss_batches=cfg.trainer.max_bad_loss_batches,
            log_images_every_n_epochs=cfg.trainer.log_images_every_n_epochs,
            recipe=OmegaConf.to_container(cfg, resolve=True),
        )

    def _memory_format(self, images: Tensor) -> Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(self._memory_format(images))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Optional[Tensor]:
        heatmaps, offsets = self(batch["image"])
        losses = self.criterion(heatmaps, offsets, batch)
        if not torch.isfinite(losses["loss"]):
            return self._bad_loss(losses)
        bs = batch["image"].shape[0]
        self._epoch_images += bs
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        self.log("train/heatmap_loss", losses["heatmap_loss"], batch_size=bs)
        self.log("train/offset_loss", losses["offset_loss"], batch_size=bs)
        return losses["loss"]

    def _bad_loss(self, losses: dict[str, Tensor]) -> None:
        self.bad_loss_batches += 1
        limit = self.max_bad_loss_batches
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        if self.bad_loss_batches > limit or self.trainer.world_size > 1:
            raise FloatingPointError(
                f"non-finite loss at {where} ({parts}); {self.bad_loss_batches} such batch(es), "
                f"limit trainer.max_bad_loss_batches={limit}. The last good checkpoint is "
                "untouched; lower optim.lr or enable gradient clipping and resume."
            )
        warnings.warn(f"skipping a batch with a non-finite loss at {where} ({parts})", stacklevel=2)
        return None

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_images = time.perf_counter(), 0

    def on_train_epoch_end(self) -> None:
        seconds = max(time.perf_counter() - self._epoch_start, 1e-9)
        self.log("train/images_per_s", self._epoch_images / seconds)
        self.log("train/bad_loss_batches", float(self.bad_loss_batches))

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.val_metric.reset()
        self.val_metric.ground_truth = self._val_ground_truth()

    def _val_ground_truth(self) -> Any:
        """The DataModule's validation ground truth (``val_ground_truth()``), when it has one."""
        datamodule = getattr(self._trainer, "datamodule", None)
        get = getattr(datamodule, "val_ground_truth", None)
        return get() if callable(get) else None

    def predict_images(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Poses (original pixels) of RGB uint8 images with the recipe's test settings."""
        t = self.inference
        return predict_poses(
            self,
            images,
            spec=self.spec,
            input_size=t.input_size,
            scales=list(t.scales),
            flip=t.flip,
            flip_shift=t.flip_shift,
            decoder=self.decoder,
            device=self.device,
        )

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        # fp32 whatever the training precision (Lightning's bf16-mixed autocasts validation
        # too): the AP of a bf16 run is then the AP dekr-eval and dekr-predict measure
        with torch.autocast(self.device.type, enabled=False):
            preds = self.predict_images([s["image"] for s in batch])
        truths = [
            {
                "keypoints": s["keypoints"],
                "areas": s["areas"],
                "height": s["image"].shape[0],
                "width": s["image"].shape[1],
            }
            for s in batch
        ]
        self.val_metric.update([int(s["image_id"]) for s in batch], preds, truths)
        if batch_idx == 0:
            self._log_pictures(batch, preds)

    def _log_pictures(
        self, batch: list[dict[str, Any]], preds: list[dict[str, np.ndarray]]
    ) -> None:
        every = self.log_images_every_n_epochs
        logger = self.logger
        if not every or self.current_epoch % every or logger is None:
            return
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image"):
            return
        from dekr.drawing import draw_poses

        for i, (sample, pred) in enumerate(list(zip(batch, preds))[:2]):
            truth = np.asarray(sample["keypoints"], np.float32).reshape(
                -1, self.spec.num_keypoints, 3
            )
            left = draw_poses(sample["image"], truth, np.ones(len(truth)), self.spec)
            right = draw_poses(sample["image"], pred["keypoints"], pred["scores"], self.spec)
            picture = np.concatenate([left, right], axis=1)  # ground truth | prediction
            experiment.add_image(
                f"val/truth_vs_prediction_{i}", picture, self.global_step, dataformats="HWC"
            )

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metric.compute()  # gathers every process's samples (torchmetrics)
        self.evaluator = self.val_metric.last_evaluator
        self.last_validated_step = self.global_step
        for name, value in metrics.items():
            self.log(f"val/{name}", float(value), rank_zero_only=False, sync_dist=False)
        if self._fit_start is not None:  # wall time since fit start: the AP-against-minutes curve
            self.log("val/minutes", (time.perf_counter() - self._fit_start) / 60)
        self.val_metric.reset()

    # ------------------------------------------------------------------ optimisation
    def effective_lr(self) -> float:
        """``optim.lr``, or with ``optim.scale_lr`` scaled by the trainer's global batch
        (per-process batch × processes × accumulation) over ``optim.reference_batch``."""
        o = self.optim
        if not o.scale_lr or self._trainer is None:
            return o.lr
        trainer = self.trainer
        per_process = getattr(trainer.datamodule, "batch_size", None)
        if per_process is None:
            per_process = getattr(trainer.train_dataloader, "batch_size", None)
        if per_process is None:
            raise ValueError("optim.scale_lr needs the per-process batch size of the DataModule")
        global_batch = per_process * trainer.world_size * trainer.accumulate_grad_batches
        return o.lr * global_batch / o.reference_batch

    def _fused(self) -> Optional[bool]:
        """Adam's fused kernel (one pass over all parameters) where it runs: on CPU its step is
        about 5x faster than the per-tensor loop PyTorch uses there (benchmark: 29 -> 6 ms for
        the quickstart model). Not with gradient clipping in mixed or 16-bit precision, which
        Lightning refuses for an optimizer that may unscale its gradients itself; ``None`` is
        PyTorch's default."""
        devices = {p.device.type for p in self.parameters()}
        if not devices <= {"cpu", "cuda"}:
            return None
        clips = self._trainer is not None and self.trainer.gradient_clip_val
        if clips and not str(self.trainer.precision).startswith(("32", "64")):
            return None
        return True

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        lr = self.effective_lr()
        offset_out = list(self.model.offset_final_layer.parameters())
        ids = {id(p) for p in offset_out}
        params = [
            {"params": [p for p in self.model.parameters() if id(p) not in ids]},
            {"params": offset_out, "lr": lr * o.offset_lr_factor},
        ]
        if o.name == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay, fused=self._fused())
        elif o.name == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay, fused=self._fused())
        elif o.name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            raise ValueError(f"optim.name {o.name!r} unknown; expected adam, adamw or sgd")
        trainer = self.trainer
        steps = max(int(trainer.estimated_stepping_batches), 1)  # loads the train dataloader
        epochs: float = max(trainer.max_epochs or 1, 1)
        batches = trainer.num_training_batches
        if math.isfinite(batches):
            per_epoch: float = max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
        else:  # an iterable dataset without a length: Lightning's estimate
            per_epoch = steps / epochs
        if trainer.max_steps > 0:  # a pinned run length: the schedule spans max_steps
            epochs = min(epochs, trainer.max_steps / per_epoch)
        kwargs = dict(
            schedule=o.schedule,
            milestones=list(o.milestones),
            gamma=o.gamma,
            warmup_epochs=o.warmup_epochs,
        )
        lr_factor(0.0, max_epochs=epochs, **kwargs)  # validate the schedule name now

        def factor(step: int) -> float:  # the planned length and pace are read at every step
            epoch = step / per_epoch
            if self.schedule_progress is not None:
                epoch = self.schedule_progress(epoch)
            return lr_factor(epoch, max_epochs=self.schedule_epochs or epochs, **kwargs)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_checkpoint(
    path: Union[str, Path], overrides: Sequence[str] = (), map_location: str = "cpu"
) -> DekrModule:
    """A :class:`DekrModule` from a checkpoint alone (recipe and spec are inside), safely.

    ``overrides`` (``key=value``) change test-time settings of the stored recipe, e.g.
    ``decode.flip=false``.

    ``path`` may also be a registered weights name (:func:`dekr.weights.list_weights`): the
    entry's file is downloaded, verified and converted once; an existing path always wins.

    Uses ``torch.load(weights_only=True)``: a checkpoint can never run code.
    """
    from dekr.weights import resolve_checkpoint

    path = resolve_checkpoint(path)
    ckpt = read_checkpoint(path, map_location)  # MissingFileError, CheckpointError
    try:
        recipe = ckpt["hyper_parameters"]["recipe"]
        state = ckpt["state_dict"]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{path} is not a dekr training checkpoint (no recipe inside)",
            hint="an official DEKR or other bare state dict starts a run: model.weights=PATH",
        ) from None
    if overrides:
        recipe = OmegaConf.to_container(recipe_from_dict(recipe, list(overrides)), resolve=True)
    module = DekrModule.from_recipe(recipe)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: another keypoint count or backbone width
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise CheckpointError(
            f"{path}: checkpoint weights do not fit the model of its recipe (keypoints "
            f"{module.spec.num_keypoints}, backbone {recipe['model']['backbone']}"
            f"{', after overrides ' + ' '.join(overrides) if overrides else ''}): "
            f"{(lines or [first_line(err)])[0]}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not match its recipe's model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return module.eval()
