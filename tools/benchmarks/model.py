"""Model size and speed: parameters, multiply-adds and forward time, against the matmul peak.

Records ``model.<backbone>.<size>.params`` / ``.multiply_adds`` (G), ``machine.matmul.{fp32,bf16}``
(GFLOP/s of a 2048² matmul, the roofline reference) and, per variant (fp32, bf16 autocast, each
also channels-last), ``model.<backbone>.<size>.forward.<variant>`` (ms, batch 1) with its
``.gflops`` and ``.fraction_of_matmul_peak``.
"""

from __future__ import annotations

import argparse

import torch

from dekr.models.dekr import build_model
from dekr.models.summary import count_multiply_adds, count_parameters

from .timing import median_time, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="hrnet_w32", help="backbone preset (hrnet_w32)")
    parser.add_argument("--size", type=int, default=512, help="square input side (512)")
    parser.add_argument("--impl", default="auto", help="adaptive convolution implementation")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (5)")
    flag = argparse.BooleanOptionalAction
    parser.add_argument("--channels-last", action=flag, default=True, help="also channels-last")
    parser.add_argument("--bf16", action=flag, default=True, help="also bf16 autocast")


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """The machine's matmul throughput in GFLOP/s for ``dtype`` (the roofline reference)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    seconds = median_time(lambda: a @ b, repeats, warmup=2)
    return 2 * n**3 / seconds / 1e9


def run(args: argparse.Namespace) -> list[dict]:
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
