"""LightningDataModule, the training sample transform and the collate functions.

Training batches are :class:`~dekr.data.types.TrainBatch` dicts: ``image`` (B, 3, S, S),
``image_id`` (B,) and the four target maps of :mod:`dekr.targets` (``heatmaps``, ``heatmap_weights``, ``offsets``, ``offset_weights``). With
``targets_on_device`` the workers ship ``keypoints`` (B, N, K, 3; padded people have v = 0 and
area −1), ``areas`` (B, N) and ``valid_mask`` (B, h, w) instead (with ``official`` target
kwargs also ``official_centers`` (B, N, 2) and float64 ``official_areas`` (B, N)), and the
datamodule's
``on_after_batch_transfer`` builds the same maps on the training device, so the LightningModule
sees one batch layout (a LightningModule overriding that hook too is shadowed by Lightning).
Validation batches are lists of raw samples (:class:`~dekr.data.types.RawSample`,
:func:`collate_eval`). Samplers (DistributedSampler
under DDP) are left to Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from dekr.data.transforms import augment_sample, normalize_image
from dekr.data.types import (
    DEVICE_TARGET_KEYS,
    OFFICIAL_TARGET_KEYS,
    TARGET_MAP_KEYS,
    RawSample,
    TrainBatch,
    TrainSample,
)
from dekr.errors import OptionError
from dekr.keypoints import KeypointSpec
from dekr.targets import encode_targets, encode_targets_batch

__all__ = [
    "TrainSampleTransform",
    "DekrDataModule",
    "collate_train",
    "collate_eval",
    "add_device_targets",
]


class TrainSampleTransform:
    """Raw sample -> training sample: augmentation, normalisation and (optionally) targets.

    Returns a :class:`~dekr.data.types.TrainSample`: the target maps, or with
    ``targets_on_device`` the keypoints, areas and valid mask they are built from.

    Args:
        spec: keypoint set (flip pairs).
        input_size: side S of the square network input (DATASET.INPUT_SIZE 512 / 640).
        output_stride: input pixels per output pixel (512 / 128 = 4).
        targets_on_device: ship keypoints/areas/valid mask instead of target maps.
        target_kwargs: keyword arguments of :func:`dekr.targets.encode_targets` (sigma, ...);
            ``official=True`` there also selects the official flip of the augmentation.
        augment_kwargs: keyword arguments of :func:`dekr.data.transforms.sample_affine_params`
            (min_scale, max_scale, max_rotation, max_translate).
        flip_prob: probability of the horizontal flip (0.5).
        seed: extra seed mixed into the per-worker generator (``torch.initial_seed()`` of the
            worker, which Lightning's ``seed_everything`` makes reproducible).
    """

    def __init__(
        self,
        spec: KeypointSpec,
        *,
        input_size: int = 512,
        output_stride: int = 4,
        targets_on_device: bool = False,
        target_kwargs: Mapping[str, Any] | None = None,
        augment_kwargs: Mapping[str, float] | None = None,
        flip_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        if input_size % output_stride:
            raise OptionError(f"input_size {input_size} is not a multiple of {output_stride}")
        self.spec = spec
        self.input_size = int(input_size)
        self.output_stride = int(output_stride)
        self.targets_on_device = bool(targets_on_device)
        self.target_kwargs = dict(target_kwargs or {})
        self.augment_kwargs = dict(augment_kwargs or {})
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def _generator(self) -> np.random.Generator:
        """One generator per worker process and per worker seed (changes every epoch)."""
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng([key[1] % 2**63, self.seed])
            self._rng_key = key
        return self._rng

    def __call__(self, sample: RawSample, rng: np.random.Generator | None = None) -> TrainSample:
        aug = augment_sample(
            sample,
            rng=rng if rng is not None else self._generator(),
            flip_index=self.spec.flip_index,
            input_size=self.input_size,
            stride=self.output_stride,
            flip_prob=self.flip_prob,
            official=bool(self.target_kwargs.get("official", False)),
            **self.augment_kwargs,
        )
        extra = {key: aug[key] for key in OFFICIAL_TARGET_KEYS if key in aug}
        out: TrainSample = {"image": normalize_image(aug["image"]), "image_id": aug["image_id"]}
        if self.targets_on_device:
            for key in (*DEVICE_TARGET_KEYS, *extra):
                out[key] = torch.from_numpy(aug[key])
            return out
        maps = encode_targets(
            aug["keypoints"],
            aug["areas"],
            aug["valid_mask"],
            output_size=self.input_size // self.output_stride,
            stride=self.output_stride,
            **self.target_kwargs,
            **extra,
        )
        for key in TARGET_MAP_KEYS:
            out[key] = torch.from_numpy(maps[key])
        return out


def collate_train(samples: Sequence[TrainSample]) -> TrainBatch:
    """Stack training samples; keypoints are padded to the batch's largest N with v = 0 and
    area −1 (no person: below any ``min_center_area``, also under the official rules)."""
    batch: TrainBatch = {
        "image": torch.stack([s["image"] for s in samples]),
        "image_id": torch.tensor([int(s["image_id"]) for s in samples], dtype=torch.long),
    }
    for key in TARGET_MAP_KEYS:
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    if "keypoints" in samples[0]:
        n = max(s["keypoints"].shape[0] for s in samples)
        k = samples[0]["keypoints"].shape[1]
        kps = torch.zeros(len(samples), n, k, 3)
        areas = torch.full((len(samples), n), -1.0)
        for i, s in enumerate(samples):
            kps[i, : len(s["keypoints"])] = s["keypoints"]
            areas[i, : len(s["areas"])] = s["areas"]
        batch["keypoints"], batch["areas"] = kps, areas
        batch["valid_mask"] = torch.stack([s["valid_mask"] for s in samples])
        if "official_areas" in samples[0]:
            centers = torch.zeros(len(samples), n, 2, dtype=torch.float64)
            official = torch.zeros(len(samples), n, dtype=torch.float64)
            for i, s in enumerate(samples):
                centers[i, : len(s["official_centers"])] = s["official_centers"]
                official[i, : len(s["official_areas"])] = s["official_areas"]
            batch["official_centers"], batch["official_areas"] = centers, official
    return batch


def collate_eval(samples: Sequence[RawSample]) -> list[RawSample]:
    """Validation batches: the raw samples as a list (inference resizes each image itself)."""
    return list(samples)


class DekrDataModule(pl.LightningDataModule):
    """Train / val loaders around any datasets returning the documented samples.

    Args:
        train_dataset: returns training samples (e.g. a reader with :class:`TrainSampleTransform`).
        val_dataset: returns raw samples; batched with :func:`collate_eval`.
        batch_size: training images per process (TRAIN.IMAGES_PER_GPU 10 for W32).
        val_batch_size: raw samples per validation batch.
        num_workers, pin_memory, persistent_workers: passed to the DataLoaders
            (``persistent_workers`` only when ``num_workers > 0``).
        targets_on_device: build the target maps in :meth:`on_after_batch_transfer`.
        target_kwargs: keyword arguments of :func:`dekr.targets.encode_targets_batch`
            (must match those of the transform when maps are built in the workers).
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        *,
        batch_size: int = 10,
        val_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        targets_on_device: bool = False,
        target_kwargs: Mapping[str, Any] | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.targets_on_device = bool(targets_on_device)
        self.target_kwargs = dict(target_kwargs or {})
        self.drop_last = bool(drop_last)

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        dataset = self.train_dataset if train else self.val_dataset
        if dataset is None:
            raise ValueError(f"DekrDataModule: no {split} dataset was given")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.val_batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            collate_fn=collate_train if train else collate_eval,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def val_ground_truth(self) -> Any:
        """The validation split's full ground truth for COCO AP (a pycocotools ``COCO`` with
        crowd regions and people without keypoints), or ``None`` when the dataset has no
        annotation file (the metric then builds it from the samples). Read-only for callers."""
        dataset = self.val_dataset
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        get = getattr(dataset, "ground_truth", None)
        if callable(get):
            return get()
        return getattr(dataset, "coco", None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Build the target maps on the device for training batches that carry keypoints."""
        if not (self.targets_on_device and isinstance(batch, dict) and "keypoints" in batch):
            return batch
        return add_device_targets(batch, **self.target_kwargs)


def add_device_targets(batch: TrainBatch, **target_kwargs: Any) -> TrainBatch:
    """Add the four target maps to a collated batch with keypoints/areas/valid_mask (and the
    official centres/areas when ``target_kwargs`` has ``official=True``)."""
    h, w = batch["valid_mask"].shape[-2:]
    stride = batch["image"].shape[-1] // w
    if target_kwargs.get("official") and "official_areas" not in batch:
        raise ValueError(
            "targets.official=true with targets.on_device=true needs batches with "
            "official_centers/official_areas: build them with TrainSampleTransform(..., "
            "target_kwargs={'official': True}) and collate_train"
        )
    extra = {key: batch[key] for key in OFFICIAL_TARGET_KEYS if key in batch}
    maps = encode_targets_batch(
        batch["keypoints"],
        batch["areas"],
        batch["valid_mask"],
        output_size=(h, w),
        stride=stride,
        **target_kwargs,
        **(extra if target_kwargs.get("official") else {}),
    )
    return {**batch, **maps}
