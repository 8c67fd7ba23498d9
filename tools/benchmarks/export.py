"""ONNX export: onnxruntime vs torch CPU latency, with and without the decoder in the graph.

Models have the official initialisation (random weights: latency does not depend on them), K=17,
batch 1. Records ``export.torch_threads`` and ``export.<backbone>.<size>.<what>``:

* ``torch.ms`` / ``onnxruntime.ms``: network forward (grid_sample adaptive convs in both);
* ``torch_decoder.ms``: torch forward + :class:`dekr.decoder.DEKRDecoder` (single scale, no flip,
  with its pose NMS); ``onnxruntime_decoder.ms``: the graph with the decoder in it (no NMS);
* ``export.s`` (export of the graph without decoder), ``onnx.mb`` (its file size).

Accuracy is checked by ``tests/test_export.py`` (the random official-init maps are too small for
a meaningful difference here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dekr.decoder import DEKRDecoder
from dekr.export import ONNXPoseDetector, ONNXPoseModel, export_onnx
from dekr.keypoints import COCO_KEYPOINTS
from dekr.models.dekr import build_model

from .timing import median_time, record

# backbone: input side (the official W32 test size and the quickstart preset at its size)
CONFIGS = {"hrnet_w32": 512, "hrnet_w16_small": 256}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (5)")
    parser.add_argument("--backbone", action="append", choices=list(CONFIGS),
                        help="model to export, repeatable (default: all)")  # fmt: skip


def bench_config(backbone: str, size: int, repeats: int, folder: Path) -> list[dict]:
    """Export one model with and without decoder and time torch and onnxruntime on it."""
    model = build_model(backbone, num_keypoints=17, adaptive_impl="grid_sample").eval()
    base = f"export.{backbone}.{size}"
    start = time.perf_counter()
    plain = export_onnx(model, folder / f"{backbone}.onnx", input_size=(size, size))
    seconds = time.perf_counter() - start
    with_decoder = export_onnx(
        model, folder / f"{backbone}_decoder.onnx", input_size=(size, size), with_decoder=True
    )
    out = [
        record(f"{base}.export.s", seconds, "s"),
        record(f"{base}.onnx.mb", plain.stat().st_size / 2**20, "MiB"),
    ]
    images = torch.randn(1, 3, size, size)
    decoder = DEKRDecoder(COCO_KEYPOINTS)

    def torch_forward() -> object:
        with torch.inference_mode():
            return model(images)

    def torch_decode() -> object:
        with torch.inference_mode():
            return decoder(*model(images))

    onnx_model, detector = ONNXPoseModel(plain), ONNXPoseDetector(with_decoder)
    timed = {
        "torch": torch_forward,
        "onnxruntime": lambda: onnx_model(images),
        "torch_decoder": torch_decode,
        "onnxruntime_decoder": lambda: detector(images),
    }
    for name, fn in timed.items():
        out.append(record(f"{base}.{name}.ms", 1e3 * median_time(fn, repeats), "ms"))
    return out


def run(args: argparse.Namespace) -> list[dict]:
    """All export records (``args.repeats`` timed runs per variant)."""
    out = [record("export.torch_threads", torch.get_num_threads(), "count")]
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbone or list(CONFIGS):
            out += bench_config(backbone, CONFIGS[backbone], args.repeats, Path(tmp))
    return out
