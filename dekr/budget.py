"""A wall-clock budget that the training schedule follows (``trainer.budget_minutes``).

A budget covers a whole run: from the moment ``dekr-train`` starts (start-up and synthetic data
generation included) to the final validation's AP line. :class:`TimeBudget` measures the
seconds per training batch after a short warm-up and the seconds per validation image on a few
validation samples, and plans the number of training batches that fit in what is left of the
budget, validations included. The learning-rate schedule (:func:`dekr.module.lr_factor`:
warm-up, cosine, linear, or milestones given as fractions of the run) is laid over the planned
length, so that a slow or busy machine gets a shorter run of a *finished* schedule, never a
schedule cut in the middle. The run stops at the planned batch, which may fall inside an epoch,
and validates there (inside ``fit``, so ``best.ckpt`` sees the final weights); ``last.ckpt`` is
written then too.

The periodic validations (``trainer.check_val_every_n_epoch``) run within the plan's first three
quarters only (``periodic_until``): a later one would come shortly before the validation at the
plan's end, and its time goes to training instead.

The plan is re-checked after every tenth of it (``recheck``), from the speed of that last stretch
(its validations taken out), inside epochs too, and may grow (a machine that speeds up uses its
budget) or shrink (a machine that slows down is caught before the budget is spent); past the
plan's middle it shrinks only when it would overrun the whole budget, margin included, so that
a slow stretch of noise does not cut it. A re-plan never moves the schedule back: the schedule
keeps the point it has reached and lays its rest over the plan's new rest (:meth:`Plan.replan`),
so a late growth slows the cosine down instead of raising its learning rate again.

On the CPU the first timing is made with half the torch threads and repeated with all of them,
and the faster count is kept (a busy machine trains faster with fewer threads); the second
timing stops as soon as it can no longer win (on a machine with a busy core two threads are ten
times slower than one). ``trainer.max_epochs`` bounds the plan.
Under DDP, rank 0 decides and the plan is broadcast. The plan is saved in checkpoints: a
resumed run continues the same plan and does not re-plan. Lightning's ``max_time`` stays a
safety net above the budget (``trainer.max_time_minutes``). A run that should be repeated
exactly pins the plan it printed (``trainer.budget_minutes=null trainer.max_steps=N``: the same
length, with the schedule at an even pace where a budget run re-planned).

Times come from :func:`now` (``time.monotonic``), which tests replace by a fake clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import pytorch_lightning as pl
import torch

__all__ = ["TimeBudget", "Plan", "plan_batches", "validates_at", "now", "say"]


def now() -> float:
    """The budget's clock, in seconds (monotonic)."""
    return time.monotonic()


def say(trainer: pl.Trainer, text: str) -> None:
    """A console line from rank 0 that does not break the progress bar."""
    if trainer.is_global_zero:
        bar = trainer.progress_bar_callback
        (bar.print if bar is not None else print)(text)


def _rate(trainer: pl.Trainer, step_s: float) -> float:
    """Training images per second of all processes at ``step_s`` seconds per batch."""
    batch = getattr(trainer.datamodule, "batch_size", None) or 1
    return batch * trainer.world_size / max(step_s, 1e-9)


@dataclass
class Plan:
    """How a budget run is laid out; saved in checkpoints."""

    batches: int  # planned training batches (the schedule's length)
    per_epoch: int  # training batches per epoch
    images_per_s: float  # training throughput the plan assumes
    step_s: float  # seconds per training batch
    val_s: float  # seconds per validation pass
    budget_minutes: float
    # The schedule's clock (see :meth:`progress`): the schedule's length in its own epochs (None:
    # the first plan's length), and the last re-plan, at run epoch ``anchor_epoch``, where the
    # schedule stood at ``anchor_progress``. A plan saved without them is the identity.
    schedule_epochs: Optional[float] = None
    anchor_epoch: float = 0.0
    anchor_progress: float = 0.0

    @property
    def epochs(self) -> float:
        return self.batches / self.per_epoch

    @property
    def schedule_length(self) -> float:
        """The schedule's length in its own epochs (the plan's until a re-plan fixes it)."""
        return self.epochs if self.schedule_epochs is None else self.schedule_epochs

    def progress(self, epoch: float) -> float:
        """Where the learning-rate schedule stands at run epoch ``epoch``: from the last re-plan
        on, the rest of the schedule is laid evenly over the rest of the plan, so that it ends
        with the plan and never steps back (a late re-plan that grows the plan slows the cosine
        down instead of raising its learning rate again)."""
        rest = max(self.epochs - self.anchor_epoch, 1e-9)
        pace = (self.schedule_length - self.anchor_progress) / rest
        return self.anchor_progress + (epoch - self.anchor_epoch) * pace

    def replan(self, batches: int, done: int) -> None:
        """``batches`` from now on (``done`` batches run): the schedule keeps the point it has
        reached and spreads what is left of it over the new rest of the plan."""
        self.schedule_epochs = self.schedule_length
        epoch = done / self.per_epoch
        self.anchor_progress, self.anchor_epoch = self.progress(epoch), epoch
        self.batches = batches


def plan_batches(
    *,
    remaining_s: float,
    done: int,
    per_epoch: int,
    step_s: float,
    val_s: float,
    val_every: Optional[int],
    max_batches: int,
    periodic_until: float = 1.0,
) -> int:
    """The most training batches ``N`` (``done`` < ``N`` ≤ ``max_batches``) whose remaining
    batches, ``step_s`` each, and validations, ``val_s`` each, fit in ``remaining_s`` seconds;
    at least ``done + 1``: the run stops, validated, as soon as it can. A run of ``N`` batches
    validates at its end, and at the ends of every ``val_every``-th epoch that fall within the
    first ``periodic_until`` of it (:func:`validates_at`)."""

    def periodic(n: int) -> int:  # periodic validations after batch `done`, in a plan of n
        if not val_every:
            return 0
        every = val_every * per_epoch
        return max(_last_periodic(n, periodic_until) // every - done // every, 0)

    best = min(done + 1, max_batches)
    for total in range(done + 1, max_batches + 1):
        cost = (total - done) * step_s + (periodic(total) + 1) * val_s
        if cost > remaining_s:
            break
        best = total
    return best


def _last_periodic(batches: int, periodic_until: float) -> int:
    """The last batch after which a plan of ``batches`` may make a periodic validation: within
    its first ``periodic_until`` and before its end (which validates anyway)."""
    return min(batches - 1, math.floor(periodic_until * batches))


def validates_at(done: int, batches: int, periodic_until: float) -> bool:
    """Whether a periodic (epoch-end) validation after batch ``done`` runs in a plan of
    ``batches``: only within its first ``periodic_until``; a later one would come shortly before
    the validation at the plan's end, and its time goes to training instead."""
    return done <= _last_periodic(batches, periodic_until)


class TimeBudget(pl.Callback):
    """Plan a run's length so that it ends, validated, within ``minutes`` of ``started``.

    Args:
        minutes: the budget.
        started: :func:`now` at the start of the command (default: when the callback is made).
        warmup_batches: training batches run before timing starts (data workers starting,
            first-call allocations).
        measure_batches: batches timed for the first plan.
        val_samples: validation samples timed for the cost of a validation pass.
        margin: fraction of the budget kept free (teardown, noise in the estimates).
        recheck: fraction of the plan between two checks of the speed (the plan is re-made from
            the rate of the last stretch: a machine that slows down late is caught in time).
        periodic_until: the fraction of the plan within which the periodic validations
            (``trainer.check_val_every_n_epoch``) run; a later one is skipped, as the validation
            at the plan's end follows it shortly (a pass over the quickstart's 100 validation
            images costs 7-9 s of a 5-minute budget).
        tune_threads: on the CPU, warm up and time with half the torch threads, then time
            ``measure_batches`` more batches with all of them and keep the faster count. On a
            machine where another program holds a core, two threads that wait for each other
            train up to ten times slower than one (measured on 2 cores: 1.8 images/s with 2
            threads, 18.4 with 1; idle 36.9 and 22.6), so the second timing stops as soon as its
            batches have taken longer than the whole first timing. The thread count is restored
            when fit ends.
    """

    def __init__(
        self,
        minutes: float,
        *,
        started: Optional[float] = None,
        warmup_batches: int = 3,
        measure_batches: int = 10,
        val_samples: int = 2,
        margin: float = 0.03,
        recheck: float = 0.1,
        periodic_until: float = 0.75,
        tune_threads: bool = True,
    ) -> None:
        self.minutes = float(minutes)
        self.started = now() if started is None else float(started)
        self.warmup_batches, self.measure_batches = warmup_batches, measure_batches
        self.val_samples, self.margin, self.recheck = val_samples, margin, recheck
        self.periodic_until = periodic_until
        self.tune_threads = tune_threads
        self._timing_from: Optional[int] = None  # the batch timing starts at (None: warm-up)
        self._threads: Optional[int] = None  # the thread count fit started with, while tuning
        self._trial: Optional[tuple[int, float]] = None  # (fewer threads, their s per batch)
        self._trial_t0: Optional[float] = None  # when the timing with all threads began
        self.plan: Optional[Plan] = None
        self.resumed = False
        self._val_every: Optional[int] = None
        self._max_batches = 1
        self._batches = 0  # batches seen before the first plan
        self._timed_from = 0
        self._t0: Optional[float] = None
        self._val_t0: Optional[float] = None
        self._window: Optional[tuple[float, int]] = None  # (time, batches done) at its start
        self._val_in_window = 0.0

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
    def _remaining_s(self) -> float:
        return self.minutes * 60 * (1 - self.margin) - (now() - self.started)

    def _apply(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        plan = self.plan
        assert plan is not None
        trainer.fit_loop.max_epochs = math.ceil(plan.epochs)
        # read by the module's learning-rate schedule
        module.schedule_epochs, module.schedule_progress = plan.schedule_length, plan.progress
        for config in trainer.lr_scheduler_configs:  # the next step's rate: the plan's already
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                step = scheduler.last_epoch
                for group, base, fn in zip(
                    scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas
                ):
                    group["lr"] = base * fn(step)

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

    def _done(self, trainer: pl.Trainer, per_epoch: int, in_epoch: int) -> int:
        return trainer.current_epoch * per_epoch + in_epoch

    def _plan(
        self, trainer: pl.Trainer, done: int, step_s: float, val_s: float, slack_s: float = 0.0
    ) -> int:
        per_epoch = int(trainer.num_training_batches)
        batches = plan_batches(
            remaining_s=self._remaining_s() + slack_s,
            done=done,
            per_epoch=per_epoch,
            step_s=step_s,
            val_s=val_s,
            val_every=self._val_every,
            max_batches=self._max_batches,
            periodic_until=self.periodic_until,
        )
        return int(trainer.strategy.broadcast(batches, src=0))  # rank 0 decides

    def _describe(self) -> str:
        plan = self.plan
        assert plan is not None
        return (
            f"about {plan.epochs:.1f} epochs ({plan.batches} batches) at "
            f"{plan.images_per_s:.1f} images/s"
        )

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_every = trainer.check_val_every_n_epoch
        per_epoch = int(trainer.num_training_batches)
        self._max_batches = max(int(trainer.max_epochs or 1), 1) * per_epoch
        if self.plan is not None:  # resumed: the same plan, not a new one
            self._apply(trainer, pl_module)
            plan = self.plan
            say(trainer, f"budget {self.minutes:g} min: continuing the plan of "
                               f"{plan.batches} batches ({plan.epochs:.1f} epochs)")  # fmt: skip
        else:
            pl_module.schedule_epochs = trainer.max_epochs  # until the first plan
            self._start_with_fewer_threads(trainer, pl_module)

    def _warmup(self, trainer: pl.Trainer) -> int:
        """Untimed batches: ``warmup_batches``, but at least one batch of the first epoch is
        timed."""
        return max(min(self.warmup_batches, int(trainer.num_training_batches) - 1), 0)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        start = self._warmup(trainer) if self._timing_from is None else self._timing_from
        if self.plan is None and self._t0 is None and self._batches >= start:
            self._t0, self._timed_from = now(), self._batches

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        per_epoch = int(trainer.num_training_batches)
        in_epoch = int(args[-1]) + 1 if args else per_epoch  # batches of this epoch done
        done = self._done(trainer, per_epoch, in_epoch)
        if self.plan is None:
            self._batches += 1
            timed = self._batches - self._timed_from
            if self._trial is not None and self._trial_lost():
                step_s = self._keep_faster_threads(trainer, self._all_threads_s(), stopped=True)
            else:
                if self._t0 is None or (timed < self.measure_batches and in_epoch < per_epoch):
                    return  # measure on, up to the end of the first epoch
                step_s = (now() - self._t0) / timed
                if self._try_all_threads(step_s):
                    return
                step_s = self._keep_faster_threads(trainer, step_s)
            val_s = self._val_pass_s(trainer, pl_module)
            batches = self._plan(trainer, done, step_s, val_s)
            rate = _rate(trainer, step_s)
            self.plan = Plan(batches, per_epoch, rate, step_s, val_s, self.minutes)
            self._apply(trainer, pl_module)
            spent = (now() - self.started) / 60
            say(
                trainer,
                f"budget {self.minutes:g} min: {self._describe()} ({spent:.1f} min spent on "
                f"start-up, data and the first batches; a validation pass about {val_s:.0f} s)",
            )
            self._window, self._val_in_window = (now(), done), 0.0
        elif not self.resumed and done < self.plan.batches:
            self._recheck(trainer, pl_module, done)
        if done >= self.plan.batches:
            # the end of the plan: Lightning validates when asked to stop, then ends the epoch
            trainer.check_val_every_n_epoch = 1
            trainer.should_stop = True
        elif in_epoch == per_epoch and self._val_every:
            # an epoch's end, where Lightning validates every `_val_every`-th epoch: not late in
            # the plan (a period that does not divide this epoch's number skips it)
            late = not validates_at(done, self.plan.batches, self.periodic_until)
            trainer.check_val_every_n_epoch = trainer.current_epoch + 2 if late else self._val_every

    def _start_with_fewer_threads(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """On the CPU, when the first epoch has room for both timings: warm up and time the first
        stretch with half the threads (one thread is never the disaster that two are on a busy
        machine, so the run starts safe)."""
        threads = torch.get_num_threads()
        room = self._warmup(trainer) + 2 * self.measure_batches + 1
        if not self.tune_threads or threads < 2 or module.device.type != "cpu":
            return
        if int(trainer.num_training_batches) < room:
            return
        self._threads = threads
        torch.set_num_threads(threads // 2)

    def _try_all_threads(self, step_s: float) -> bool:
        """After the first timing (half the threads): go on timing with all of them, one untimed
        batch first."""
        if self._threads is None or self._trial is not None:
            return False
        self._trial = (torch.get_num_threads(), step_s)
        torch.set_num_threads(self._threads)
        self._t0, self._timing_from = None, self._batches + 1
        self._trial_t0 = now()
        return True

    def _all_threads_s(self) -> float:
        """Seconds per batch with all the threads so far, their untimed batch included."""
        batches = self._batches - int(self._timing_from or 0) + 1
        return (now() - float(self._trial_t0 or 0.0)) / max(batches, 1)

    def _trial_lost(self) -> bool:
        """Whether all the threads, being timed, have already taken longer than the whole timing
        with fewer (their untimed batch included): they cannot be faster."""
        assert self._trial is not None and self._trial_t0 is not None
        return now() - self._trial_t0 > (1 + self.measure_batches) * self._trial[1]

    def _keep_faster_threads(
        self, trainer: pl.Trainer, all_s: float, stopped: bool = False
    ) -> float:
        """The seconds per batch of the faster thread count, which stays set (``all_s``: all the
        threads' seconds per batch; ``stopped``: their timing was cut short as lost)."""
        if self._trial is None or self._threads is None:  # no thread trial
            return all_s
        (fewer, fewer_s), threads = self._trial, self._threads
        chosen, chosen_s = (fewer, fewer_s) if fewer_s < all_s else (threads, all_s)
        torch.set_num_threads(chosen)
        note = " (timing stopped)" if stopped else ""
        say(trainer, f"budget {self.minutes:g} min: {_rate(trainer, all_s):.1f} images/s "
                     f"with {threads} torch threads{note}, {_rate(trainer, fewer_s):.1f} with "
                     f"{fewer}: training with {chosen}")  # fmt: skip
        return chosen_s

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._threads is not None:  # the thread count the run started with
            torch.set_num_threads(self._threads)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_t0 = now()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_t0 is not None and not trainer.sanity_checking:
            seconds = now() - self._val_t0
            self._val_in_window += seconds
            if self.plan is not None:
                self.plan.val_s = seconds
        self._val_t0 = None

    def _recheck(self, trainer: pl.Trainer, pl_module: pl.LightningModule, done: int) -> None:
        """Every ``recheck`` of the plan: the plan again, from the rate of the last stretch
        (validations taken out). It may grow or shrink (the schedule keeps its point and is
        spread over the new rest: :meth:`Plan.replan`), except that past the plan's middle it
        shrinks only when the plan would overrun the whole budget, margin included."""
        plan = self.plan
        if plan is None or self._window is None:
            return
        t0, done0 = self._window
        if done - done0 < max(round(self.recheck * plan.batches), 1):
            return
        step_s = max(now() - t0 - self._val_in_window, 1e-9) / (done - done0)
        self._window, self._val_in_window = (now(), done), 0.0
        fit = self._plan(trainer, done, step_s, plan.val_s)
        batches = fit
        if plan.batches / 2 <= done and fit < plan.batches:
            # late, the plan shrinks only when it would overrun the whole budget (its margin is
            # the band): a stretch slowed by noise does not cut a plan (docs/benchmarks.md)
            whole = self._plan(trainer, done, step_s, plan.val_s, self.margin * self.minutes * 60)
            batches = plan.batches if whole >= plan.batches else fit
        if batches != plan.batches:
            old = plan.epochs
            plan.replan(batches, done)
            plan.step_s = step_s
            plan.images_per_s = _rate(trainer, step_s)
            self._apply(trainer, pl_module)
            say(trainer, f"budget {self.minutes:g} min: re-planned from {old:.1f} to "
                               f"{self._describe()}")  # fmt: skip
