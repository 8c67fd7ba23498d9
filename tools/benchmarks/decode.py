"""Decoding speed: flip averaging, centre NMS, pose NMS and inverse resize, network excluded.

A 640×480 image at input size 512 (input 704×512, maps 176×128), single scale with flip test;
the "network" returns pre-computed maps (encoded from 5 / 15 / 30 synthetic people), so the time
covers the flipped input, flip-back and averaging of maps, decoding and the inverse transform,
as :func:`dekr.inference.predict_poses` runs them (the input batch is reused for the flipped pass).
Records ``decode.640x480.flip[.match].people{N}.t{threads}.b{batch}``, ms per image: the median
wall time and, as ``….cpu``, the median process CPU time (less sensitive to other processes on a
loaded machine; with several threads it adds their times up); threads 1 and torch's default.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dekr.decoder import DEKRDecoder
from dekr.inference import eval_transform, forward_scale
from dekr.keypoints import COCO_KEYPOINTS
from dekr.targets import encode_targets

from .timing import median_times, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per case (15)")
    parser.add_argument("--match-heatmaps", action="store_true", help="decode.match_heatmaps")


def _maps(people: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded targets of ``people`` random people plus noise: (K+1, h, w), (2K, h, w)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform([15, 20], [w - 15, h - 20], size=(people, 1, 2))
    kps = centers + rng.normal(0, 6, size=(people, 17, 2))
    kps = np.concatenate([kps, np.full((people, 17, 1), 2.0)], axis=-1)
    t = encode_targets(kps, np.full(people, 1e4), None, output_size=(h, w))
    noise = torch.from_numpy(rng.normal(0, 0.003, size=t["heatmaps"].shape)).float()
    return torch.from_numpy(t["heatmaps"]) + noise, torch.from_numpy(t["offsets"])


def _time_decode(
    people: int, batch: int, repeats: int, match_heatmaps: bool = False
) -> tuple[float, float]:
    """Median (wall, CPU) ms per image."""
    spec = COCO_KEYPOINTS
    t = eval_transform(480, 640, 512)
    h_in, w_in = t.input_hw
    heat, off = _maps(people, h_in // 4, w_in // 4)
    heat, off = heat[None].repeat(batch, 1, 1, 1), off[None].repeat(batch, 1, 1, 1)
    images = torch.zeros(batch, 3, h_in, w_in)
    sizes = torch.tensor([[h_in, w_in]] * batch)
    decoder = DEKRDecoder(spec, match_heatmaps=match_heatmaps)

    def model(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return heat, off

    def decode() -> None:
        maps = forward_scale(model, images, sizes, spec=spec, scale=1.0, flip=True,
                             reuse_input=True)  # fmt: skip
        for det in decoder.decode([maps]):
            det["keypoints"][..., :2] = t.to_original(det["keypoints"][..., :2])

    wall, cpu = median_times(decode, repeats, warmup=1)
    return 1e3 * wall / batch, 1e3 * cpu / batch


def run(args: argparse.Namespace) -> list[dict]:
    """Records ``decode.640x480.flip[.match].people{N}.t{threads}.b{batch}[.cpu]`` in ms/image."""
    records = []
    default_threads = torch.get_num_threads()
    tag_match = ".match" if args.match_heatmaps else ""
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for people in (5, 15, 30):
            for batch in (1, 8):
                wall, cpu = _time_decode(people, batch, args.repeats, args.match_heatmaps)
                name = f"decode.640x480.flip{tag_match}.people{people}.t{threads}.b{batch}"
                records.append(record(name, wall, "ms", digits=3))
                records.append(record(name + ".cpu", cpu, "ms", digits=3))
    torch.set_num_threads(default_threads)
    return records
