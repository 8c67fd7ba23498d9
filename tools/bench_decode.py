"""Decoding speed: flip averaging, centre NMS, pose NMS and inverse resize, network excluded.

    python tools/bench_decode.py

A 640×480 image at input size 512 (input 704×512, maps 176×128), single scale with flip test;
the "network" returns pre-computed maps (encoded from 5 / 15 / 30 synthetic people), so the time
covers the flipped input, flip-back and averaging of maps, decoding and the inverse transform.
Prints one JSON list of ``{"name", "value", "unit"}`` records, ms per image.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from dekr.decoder import DEKRDecoder
from dekr.inference import eval_transform, forward_scale
from dekr.keypoints import COCO_KEYPOINTS
from dekr.targets import encode_targets


def _maps(people: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    centers = rng.uniform([15, 20], [w - 15, h - 20], size=(people, 1, 2))
    kps = centers + rng.normal(0, 6, size=(people, 17, 2))
    kps = np.concatenate([kps, np.full((people, 17, 1), 2.0)], axis=-1)
    t = encode_targets(kps, np.full(people, 1e4), None, output_size=(h, w))
    noise = torch.from_numpy(rng.normal(0, 0.003, size=t["heatmaps"].shape)).float()
    return torch.from_numpy(t["heatmaps"]) + noise, torch.from_numpy(t["offsets"])


def _time_decode(people: int, batch: int, repeats: int) -> float:
    """Median ms per image."""
    spec = COCO_KEYPOINTS
    t = eval_transform(480, 640, 512)
    w_in, h_in = t.size
    heat, off = _maps(people, h_in // 4, w_in // 4)
    heat, off = heat[None].repeat(batch, 1, 1, 1), off[None].repeat(batch, 1, 1, 1)
    images = torch.zeros(batch, 3, h_in, w_in)
    sizes = torch.tensor([[h_in, w_in]] * batch)
    decoder = DEKRDecoder(spec)
    model = lambda x: (heat, off)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        maps = forward_scale(model, images, sizes, spec=spec, scale=1.0, flip=True)
        for det in decoder.decode([maps]):
            det["keypoints"][..., :2] = t.to_original(det["keypoints"][..., :2])
        times.append((time.perf_counter() - start) * 1000 / batch)
    return float(np.median(times[1:]))


def run_decode(repeats: int = 5) -> list[dict]:
    """Benchmark records ``decode.640x480.flip.people{N}.t{threads}.b{batch}`` in ms/image."""
    records = []
    default_threads = torch.get_num_threads()
    for threads, tag in ((1, "t1"), (default_threads, f"t{default_threads}")):
        torch.set_num_threads(threads)
        for people in (5, 15, 30):
            for batch in (1, 8):
                value = _time_decode(people, batch, repeats)
                name = f"decode.640x480.flip.people{people}.{tag}.b{batch}"
                records.append({"name": name, "value": round(value, 3), "unit": "ms"})
    torch.set_num_threads(default_threads)
    return records


if __name__ == "__main__":
    print(json.dumps(run_decode(), indent=1))
