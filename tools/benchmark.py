"""Benchmarks: ``python tools/benchmark.py {model,targets,data,decode,train,export} [--json]``.

With ``--json`` one JSON list of ``{"name", "value", "unit"}`` records is printed; otherwise a
table. Results go into ``docs/benchmarks.md`` with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def record(name: str, value: float, unit: str) -> dict:
    return {"name": name, "value": round(float(value), 4), "unit": unit}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """The machine's matmul throughput in GFLOP/s for ``dtype`` (the roofline reference)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    seconds = median_time(lambda: a @ b, repeats, warmup=2)
    return 2 * n**3 / seconds / 1e9


def run_model(args: argparse.Namespace) -> list[dict]:
    from dekr.models.dekr import build_model
    from dekr.models.summary import count_multiply_adds, count_parameters

    model = build_model(args.backbone, num_keypoints=17, adaptive_impl=args.impl).eval()
    size = args.size
    macs = count_multiply_adds(model, (size, size))
    base = f"model.{args.backbone}.{size}"
    out = [
        record(f"{base}.params", count_parameters(model), "count"),
        record(f"{base}.multiply_adds", macs / 1e9, "G"),
    ]
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    out += [record(f"machine.matmul.{k}", v, "GFLOP/s") for k, v in peak.items()]
    variants = [("fp32", False, False), ("fp32.channels_last", True, False)]
    if args.bf16:
        variants += [("bf16", False, True), ("bf16.channels_last", True, True)]
    for name, channels_last, bf16 in variants:
        if args.channels_last is False and channels_last:
            continue
        m = model.to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        x = torch.randn(1, 3, size, size)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)

        def forward(m=m, x=x, bf16=bf16) -> None:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                m(x)

        seconds = median_time(forward, args.repeats, warmup=1)
        gflops = 2 * macs / seconds / 1e9
        ref = peak["bf16" if bf16 else "fp32"]
        out += [
            record(f"{base}.forward.{name}", seconds * 1000, "ms"),
            record(f"{base}.forward.{name}.gflops", gflops, "GFLOP/s"),
            record(f"{base}.forward.{name}.fraction_of_matmul_peak", gflops / ref, "ratio"),
        ]
    return out


def run_targets(args: argparse.Namespace) -> list[dict]:
    from bench_targets import run_targets as bench

    return bench(json_mode=args.json)


def run_data(args: argparse.Namespace) -> list[dict]:
    from bench_targets import run_data as bench

    return bench()


def run_decode(args: argparse.Namespace) -> list[dict]:
    from bench_decode import run_decode as bench

    return bench()


def run_train(args: argparse.Namespace) -> list[dict]:
    from bench_train import run_train as bench

    return bench(args)


def run_export(args: argparse.Namespace) -> list[dict]:
    from bench_export import run_export as bench

    return bench(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model", help="parameters, multiply-adds, forward time")
    model.add_argument("--backbone", default="hrnet_w32")
    model.add_argument("--size", type=int, default=512)
    model.add_argument("--impl", default="auto", help="adaptive convolution implementation")
    model.add_argument("--repeats", type=int, default=5)
    model.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    model.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    for name in ("targets", "data", "decode", "train", "export"):
        sub.add_parser(name)
    for p in sub.choices.values():
        p.add_argument("--json", action="store_true", help="print one JSON list of records")
    args = parser.parse_args(argv)
    records = globals()[f"run_{args.command}"](args)
    if args.json:
        print(json.dumps(records))
    else:
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        for r in records:
            print(f"{r['name']:<60} {r['value']:>14} {r['unit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
