"""``DekrModule``: the Lightning system around the DEKR network (model + loss + decoder + metric).

The recipe (a plain dict) is the only hyper-parameter, saved in every checkpoint, so a checkpoint
loads without its YAML (:func:`load_checkpoint`). Devices, processes, precision and gradient
accumulation belong to Lightning; nothing here calls ``torch.distributed`` directly.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import Subset

from dekr.config import decoder_kwargs, recipe_from_dict
from dekr.decoder import DEKRDecoder
from dekr.evaluation import COCOEvaluator
from dekr.inference import predict_poses
from dekr.keypoints import KeypointSpec, get_keypoint_spec
from dekr.loss import DEKRLoss
from dekr.models.dekr import DEKR, build_model
from dekr.rescore import Rescorer

__all__ = ["DekrModule", "load_checkpoint", "spec_from_recipe", "lr_factor"]


def spec_from_recipe(recipe: DictConfig) -> KeypointSpec:
    """The recipe's keypoint spec: a built-in name or an inline mapping."""
    node = recipe.keypoints
    return get_keypoint_spec(OmegaConf.to_container(node) if isinstance(node, DictConfig) else node)


def lr_factor(
    epoch: float,
    *,
    schedule: str,
    max_epochs: int,
    milestones: list[int],
    gamma: float,
    warmup_epochs: float,
) -> float:
    """Learning-rate multiplier at fractional ``epoch`` (linear warm-up, then the schedule)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (epoch + 1e-3) / warmup_epochs
    if schedule == "multistep":
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        span = max(max_epochs - warmup_epochs, 1e-6)
        return 0.5 * (1 + math.cos(math.pi * min((epoch - warmup_epochs) / span, 1.0)))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"optim.schedule {schedule!r} unknown; expected multistep, cosine or constant")


class DekrModule(pl.LightningModule):
    """Training and validation of a DEKR network from a recipe.

    Args:
        recipe: the resolved recipe as a plain dict (see :mod:`dekr.config`).
        model: an already built network (default: built from the recipe, random init).
    """

    def __init__(self, recipe: dict[str, Any], model: Optional[DEKR] = None) -> None:
        super().__init__()
        self.save_hyperparameters({"recipe": recipe}, ignore=["model"])
        self.recipe = recipe_from_dict(recipe)
        cfg = self.recipe
        self.spec = spec_from_recipe(cfg)
        self.model = model or build_model(
            cfg.model.backbone,
            num_keypoints=self.spec.num_keypoints,
            adaptive_impl=cfg.model.adaptive_impl,
        )
        if cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = DEKRLoss(
            cfg.loss.heatmap_factor, cfg.loss.offset_factor, cfg.loss.offset_beta
        )
        path = cfg.decode.rescore_checkpoint
        self.decoder = DEKRDecoder(
            self.spec,
            **decoder_kwargs(cfg),
            rescorer=Rescorer.load(path, self.spec) if path else None,
        )
        self.evaluator: Optional[COCOEvaluator] = None
        self.bad_loss_batches = 0
        self._val_records: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._val_gt: list[tuple[int, np.ndarray, np.ndarray, int, int]] = []
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        self.last_validated_step = -1
        self._fit_start: Optional[float] = None

    def _memory_format(self, images: Tensor) -> Tensor:
        if self.recipe.model.channels_last:
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
        limit = self.recipe.trainer.max_bad_loss_batches
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

    def on_train_end(self) -> None:
        """Under DDP, every rank prints a digest of its weights (they must all be equal)."""
        if self.trainer.world_size > 1:
            digest = hashlib.sha1()
            for tensor in self.model.state_dict().values():
                digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
            print(f"[rank {self.global_rank}] weights sha1 {digest.hexdigest()}", flush=True)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_records, self._val_gt = [], []

    def predict_images(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Poses (original pixels) of RGB uint8 images with the recipe's test settings."""
        d = self.recipe.decode
        return predict_poses(
            self,
            images,
            spec=self.spec,
            input_size=self.recipe.data.input_size,
            scales=list(d.scales),
            flip=d.flip,
            flip_shift=d.flip_shift,
            decoder=self.decoder,
            device=self.device,
        )

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        preds = self.predict_images([s["image"] for s in batch])
        for sample, pred in zip(batch, preds):
            image_id = int(sample["image_id"])
            self._val_records.append((image_id, pred["keypoints"], pred["scores"]))
            h, w = sample["image"].shape[:2]
            self._val_gt.append(
                (
                    image_id,
                    np.asarray(sample["keypoints"], np.float32),
                    np.asarray(sample["areas"], np.float32),
                    h,
                    w,
                )
            )
        if batch_idx == 0:
            self._log_pictures(batch, preds)

    def _log_pictures(
        self, batch: list[dict[str, Any]], preds: list[dict[str, np.ndarray]]
    ) -> None:
        every = self.recipe.trainer.log_images_every_n_epochs
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
        k = self.spec.num_keypoints
        preds = self._gather(
            [
                (i, np.concatenate([kp.reshape(-1, 3 * k), s[:, None]], 1))
                for i, kp, s in self._val_records
            ],
            3 * k + 1,
        )
        gts = self._gather(
            [
                (
                    i,
                    np.concatenate(
                        [kp.reshape(-1, 3 * k), a[:, None], np.full((len(a), 2), (h, w))], 1
                    ),
                )
                for i, kp, a, h, w in self._val_gt
            ],
            3 * k + 3,
        )
        evaluator = self.make_evaluator(gts)
        evaluator.process(
            [i for i, _ in preds],
            [
                {"keypoints": r[:, : 3 * k].reshape(-1, k, 3), "scores": r[:, 3 * k]}
                for _, r in preds
            ],
        )
        metrics = evaluator.evaluate() if evaluator.image_ids else {"AP": 0.0}
        self.evaluator = evaluator
        self.last_validated_step = self.global_step
        for name, value in metrics.items():
            self.log(f"val/{name}", float(value), rank_zero_only=False, sync_dist=False)
        if self._fit_start is not None:  # wall time since fit start: the AP-against-minutes curve
            self.log("val/minutes", (time.perf_counter() - self._fit_start) / 60)

    def _val_coco(self) -> Any:
        """The validation dataset's pycocotools ``COCO`` ground truth, when it has one."""
        dataset = getattr(getattr(self._trainer, "datamodule", None), "val_dataset", None)
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        ground_truth = getattr(dataset, "ground_truth", None)  # e.g. COCOKeypoints.ground_truth
        return ground_truth() if callable(ground_truth) else None

    def make_evaluator(self, gts: list[tuple[int, np.ndarray]]) -> COCOEvaluator:
        """The dataset's COCO ground truth (crowds and unlabelled people included), or one built
        from the gathered validation samples for datasets without a JSON file."""
        coco = self._val_coco()
        if coco is not None:
            return COCOEvaluator(self.spec, coco_gt=coco)
        k = self.spec.num_keypoints
        evaluator = COCOEvaluator(self.spec)
        for image_id, rows in gts:
            h, w = (int(rows[0, -2]), int(rows[0, -1])) if len(rows) else (0, 0)
            evaluator.add_ground_truth(
                image_id, rows[:, : 3 * k].reshape(-1, k, 3), rows[:, 3 * k], width=w, height=h
            )
        return evaluator

    def _gather(
        self, items: list[tuple[int, np.ndarray]], width: int
    ) -> list[tuple[int, np.ndarray]]:
        """All-gather variable-length per-image rows across processes; each image once."""
        if self.trainer.world_size == 1:
            return items
        rows = max([len(r) for _, r in items] + [0])
        rows = int(self.all_gather(torch.tensor(rows, device=self.device)).max())
        n = len(items)
        packed = torch.full((n, max(rows, 1), width), float("nan"), dtype=torch.float64)
        ids = torch.tensor([i for i, _ in items], dtype=torch.int64)
        for j, (_, r) in enumerate(items):
            packed[j, : len(r)] = torch.from_numpy(np.asarray(r, np.float64))
        all_packed = self.all_gather(packed.to(self.device)).reshape(-1, max(rows, 1), width)
        all_ids = self.all_gather(ids.to(self.device)).reshape(-1)
        out: dict[int, np.ndarray] = {}
        for i, p in zip(all_ids.tolist(), all_packed.cpu().numpy()):
            out[i] = p[~np.isnan(p).all(axis=1)]
        return sorted(out.items())

    # ------------------------------------------------------------------ optimisation
    def effective_lr(self) -> float:
        o = self.recipe.optim
        if not o.scale_lr:
            return o.lr
        world = self.trainer.world_size if self._trainer is not None else 1
        accumulate = self.recipe.trainer.accumulate_grad_batches
        global_batch = self.recipe.data.batch_size * world * accumulate
        return o.lr * global_batch / o.reference_batch

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.recipe.optim
        lr = self.effective_lr()
        offset_out = list(self.model.offset_final_layer.parameters())
        ids = {id(p) for p in offset_out}
        params = [
            {"params": [p for p in self.model.parameters() if id(p) not in ids]},
            {"params": offset_out, "lr": lr * o.offset_lr_factor},
        ]
        if o.name == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
        elif o.name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            raise ValueError(f"optim.name {o.name!r} unknown; expected adam, adamw or sgd")
        steps = max(self.trainer.estimated_stepping_batches, 1)
        epochs = max(self.trainer.max_epochs or 1, 1)
        per_epoch = steps / epochs
        kwargs = dict(
            schedule=o.schedule,
            max_epochs=epochs,
            milestones=list(o.milestones),
            gamma=o.gamma,
            warmup_epochs=o.warmup_epochs,
        )
        lr_factor(0.0, **kwargs)  # validate the schedule name now
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step / per_epoch, **kwargs)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_checkpoint(
    path: Union[str, Path], overrides: Sequence[str] = (), map_location: str = "cpu"
) -> DekrModule:
    """A :class:`DekrModule` from a checkpoint alone (recipe and spec are inside), safely.

    ``overrides`` (``key=value``) change test-time settings of the stored recipe, e.g.
    ``decode.flip=false``.

    Uses ``torch.load(weights_only=True)``: a checkpoint can never run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path}: {first}") from err
    try:
        recipe = ckpt["hyper_parameters"]["recipe"]
        state = ckpt["state_dict"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} is not a dekr training checkpoint (no recipe inside)") from None
    if overrides:
        recipe = OmegaConf.to_container(recipe_from_dict(recipe, list(overrides)), resolve=True)
    module = DekrModule(recipe)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: another keypoint count or backbone width
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise ValueError(
            f"{path}: checkpoint weights do not fit the model of its recipe (keypoints "
            f"{module.spec.num_keypoints}, backbone {module.recipe.model.backbone}"
            f"{', after overrides ' + ' '.join(overrides) if overrides else ''}): "
            f"{(lines or [str(err).splitlines()[0]])[0]}"
        ) from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match its recipe's model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return module.eval()
