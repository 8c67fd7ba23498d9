"""Target-generation speed: :func:`dekr.targets.encode_targets` against the batched torch path.

Records ``targets.{512,640}.people{1,5,15,30}.numpy`` and ``.torch_batch``, ms per sample: the
torch path encodes a batch of 8 on the CPU and is reported per sample.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch

from dekr.targets import encode_targets, encode_targets_batch

from .timing import median_time, record

BATCH = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")


def synthetic_people(rng: np.random.Generator, n: int, out_size: int, k: int = 17) -> np.ndarray:
    """(n, k, 3) people of 15-60 output px around random centres, ~80 % labelled keypoints."""
    centres = rng.uniform(0.1 * out_size, 0.9 * out_size, (n, 1, 2))
    sizes = rng.uniform(15, 60, (n, 1, 1))
    kps = np.zeros((n, k, 3), np.float32)
    kps[..., :2] = centres + rng.uniform(-0.5, 0.5, (n, k, 2)) * sizes
    kps[..., 2] = np.where(rng.random((n, k)) < 0.8, 2, 0)
    return kps


def run(args: argparse.Namespace) -> list[dict]:
    """ms per sample of :func:`encode_targets` and :func:`encode_targets_batch` (batch of 8)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    rng = np.random.default_rng(0)
    for size in (512, 640):
        out = size // 4
        for n in (1, 5, 15, 30):
            kps = synthetic_people(rng, n, out)
            areas = np.full(n, 4000.0, np.float32)
            mask = np.ones((out, out), bool)
            seconds = median_time(partial(encode_targets, kps, areas, mask, output_size=out), 15)
            records.append(record(f"targets.{size}.people{n}.numpy", 1e3 * seconds, "ms"))
            kb = torch.from_numpy(np.stack([synthetic_people(rng, n, out) for _ in range(BATCH)]))
            ab = torch.full((BATCH, n), 4000.0)
            mb = torch.ones(BATCH, out, out, dtype=torch.bool)
            fn = partial(encode_targets_batch, kb, ab, mb, output_size=out)
            seconds = median_time(fn, 5) / BATCH
            records.append(record(f"targets.{size}.people{n}.torch_batch", 1e3 * seconds, "ms"))
    return records
