"""Timing shared by every benchmark: records, median times and the machine line.

A leaf module: it imports nothing of ``tools/``, so every benchmark module can use it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def record(name: str, value: float, unit: str, digits: int = 4) -> dict:
    """One benchmark record ``{"name", "value", "unit"}``, the value rounded to ``digits``."""
    return {"name": name, "value": round(float(value), digits), "unit": unit}


def median_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn``, in seconds, after ``warmup`` calls.

    The CPU time is less sensitive to other processes on a loaded machine; with several threads it
    adds their times up.
    """
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` calls."""
    return median_times(fn, repeats, warmup)[0]


def machine_line() -> str:
    """``# <processor>, <n> cpus, torch <version>, <n> threads``: the header of a results table."""
    import torch  # only when a table is printed

    return (
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
