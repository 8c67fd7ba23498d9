"""Lightning callbacks of the training system.

:class:`RNGStateCallback` makes a resumed run continue the random streams of the interrupted one.
Lightning restores weights, optimizer, schedulers and loop counters from a checkpoint, but not the
global random generators (torch, CUDA, numpy, python ``random``): a resumed run would otherwise
start the next epoch from the freshly seeded generators (``seed_everything``), so its shuffling
order and augmentations (DataLoader worker seeds are drawn from the torch generator) would differ
from those of an uninterrupted run. With this callback, a deterministic run
(``trainer.deterministic=true``) that is killed and resumed with ``resume=auto`` ends with the same
weights as one that was never interrupted (tests/test_reliability.py).

The states are stored as plain tensors, ints and tuples, so checkpoints still load with
``torch.load(weights_only=True)``. Every process restores the states rank 0 saved; all ranks start
from the same ``seed_everything`` seed, so this matches how the run began.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from dekr import budget as time_budget

__all__ = ["RNGStateCallback", "ValidationReport", "collect_rng_states", "restore_rng_states"]

_KEY = "rng_states"


def collect_rng_states() -> dict[str, Any]:
    """The global torch (CPU, CUDA), numpy and python generator states, ``weights_only``-safe."""
    # the legacy global generator is the one seed_everything seeds and user code may draw from
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (
            str(kind),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),  # fmt: skip
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the generators from :func:`collect_rng_states` (missing entries are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "numpy" in states:
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class RNGStateCallback(pl.Callback):
    """Save the global random generator states in every checkpoint; restore them on resume."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[_KEY] = collect_rng_states()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get(_KEY)
        if states:
            restore_rng_states(states)


class ValidationReport(pl.Callback):
    """One console line per validation: ``epoch 6  2.8 min  AP 0.412`` (rank 0), minutes counted
    from ``started`` (:func:`dekr.budget.now` at the start of the command), and the epoch of the
    best AP, for the run's closing lines."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.best: Optional[tuple[float, int]] = None  # (AP, epoch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        ap = trainer.callback_metrics.get("val/AP")
        if ap is None:
            return
        fitting = trainer.state.fn == "fit"
        ap, epoch = float(ap), trainer.current_epoch + (1 if fitting else 0)
        if fitting and (self.best is None or ap > self.best[0]):
            self.best = (ap, epoch)
        minutes = (time_budget.now() - self.started) / 60
        time_budget.say(trainer, f"epoch {epoch}  {minutes:.1f} min  AP {ap:.3f}")
