"""Data-loading speed: training samples per second in one process, the real COCO sample.

Records ``data.512.samples_per_s``: read, augment at 512 and encode the targets (numpy) of every
image of the COCO sample (``$DEKR_COCO_SAMPLE``, default ``../shared/data/coco_sample``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from dekr.data.coco import COCOKeypoints
from dekr.data.datamodule import TrainSampleTransform
from dekr.keypoints import COCO_KEYPOINTS

from .timing import record

COCO_SAMPLE = Path(
    os.environ.get(
        "DEKR_COCO_SAMPLE", Path(__file__).resolve().parents[3] / "shared/data/coco_sample"
    )
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    parser.add_argument("--sample", type=Path, default=COCO_SAMPLE, help="COCO sample folder")


def run(args: argparse.Namespace) -> list[dict]:
    """Training samples per second in one process: read, augment at 512, encode targets."""
    if args.threads:
        torch.set_num_threads(args.threads)
    ann = args.sample / "annotations" / "person_keypoints_sample.json"
    tf = TrainSampleTransform(COCO_KEYPOINTS, input_size=512)
    ds = COCOKeypoints(str(ann), str(args.sample / "images"), COCO_KEYPOINTS, transform=tf)
    ds[0]  # warm-up
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    rate = len(ds) / (time.perf_counter() - start)
    return [record("data.512.samples_per_s", rate, "samples/s")]
