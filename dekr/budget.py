"""A wall-clock budget that the training schedule follows (``trainer.budget_minutes``).

A budget covers a whole run: from the moment ``dekr-train`` starts (start-up and synthetic data
generation included) to the final validation's AP line. :class:`TimeBudget` measures the
seconds per optimizer step after a short warm-up and the seconds per validation image on a few
validation samples, and plans the number of epochs that fit in what is left of the budget. The
learning-rate schedule (:func:`dekr.module.lr_factor`: warm-up, cosine, or milestones given as
fractions of the run) is laid over the planned epochs, so that a slow or busy machine gets fewer
epochs of a *finished* schedule, never a schedule cut in the middle; the last planned epoch
always validates.

The plan is re-checked at every epoch end with the measured epoch and validation times: in the
first half of the plan it may grow or shrink, after that only shrink (so that the learning rate
never rises again late in a cosine). ``trainer.max_epochs`` is the most epochs a plan may take.
Under DDP, rank 0 decides and the plan is broadcast. The plan is saved in checkpoints: a resumed
run continues the same plan and does not re-plan. Lightning's ``max_time`` stays a safety net
above the budget (``trainer.max_time_minutes``).

Times come from :func:`now` (``time.monotonic``), which tests replace by a fake clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import pytorch_lightning as pl
import torch

__all__ = ["TimeBudget", "Plan", "plan_epochs", "now"]


def now() -> float:
    """The budget's clock, in seconds (monotonic)."""
    return time.monotonic()


@dataclass
class Plan:
    """How a budget run is laid out; saved in checkpoints."""

    epochs: int  # planned epochs (the schedule's length)
    images_per_s: float  # training throughput the plan assumes
    step_s: float  # seconds per training batch
    val_s: float  # seconds per validation pass
    budget_minutes: float


def plan_epochs(
    *,
    remaining_s: float,
    done_epochs: float,
    epoch_s: float,
    val_s: float,
    val_every: Optional[int],
    max_epochs: int,
) -> int:
    """The most epochs ``E`` (``done_epochs`` < ``E`` ≤ ``max_epochs``, at least the current
    one) whose remaining training, ``epoch_s`` per epoch, and validations, ``val_s`` each (every
    ``val_every`` epochs and after the last), fit in ``remaining_s`` seconds."""
    current = int(math.floor(done_epochs)) + 1  # the epoch under way must end
    best = min(current, max_epochs)
    validated = int(math.floor(done_epochs)) // val_every if val_every else 0
    for epochs in range(current, max_epochs + 1):
        validations = (epochs // val_every if val_every else 0) - validated
        if not val_every or epochs % val_every:
            validations += 1  # the last epoch always validates
        if (epochs - done_epochs) * epoch_s + validations * val_s > remaining_s:
            break
        best = epochs
    return best


class TimeBudget(pl.Callback):
    """Plan a run's epochs so that it ends, validated, within ``minutes`` of ``started``.

    Args:
        minutes: the budget.
        started: :func:`now` at the start of the command (default: when the callback is made).
        warmup_batches: training batches run before timing starts (data workers starting,
            first-call allocations).
        measure_batches: batches timed for the first plan.
        val_samples: validation samples timed for the cost of a validation pass.
        margin: fraction of the budget kept free (teardown, noise in the estimates).
    """

    def __init__(
        self,
        minutes: float,
        *,
        started: Optional[float] = None,
        warmup_batches: int = 3,
        measure_batches: int = 10,
        val_samples: int = 2,
        margin: float = 0.04,
    ) -> None:
        self.minutes = float(minutes)
        self.started = now() if started is None else float(started)
        self.warmup_batches, self.measure_batches = warmup_batches, measure_batches
        self.val_samples, self.margin = val_samples, margin
        self.plan: Optional[Plan] = None
        self.resumed = False
        self._val_every: Optional[int] = None
        self._batches = 0
        self._t0: Optional[float] = None
        self._timed_from = 0
        self._cap = 1
        self._epoch_t0: Optional[float] = None
        self._val_t0: Optional[float] = None
        self._last_epoch_s: Optional[float] = None

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        return "TimeBudget"

    def state_dict(self) -> dict[str, Any]:
        return {"plan": asdict(self.plan) if self.plan else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("plan"):
            self.plan = Plan(**state_dict["plan"])
            self.resumed = True

    # ------------------------------------------------------------------ helpers
    @property
    def budget_s(self) -> float:
        return self.minutes * 60

    def _remaining_s(self) -> float:
        return self.budget_s * (1 - self.margin) - (now() - self.started)

    def _apply(self, trainer: pl.Trainer, module: pl.LightningModule, epochs: int) -> None:
        trainer.fit_loop.max_epochs = epochs
        module.schedule_epochs = epochs  # read by the module's learning-rate schedule

    def _say(self, trainer: pl.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            bar = trainer.progress_bar_callback
            (bar.print if bar is not None else print)(text)

    def _val_pass_s(self, trainer: pl.Trainer, module: pl.LightningModule) -> float:
        """Seconds of a validation pass, from a few timed validation samples."""
        dataset = getattr(trainer.datamodule, "val_dataset", None)
        predict = getattr(module, "predict_images", None)
        if dataset is None or predict is None or len(dataset) == 0:
            return 0.0
        n = min(self.val_samples, len(dataset))
        samples = [dataset[i] for i in range(n)]
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                predict([samples[0]["image"]])  # warm-up
                t0 = now()
                predict([s["image"] for s in samples])
                per_image = (now() - t0) / n
        finally:
            module.train(training)
        total = len(dataset)
        limit = trainer.limit_val_batches
        if isinstance(limit, int):
            total = min(total, limit * (trainer.datamodule.val_batch_size or 1))
        elif isinstance(limit, float):
            total = int(total * limit)
        return per_image * total / max(trainer.world_size, 1)

    def _decide(self, trainer: pl.Trainer, epochs: int) -> int:
        return int(trainer.strategy.broadcast(epochs, src=0))

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_every = trainer.check_val_every_n_epoch
        self._cap = int(trainer.max_epochs or 1)
        if self.plan is not None:  # resumed: the same plan, not a new one
            self._apply(trainer, pl_module, self.plan.epochs)
            self._say(trainer, f"budget {self.minutes:g} min: resuming the plan of "
                               f"{self.plan.epochs} epochs")  # fmt: skip
        else:
            pl_module.schedule_epochs = self._cap  # until the first plan

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_t0 = now()
        if self.plan is not None and trainer.current_epoch == self.plan.epochs - 1:
            trainer.check_val_every_n_epoch = 1  # the last planned epoch validates
        elif self._val_every is not None:
            trainer.check_val_every_n_epoch = self._val_every

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if self.plan is None and self._t0 is None and self._batches >= self._warmup(trainer):
            self._t0, self._timed_from = now(), self._batches

    def _warmup(self, trainer: pl.Trainer) -> int:
        """Untimed batches: ``warmup_batches``, but at least one batch of the first epoch is
        timed."""
        return max(min(self.warmup_batches, int(trainer.num_training_batches) - 1), 0)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if self.plan is not None:
            return
        self._batches += 1
        per_epoch = int(trainer.num_training_batches)
        if self._t0 is None:
            return
        timed = self._batches - self._timed_from
        in_epoch = int(args[-1]) + 1 if args else per_epoch  # batches of this epoch done
        if timed < self.measure_batches and in_epoch < per_epoch:
            return  # measure on, up to the end of the epoch
        step_s = (now() - self._t0) / timed
        val_s = self._val_pass_s(trainer, pl_module)
        batch = getattr(trainer.datamodule, "batch_size", None) or 1
        done = trainer.current_epoch + in_epoch / per_epoch
        epochs = plan_epochs(
            remaining_s=self._remaining_s(),
            done_epochs=done,
            epoch_s=step_s * per_epoch,
            val_s=val_s,
            val_every=self._val_every,
            max_epochs=self._cap,
        )
        epochs = self._decide(trainer, epochs)
        rate = batch * trainer.world_size / max(step_s, 1e-9)
        self.plan = Plan(epochs, rate, step_s, val_s, self.minutes)
        self._apply(trainer, pl_module, epochs)
        spent = (now() - self.started) / 60
        self._say(
            trainer,
            f"budget {self.minutes:g} min: about {epochs} epochs at {rate:.1f} images/s "
            f"({spent:.1f} min spent on start-up, data and the first steps; a validation "
            f"pass about {val_s:.0f} s)",
        )
        if self._remaining_s() < (epochs - done) * step_s * per_epoch:
            self._say(trainer, f"budget {self.minutes:g} min: even the epoch under way does "
                               "not fit; it is finished and validated anyway")  # fmt: skip
        if epochs - 1 == trainer.current_epoch:
            trainer.check_val_every_n_epoch = 1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_t0 = now()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plan is not None and self._val_t0 is not None and not trainer.sanity_checking:
            self.plan.val_s = now() - self._val_t0
        self._val_t0 = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_t0 is not None:
            self._last_epoch_s = now() - self._epoch_t0
        if self.plan is None or self.resumed or self._last_epoch_s is None:
            return
        done = trainer.current_epoch + 1
        if done >= self.plan.epochs:
            return
        # the measured epoch time includes this epoch's validation when it had one: take it out
        epoch_s = self._last_epoch_s
        validated = self._val_every and done % self._val_every == 0
        if validated and self._val_t0 is None:
            epoch_s = max(epoch_s - self.plan.val_s, epoch_s * 0.5)
        fit = plan_epochs(
            remaining_s=self._remaining_s(),
            done_epochs=done,
            epoch_s=epoch_s,
            val_s=self.plan.val_s,
            val_every=self._val_every,
            max_epochs=self._cap,
        )
        if done < self.plan.epochs / 2:
            epochs = fit
        else:
            epochs = min(fit, self.plan.epochs)
        epochs = self._decide(trainer, epochs)
        if epochs != self.plan.epochs:
            batch = getattr(trainer.datamodule, "batch_size", None) or 1
            self.plan.step_s = epoch_s / max(trainer.num_training_batches, 1)
            self.plan.images_per_s = batch * trainer.world_size / self.plan.step_s
            self._say(
                trainer,
                f"budget {self.minutes:g} min: re-planned from {self.plan.epochs} to {epochs} "
                f"epochs ({self.plan.images_per_s:.1f} images/s)",
            )
            self.plan.epochs = epochs
            self._apply(trainer, pl_module, epochs)
