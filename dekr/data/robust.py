"""Training-time tolerance of unreadable images: skip, warn, count, and stop past a limit.

A missing or corrupt image file in a large training set should not end a multi-day run, but a
folder of mostly broken files must not train silently either. :class:`SkipBadImages` wraps any
dataset of raw samples: when reading a sample raises ``OSError`` (``FileNotFoundError`` for a
missing file, ``OSError`` for one that does not decode; :func:`dekr.data.coco.read_image` names the
file in both), it warns once per file, marks the index as bad and returns another sample chosen
deterministically (the next readable index). More than ``max_bad_fraction`` of the dataset bad is a
:class:`TooManyBadImages` error. Validation never uses this wrapper: a bad validation image is an
error naming the file.

The bad-index flags live in shared memory, so the DataLoader workers of one process count
together; under multi-process (DDP) training every process counts the images it reads.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.utils.data import Dataset

from dekr.errors import DataError, OptionError

__all__ = ["SkipBadImages", "TooManyBadImages"]


class TooManyBadImages(DataError):
    """More training images failed to read than ``data.max_bad_image_fraction`` allows."""


class SkipBadImages(Dataset):
    """Replace samples whose image cannot be read by other samples, up to a fraction.

    Args:
        dataset: any map-style dataset of raw samples (docs/architecture.md).
        max_bad_fraction: largest fraction of ``dataset`` allowed to be unreadable
            (``data.max_bad_image_fraction``, default 0.01); 0 makes any bad image an error.
        errors: exception types that mark a sample as unreadable.
    """

    def __init__(
        self,
        dataset: Dataset,
        max_bad_fraction: float = 0.01,
        errors: tuple[type[BaseException], ...] = (OSError,),
    ) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise OptionError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.dataset = dataset
        self.max_bad_fraction = float(max_bad_fraction)
        self.errors = tuple(errors)
        size = len(dataset)  # type: ignore[arg-type]
        self.max_bad = math.floor(self.max_bad_fraction * size + 1e-9)
        self._bad = torch.zeros(max(size, 1), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def num_bad(self) -> int:
        """Distinct unreadable samples found so far (this process and its workers)."""
        return int(self._bad.sum())

    def _mark_bad(self, index: int, err: BaseException) -> None:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        self._bad[index] = 1
        bad, size = self.num_bad, len(self)
        if bad > self.max_bad:
            raise TooManyBadImages(
                f"{bad} of {size} training images could not be read (last: {first}); "
                f"more than data.max_bad_image_fraction={self.max_bad_fraction} allows. "
                "Fix or remove the files, or raise the fraction"
            )
        warnings.warn(
            f"skipping an unreadable training image: {first} ({bad} of {size} bad so far, "
            f"at most {self.max_bad} allowed)",
            stacklevel=3,
        )

    def __getitem__(self, index: int) -> Any:
        size = len(self)
        for step in range(size):
            candidate = (index + step) % size
            if self._bad[candidate]:
                continue
            try:
                return self.dataset[candidate]
            except self.errors as err:
                self._mark_bad(candidate, err)
        raise TooManyBadImages(f"none of the {size} training images could be read")
