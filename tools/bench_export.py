"""ONNX export benchmark: onnxruntime vs torch CPU latency, with and without the decoder in graph.

``python tools/bench_export.py [--repeats N] [--json]`` (also ``tools/benchmark.py export``).
Models have the official initialisation (random weights: latency does not depend on them), K=17,
batch 1. Records ``export.<backbone>.<size>.<what>``:

* ``torch.ms`` / ``onnxruntime.ms``: network forward (grid_sample adaptive convs in both);
* ``torch_decoder.ms``: torch forward + :class:`dekr.decoder.DEKRDecoder` (single scale, no flip,
  with its pose NMS); ``onnxruntime_decoder.ms``: the graph with the decoder in it (no NMS);
* ``export.s`` (export of the graph without decoder), ``onnx.mb`` (its file size).

Accuracy is checked by ``tests/test_export.py`` (the random official-init maps are too small for
a meaningful difference here).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import median_time, record  # noqa: E402

from dekr.decoder import DEKRDecoder  # noqa: E402
from dekr.export import ONNXPoseDetector, ONNXPoseModel, export_onnx  # noqa: E402
from dekr.keypoints import COCO_KEYPOINTS  # noqa: E402
from dekr.models.dekr import build_model  # noqa: E402

# (backbone, input side): the official W32 test size and the quickstart preset at its size.
CONFIGS = (("hrnet_w32", 512), ("hrnet_w16_small", 256))


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds after ``warmup`` calls."""
    return 1000 * median_time(fn, repeats, warmup)


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
        out.append(record(f"{base}.{name}.ms", median_ms(fn, repeats), "ms"))
    return out


def run_export(args: Optional[argparse.Namespace] = None) -> list[dict]:
    """All export records (``args.repeats`` timed runs per variant, default 5)."""
    repeats = int(getattr(args, "repeats", 5) or 5)
    out = [record("export.torch_threads", torch.get_num_threads(), "count")]
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, size in CONFIGS:
            out += bench_config(backbone, size, repeats, Path(tmp))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    parser.add_argument("--json", action="store_true", help="print one JSON list of records")
    args = parser.parse_args(argv)
    records = run_export(args)
    if args.json:
        print(json.dumps(records))
    else:
        for r in records:
            print(f"{r['name']:<52} {r['value']:>12} {r['unit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
