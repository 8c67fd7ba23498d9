"""``trainer.precision: auto``: bf16 autocast where it trains faster on this machine, else fp32.

Whether bf16 autocast pays depends on the machine far more than on the network: measured on the
quickstart network (``hrnet_w24_tiny``, 8 × 128², channels-last), a 2-core AMD EPYC with
AVX512-BF16 trains 1.3x faster in bf16, one 2-core Intel Xeon with AMX only 1.05x faster and
another 1.1x (its trial: 1.2-1.4x), and a CPU without bf16 instructions emulates it slower than
fp32 (docs/benchmarks.md). So ``auto`` times it:
:func:`choose_precision` runs a few forward + backward passes of a copy of the network on a
random batch of the training size, in fp32 and in bf16 autocast, and picks ``"bf16-mixed"``
(Lightning's switch, which the run is then built with) when it is at least ``min_gain`` faster,
``"32-true"`` otherwise. The trial uses its own random generator and a copy of the network, so
the run's weights, BatchNorm statistics and random streams are those of a run with the chosen
precision pinned. Validation runs in fp32 whatever the choice (:class:`dekr.module.DekrModule`),
so the AP of a bf16 run is measured as ``dekr-eval`` measures it.

Several processes (DDP) would each time on their own and might disagree, so there ``auto`` does
not time: it is ``"bf16-mixed"`` on CUDA GPUs that support bf16 and ``"32-true"`` elsewhere.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["PrecisionChoice", "choose_precision", "bf16_supported"]


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` chose and why (``fp32_s`` / ``bf16_s``: seconds per timed step, None when
    not timed)."""

    precision: str
    reason: str
    fp32_s: Optional[float] = None
    bf16_s: Optional[float] = None


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA: ``is_bf16_supported``; CPU: AVX512-BF16
    or AMX, which oneDNN uses; elsewhere False)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            fn = getattr(cpu, probe, None)
            if callable(fn) and fn():
                return True
    return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_backward(
    model: nn.Module, images: torch.Tensor, device: torch.device, bf16: bool
) -> None:
    """One forward + backward pass (the part of a training step that precision changes)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        outputs = model(images)
    loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()  # type: ignore[union-attr]
    model.zero_grad(set_to_none=True)


def _pass_seconds(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    steps: int,
    clock: Callable[[], float],
) -> tuple[float, float]:
    """Seconds of the fastest pass in fp32 and in bf16 autocast, timed in alternation (a machine
    whose speed drifts during the trial slows both alike). The fastest, not the median: other
    work on the machine only ever slows a pass down, and on a 2-core machine whose speed varied
    by 15-40 % from pass to pass the median of four read bf16 at 0.97x in one trial, where its
    fastest passes were 1.3x faster (docs/benchmarks.md)."""
    for bf16 in (False, True):  # first-call allocations, oneDNN kernel choices
        _forward_backward(model, images, device, bf16)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(steps):
        for bf16 in (False, True):
            _sync(device)
            t0 = clock()
            _forward_backward(model, images, device, bf16)
            _sync(device)
            times[bf16].append(clock() - t0)
    return min(times[False]), min(times[True])


def choose_precision(
    model: nn.Module,
    *,
    batch_size: int,
    input_size: int,
    device: torch.device,
    processes: int = 1,
    channels_last: bool = False,
    steps: int = 4,
    min_gain: float = 1.1,
    threads: Optional[int] = None,
    clock: Callable[[], float] = time.perf_counter,
) -> PrecisionChoice:
    """The precision ``trainer.precision=auto`` trains ``model`` with (see the module docstring).

    Args:
        model: the network (not modified: a copy is timed).
        batch_size, input_size: the training batch (per process) and square input side.
        device: where the run trains.
        processes: training processes; more than one decides without timing.
        channels_last: time the network as the run will run it.
        steps: timed passes per precision, in alternation (the fastest counts).
        min_gain: how much faster bf16 must be to be chosen (fp32 is kept on a tie).
        threads: torch threads for the trial on the CPU (None: as set). The training passes 1:
            the ratio is about the same as with 2 (quickstart network on 2 cores: 1.26-1.37x
            against 1.19-1.44x), and on a machine where another program holds one of two cores
            a two-thread trial runs ten times slower and spends a large part of a short budget.
        clock: seconds (tests pass a fake one).
    """
    if not bf16_supported(device):
        return PrecisionChoice("32-true", f"no native bf16 on {device.type}")
    if processes > 1:
        if device.type == "cuda":
            return PrecisionChoice("bf16-mixed", "CUDA with bf16, several processes (not timed)")
        return PrecisionChoice("32-true", f"{processes} processes on {device.type} (not timed)")
    trial = copy.deepcopy(model).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    trial = trial.to(memory_format=fmt)
    generator = torch.Generator().manual_seed(0)  # not the run's random streams
    images = torch.randn(batch_size, 3, input_size, input_size, generator=generator)
    images = images.to(device).contiguous(memory_format=fmt)
    before = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        fp32_s, bf16_s = _pass_seconds(trial, images, device, steps, clock)
    finally:
        torch.set_num_threads(before)
    gain = fp32_s / max(bf16_s, 1e-12)
    chosen = "bf16-mixed" if gain >= min_gain else "32-true"
    reason = f"bf16 autocast {gain:.2f}x the speed of fp32 (needs {min_gain:g}x)"
    return PrecisionChoice(chosen, reason, fp32_s, bf16_s)
