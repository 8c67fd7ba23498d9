"""Target-generation and data-loading speed.

    python tools/bench_targets.py            # prints one record per line
    python tools/bench_targets.py --json     # prints one JSON list

Records are ``{"name", "value", "unit"}``: ``targets.{512,640}.people{1,5,15,30}.numpy`` and
``.torch_batch`` (ms per sample; the torch path encodes a batch of 8 on the CPU and is reported per
sample) and ``data.512.samples_per_s`` (augmentation + targets, one process, real COCO sample).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from benchmark import median_time

from dekr.data.coco import COCOKeypoints
from dekr.data.datamodule import TrainSampleTransform
from dekr.keypoints import COCO_KEYPOINTS
from dekr.targets import encode_targets, encode_targets_batch

COCO_SAMPLE = Path(
    os.environ.get(
        "DEKR_COCO_SAMPLE", Path(__file__).resolve().parents[2] / "shared/data/coco_sample"
    )
)
BATCH = 8


def synthetic_people(rng: np.random.Generator, n: int, out_size: int, k: int = 17) -> np.ndarray:
    """(n, k, 3) people of 15-60 output px around random centres, ~80 % labelled keypoints."""
    centres = rng.uniform(0.1 * out_size, 0.9 * out_size, (n, 1, 2))
    sizes = rng.uniform(15, 60, (n, 1, 1))
    kps = np.zeros((n, k, 3), np.float32)
    kps[..., :2] = centres + rng.uniform(-0.5, 0.5, (n, k, 2)) * sizes
    kps[..., 2] = np.where(rng.random((n, k)) < 0.8, 2, 0)
    return kps


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    return 1e3 * median_time(fn, repeats)


def run_targets(json_mode: bool = False) -> list[dict]:
    """ms per sample of :func:`encode_targets` and :func:`encode_targets_batch` (batch of 8)."""
    records = []
    rng = np.random.default_rng(0)
    for size in (512, 640):
        out = size // 4
        for n in (1, 5, 15, 30):
            kps = synthetic_people(rng, n, out)
            areas = np.full(n, 4000.0, np.float32)
            mask = np.ones((out, out), bool)
            ms = _median_ms(partial(encode_targets, kps, areas, mask, output_size=out), 15)
            records.append({"name": f"targets.{size}.people{n}.numpy", "value": ms, "unit": "ms"})
            kb = torch.from_numpy(np.stack([synthetic_people(rng, n, out) for _ in range(BATCH)]))
            ab = torch.full((BATCH, n), 4000.0)
            mb = torch.ones(BATCH, out, out, dtype=torch.bool)
            fn = partial(encode_targets_batch, kb, ab, mb, output_size=out)
            ms = _median_ms(fn, 5) / BATCH
            records.append(
                {"name": f"targets.{size}.people{n}.torch_batch", "value": ms, "unit": "ms"}
            )
            if not json_mode:
                print(*(f"{r['name']}: {r['value']:.2f} {r['unit']}" for r in records[-2:]))
    return records


def run_data() -> list[dict]:
    """Training samples per second in one process: read, augment at 512, encode targets."""
    ann = COCO_SAMPLE / "annotations" / "person_keypoints_sample.json"
    tf = TrainSampleTransform(COCO_KEYPOINTS, input_size=512)
    ds = COCOKeypoints(str(ann), str(COCO_SAMPLE / "images"), COCO_KEYPOINTS, transform=tf)
    ds[0]  # warm-up
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    rate = len(ds) / (time.perf_counter() - t)
    return [{"name": "data.512.samples_per_s", "value": rate, "unit": "samples/s"}]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="DEKR target and data loading benchmark")
    p.add_argument("--json", action="store_true", help="print one JSON list of records")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # per-worker figures
    records = run_targets(json_mode=args.json) + run_data()
    if args.json:
        print(json.dumps(records))
    else:
        print(f"{records[-1]['name']}: {records[-1]['value']:.1f} {records[-1]['unit']}")


if __name__ == "__main__":
    main()
