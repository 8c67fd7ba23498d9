"""Training throughput: images per second of full training steps (forward, loss, backward, Adam).

``run_train(args) -> list[dict]`` for ``tools/benchmark.py train``: the quickstart model
(``hrnet_w8_tiny``, 8 × 128²) and W32 at 512 (batch 2), in fp32, bf16 autocast and
channels-last, with targets built in the data pipeline (numpy, per sample) or on the device
(``encode_targets_batch``, per batch). Data decoding/augmentation is excluded: the batch is a
fixed synthetic one, so the figures are the model + target cost only.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dekr.loss import DEKRLoss  # noqa: E402
from dekr.models.dekr import build_model  # noqa: E402
from dekr.targets import encode_targets, encode_targets_batch  # noqa: E402


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

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_train(args: Any = None) -> list[dict]:
    cases = [("quickstart", "hrnet_w8_tiny", 8, 128, 10), ("w32", "hrnet_w32", 2, 512, 3)]
    variants = [
        ("fp32", False, False, False),
        ("bf16", True, False, False),
        ("fp32.channels_last", False, True, False),
        ("bf16.channels_last", True, True, False),
        ("fp32.targets_on_device", False, False, True),
    ]
    out = []
    for label, backbone, batch, size, repeats in cases:
        for name, bf16, cl, dev in variants:
            seconds = _step_time(
                backbone, batch, size, bf16=bf16, channels_last=cl, on_device=dev, repeats=repeats
            )
            out.append(
                {
                    "name": f"train.{label}.{size}.b{batch}.{name}",
                    "value": round(batch / seconds, 3),
                    "unit": "images/s",
                }
            )
    return out


if __name__ == "__main__":
    for r in run_train():
        print(f"{r['name']:<50} {r['value']:>10} {r['unit']}")
