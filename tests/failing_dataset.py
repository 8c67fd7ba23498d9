"""A dataset for the DDP failure test: it raises in the process of global rank 1."""

from __future__ import annotations

import os

import numpy as np


class FailOnRankOne:
    """Blank raw samples on rank 0; an error on rank 1 at the first item."""

    def __init__(self, size: int = 16, spec: object = None) -> None:
        self.size = size
        self.k = getattr(spec, "num_keypoints", 17)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "1":
            raise RuntimeError("rank 1 fails on purpose")
        return {
            "image": np.zeros((64, 64, 3), np.uint8),
            "keypoints": np.zeros((0, self.k, 3), np.float32),
            "areas": np.zeros((0,), np.float32),
            "ignore_mask": np.zeros((64, 64), bool),
            "image_id": index,
        }
