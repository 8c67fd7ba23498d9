"""Training throughput: images per second of full training steps (forward, loss, backward, Adam).

The quickstart model (``hrnet_w24_tiny``, 8 × 128²) and W32 at 512 (batch 2), in fp32, bf16
autocast and channels-last, with targets built in the data pipeline (numpy, per sample) or on the
device (``encode_targets_batch``, per batch). Data decoding/augmentation is excluded: the batch is
a fixed synthetic one, so the figures are the model + target cost only. Records
``train.<case>.<size>.b<batch>.<variant>`` in images/s.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from dekr.loss import DEKRLoss
from dekr.models.dekr import build_model
from dekr.targets import encode_targets, encode_targets_batch

from .timing import median_time, record

# case: (backbone, batch, input side, timed steps)
CASES = {"quickstart": ("hrnet_w24_tiny", 8, 128, 10), "w32": ("hrnet_w32", 2, 512, 3)}
# variant: (bf16 autocast, channels-last, targets on the device)
VARIANTS = {
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "fp32.channels_last": (False, True, False),
    "bf16.channels_last": (True, True, False),
    "fp32.targets_on_device": (False, False, True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="case to run, repeatable (default: all)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per variant (default: 10 quickstart, 3 w32)")  # fmt: skip


def _people(rng: np.random.Generator, batch: int, size: int, k: int, n: int = 5) -> np.ndarray:
    """(B, N, K, 3) random people in output pixels."""
    out = size // 4
    centres = rng.uniform(0.2 * out, 0.8 * out, (batch, n, 1, 2))
    spread = rng.uniform(0.05 * out, 0.15 * out, (batch, n, 1, 1))
    xy = centres + rng.normal(0, 1, (batch, n, k, 2)) * spread
    return np.concatenate([xy, np.full((batch, n, k, 1), 2.0)], -1).astype(np.float32)


def _step_time(
    backbone: str,
    batch: int,
    size: int,
    *,
    bf16: bool,
    channels_last: bool,
    on_device: bool,
    repeats: int,
) -> float:
    torch.manual_seed(0)
    k = 17
    model = build_model(backbone, num_keypoints=k).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = DEKRLoss()
    images = torch.randn(batch, 3, size, size).to(memory_format=fmt)
    people = _people(np.random.default_rng(0), batch, size, k)
    areas = np.full(people.shape[:2], 64.0**2, np.float32)
    kw: dict[str, Any] = {"output_size": size // 4}

    def targets() -> dict[str, torch.Tensor]:
        if on_device:
            return encode_targets_batch(
                torch.from_numpy(people), torch.from_numpy(areas), None, **kw
            )
        maps = [encode_targets(p, a, None, **kw) for p, a in zip(people, areas)]
        return {name: torch.from_numpy(np.stack([m[name] for m in maps])) for name in maps[0]}

    def step() -> None:
        t = targets()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            heatmaps, offsets = model(images)
        loss = criterion(heatmaps.float(), offsets.float(), t)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_time(step, repeats, warmup=1)


def run(args: argparse.Namespace) -> list[dict]:
    out = []
    for label in args.case or list(CASES):
        backbone, batch, size, repeats = CASES[label]
        for name, (bf16, cl, dev) in VARIANTS.items():
            seconds = _step_time(backbone, batch, size, bf16=bf16, channels_last=cl,
                                 on_device=dev, repeats=args.repeats or repeats)  # fmt: skip
            out.append(record(f"train.{label}.{size}.b{batch}.{name}", batch / seconds,
                              "images/s", digits=3))  # fmt: skip
    return out
