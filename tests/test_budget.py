"""The time budget (trainer.budget_minutes): the plan's arithmetic, and whole runs on a fake
clock, where every training batch costs one second and every validation batch half a second."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, tiny_overrides

import dekr.budget
from dekr.budget import Plan, TimeBudget, plan_batches, validates_at
from dekr.config import load_recipe
from dekr.errors import RecipeError
from dekr.module import lr_factor
from dekr.preflight import check_values
from dekr.training import train


# ------------------------------------------------------------------ the plan
def test_plan_fits_training_and_validations() -> None:
    # 10 batches per epoch of 1 s, 4 s validations every 2 epochs and once at the end;
    # 5 batches done, 100 s left
    kw = dict(done=5, per_epoch=10, step_s=1.0, val_s=4.0, val_every=2, max_batches=500)
    # 80 batches: 75 s + validations after epochs 2, 4, 6 and 8 (the end): 91 s;
    # 81 batches: 76 s + validations after 2, 4, 6, 8 and at 81: 96 s; 85: 100 s; 86: 101 s
    assert plan_batches(remaining_s=100.0, **kw) == 85
    assert plan_batches(remaining_s=95.9, **kw) == 80
    assert plan_batches(remaining_s=91.0, **kw) == 80
    assert plan_batches(remaining_s=90.9, **kw) == 79  # 74 s + 2, 4, 6 and at 79: 90 s
    assert plan_batches(remaining_s=1e6, **kw) == 500  # trainer.max_epochs x batches per epoch
    assert plan_batches(remaining_s=-5.0, **kw) == 6  # over the budget: stop at the next batch


def test_late_periodic_validations_leave_their_time_to_training() -> None:
    # the setting above, but periodic validations only within the first 3/4 of the plan:
    # 89 batches: 84 s + validations after 2, 4 and 6 (8 is past 66.75) and at 89: 100 s;
    # 90: 85 s + 2, 4, 6 (8 > 67.5) and at 90: 101 s
    kw = dict(done=5, per_epoch=10, step_s=1.0, val_s=4.0, val_every=2, max_batches=500)
    assert plan_batches(remaining_s=100.0, periodic_until=0.75, **kw) == 89
    assert plan_batches(remaining_s=91.0, periodic_until=0.75, **kw) == 80  # 2, 4, 6 and at 80
    assert plan_batches(remaining_s=90.9, periodic_until=0.75, **kw) == 79  # 2, 4 and at 79


@pytest.mark.parametrize("until", [1.0, 0.75, 0.5])
def test_the_plan_counts_the_validations_the_run_makes(until: float) -> None:
    """plan_batches prices exactly the validations that validates_at lets the run make."""
    for done, per_epoch, every in [(0, 7, 1), (5, 10, 2), (31, 4, 3)]:
        for n in range(done + 2, done + 60):
            ends = range(every * per_epoch, n, every * per_epoch)  # epoch ends before the end
            made = sum(e > done and validates_at(e, n, until) for e in ends) + 1  # + the end
            cost = (n - done) * 1.0 + made * 2.5
            kw = dict(done=done, per_epoch=per_epoch, step_s=1.0, val_s=2.5, val_every=every,
                      max_batches=10_000, periodic_until=until)  # fmt: skip
            assert plan_batches(remaining_s=cost, **kw) == n, (done, per_epoch, every, n)
            assert plan_batches(remaining_s=cost - 1e-6, **kw) < n


def test_plan_without_periodic_validation() -> None:
    kw = dict(done=20, per_epoch=10, step_s=1.0, val_s=5.0, val_every=None, max_batches=200)
    assert plan_batches(remaining_s=35.0, **kw) == 50  # 30 more batches and the final validation


def test_milestones_as_fractions_follow_the_plan() -> None:
    kw = dict(schedule="multistep", milestones=[0.5, 0.75], gamma=0.1, warmup_epochs=0.0)
    assert lr_factor(4.9, max_epochs=10, **kw) == 1.0
    assert lr_factor(5.0, max_epochs=10, **kw) == pytest.approx(0.1)
    assert lr_factor(7.5, max_epochs=10, **kw) == pytest.approx(0.01)
    assert lr_factor(3.0, max_epochs=6, **kw) == pytest.approx(0.1)  # a shorter plan
    epochs = dict(kw, milestones=[5, 8])
    assert lr_factor(5.0, max_epochs=100, **epochs) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.schedule=multistep", "optim.milestones=[90,120]"], "are epochs, but with"),
        (["trainer.max_time_minutes=4"], "safety net"),
        (["trainer.max_epochs=-1"], "most epochs the plan"),
        (["trainer.budget_minutes=0"], "trainer.budget_minutes=0"),
        (["optim.milestones=[0.5,3]"], "optim.milestones"),
    ],
)
def test_budget_recipe_errors(overrides: list[str], match: str) -> None:
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml",
                         ["trainer.budget_minutes=5", *overrides])  # fmt: skip
    with pytest.raises(RecipeError, match=match):
        check_values(recipe)


def test_plan_is_saved_and_a_resume_keeps_it() -> None:
    budget = TimeBudget(5, started=0.0)
    budget.plan = Plan(batches=700, per_epoch=100, images_per_s=40.0, step_s=0.2, val_s=3.0,
                       budget_minutes=5)  # fmt: skip
    resumed = TimeBudget(5, started=100.0)
    resumed.load_state_dict(budget.state_dict())
    assert resumed.plan == budget.plan and resumed.resumed


def test_a_replan_keeps_the_schedule_point_and_ends_it_with_the_plan() -> None:
    plan = Plan(batches=100, per_epoch=10, images_per_s=40.0, step_s=0.2, val_s=3.0,
                budget_minutes=5)  # fmt: skip
    assert plan.progress(4.0) == pytest.approx(4.0)  # a plan never re-planned: the run's epochs
    for batches, done in ((150, 40), (120, 90), (130, 110)):  # grow, shrink, grow late
        before = plan.progress(done / 10)
        plan.replan(batches, done)
        assert plan.batches == batches
        assert plan.progress(done / 10) == pytest.approx(before)  # no jump
        assert plan.progress(batches / 10) == pytest.approx(10.0)  # the schedule ends with it
        assert plan.progress((done + 1) / 10) > before  # and goes on forward
    budget = TimeBudget(5, started=0.0)
    budget.plan = plan
    resumed = TimeBudget(5, started=100.0)
    resumed.load_state_dict(budget.state_dict())
    assert resumed.plan == plan  # a resume continues the same pace


# ------------------------------------------------------------------ runs on a fake clock
class FakeClock(pl.Callback):
    """The budget's clock: 1 s per training batch, 0.5 s per validation batch, 0 otherwise.
    Time passes in the batch-start hooks, which run after the budget's own (callbacks given to
    train() come after the run's): to the budget, the time passes during the batch."""

    def __init__(self, step_s: Any = None) -> None:
        self.step_s = step_s or (lambda batch: 1.0)  # seconds of the n-th training batch
        self.t = 0.0
        self.lrs: list[float] = []
        self.validated_steps: list[int] = []

    def now(self) -> float:
        return self.t

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.t += self.step_s(len(self.lrs))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.t += 0.5

    def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.state.fn == "fit":
            self.validated_steps.append(trainer.global_step)


def _budget_run(root: Path, out: Path, minutes: Any, monkeypatch: pytest.MonkeyPatch,
                step_s: Any = None, **pin: Any) -> dict:  # fmt: skip
    clock = FakeClock(step_s)
    monkeypatch.setattr(dekr.budget, "now", clock.now)
    recipe = load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        tiny_overrides(root, out, **{
            "trainer.budget_minutes": minutes,
            "trainer.max_epochs": 30,
            **pin,
            "trainer.check_val_every_n_epoch": 3,
            "optim.warmup_epochs": 0.5,
        }),
    )  # fmt: skip
    # 4 val images, batch 2: 1 s per validation
    result = train(recipe, callbacks=[clock], started=0.0)
    ckpt = torch.load(result["last"], weights_only=True)
    return {"clock": clock, "result": result, "ckpt": ckpt, "lr": recipe.optim.lr,
            "schedule": recipe.optim.schedule}  # fmt: skip


def _first_plan(out: str, minutes: float) -> int:
    """The batches of a run's first plan, from its console lines."""
    return int(re.search(rf"budget {minutes:g} min: about [\d.]+ epochs \((\d+) batches\)", out)[1])


@pytest.mark.slow  # three fake-clock runs, 9 s
def test_half_the_time_still_completes_and_validates(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    runs = {}
    for minutes in (0.2, 0.1):  # 12 s and 6 s of fake time
        runs[minutes] = run = _budget_run(synthetic_root, tmp_path / str(minutes), minutes,
                                          monkeypatch)  # fmt: skip
        clock, ckpt = run["clock"], run["ckpt"]
        plan = ckpt["callbacks"]["TimeBudget"]["plan"]
        batches = len(clock.lrs)
        assert batches == plan["batches"] == ckpt["global_step"], (batches, plan)
        assert clock.t <= minutes * 60, (clock.t, plan)
        # the schedule (the recipe's: linear) was laid over the plan, not over
        # trainer.max_epochs (30): the last step's learning rate is the schedule's at the last
        # step of the planned length (at the pace of the last re-plan, if any)
        assert run["schedule"] in ("linear", "cosine")
        decay = dict(schedule=run["schedule"], milestones=[], gamma=0.1, warmup_epochs=0.5)
        last = (batches - 1) / plan["per_epoch"]
        at = Plan(**plan).progress(last)
        length = plan["schedule_epochs"] or batches / plan["per_epoch"]
        assert clock.lrs[-1] == pytest.approx(run["lr"] * lr_factor(at, max_epochs=length,
                                                                    **decay))  # fmt: skip
        assert clock.lrs[-1] < 0.5 * run["lr"] * lr_factor(last, max_epochs=30, **decay)
        # the run validated after its last batch, inside fit (best.ckpt sees the final weights)
        assert clock.validated_steps[-1] == batches
        assert math.isfinite(run["result"]["metrics"]["AP"])
    out = capsys.readouterr().out
    assert "budget 0.2 min: about" in out and "budget 0.1 min: about" in out
    assert "to pin this plan: trainer.budget_minutes=null trainer.max_epochs=" in out
    full, half = (len(runs[m]["clock"].lrs) for m in (0.2, 0.1))
    assert half < full  # a shorter run, each a finished schedule
    assert runs[0.1]["clock"].t > 0.6 * 6  # and the shorter budget was used, not wasted
    # the printed plan, pinned, is the same schedule
    pin = re.findall(r"budget 0.1 min: .* trainer.max_epochs=(\d+) trainer.max_steps=(\d+)", out)
    ((epochs, steps),) = pin
    pinned = _budget_run(synthetic_root, tmp_path / "pinned", None, monkeypatch,
                         **{"trainer.max_epochs": epochs, "trainer.max_steps": steps})  # fmt: skip
    assert pinned["clock"].lrs == pytest.approx(runs[0.1]["clock"].lrs, rel=1e-12)


@pytest.mark.slow  # a fake-clock run
def test_a_machine_that_slows_down_late_still_ends_in_time(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """From the 16th batch on each batch takes 3 s instead of 1 s (another program started):
    the plan shrinks within the epoch it happens in, the schedule still completes and the run
    stays within its 24 s budget; without the re-check it would run to the first plan's end."""
    run = _budget_run(synthetic_root, tmp_path / "slow", 0.4, monkeypatch,
                      step_s=lambda n: 1.0 if n < 15 else 3.0)  # fmt: skip
    clock, ckpt = run["clock"], run["ckpt"]
    plan = ckpt["callbacks"]["TimeBudget"]["plan"]
    out = capsys.readouterr().out
    first = _first_plan(out, 0.4)
    assert "re-planned" in out and plan["batches"] < first, out
    assert len(clock.lrs) == plan["batches"] == ckpt["global_step"]
    assert clock.t <= 0.4 * 60, (clock.t, plan)
    assert clock.validated_steps[-1] == plan["batches"]


@pytest.mark.slow  # two fake-clock runs
@pytest.mark.parametrize(("fast", "other"), [(1, 2), (2, 1)])
def test_the_faster_thread_count_is_kept_and_restored(
    fast: int, other: int, synthetic_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    """A batch takes 1 s with ``fast`` torch threads and 3 s with ``other``: the run warms up
    and times with 1 thread, then times 2, trains with ``fast`` (as on a busy machine, where 1
    thread beats 2), plans with its 1 s per batch, and gives the thread count back when fit ends.
    When 2 threads are the slower count, their timing stops as soon as their batches have taken
    longer than the whole 1-thread timing (3 s: 1 untimed + 2 timed batches): after 2 batches,
    not 3."""
    monkeypatch.setitem(TimeBudget.__init__.__kwdefaults__, "warmup_batches", 1)
    monkeypatch.setitem(TimeBudget.__init__.__kwdefaults__, "measure_batches", 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []

    def step_s(batch: int) -> float:
        seen.append(torch.get_num_threads())
        return 1.0 if seen[-1] == fast else 3.0

    try:
        run = _budget_run(synthetic_root, tmp_path / str(fast), 0.4, monkeypatch, step_s=step_s,
                          **{"data.batch_size": 1})  # fmt: skip
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    plan = run["ckpt"]["callbacks"]["TimeBudget"]["plan"]
    assert f"training with {fast}" in out, out
    assert seen[:3] == [1, 1, 1]  # warm-up + 2 timed with half the threads
    if fast == 1:  # 2 threads: stopped after 2 batches (6 s > 3 s)
        assert seen[3:5] == [2, 2] and "(timing stopped)" in out, out
        assert set(seen[5:]) == {1}
    else:  # 1 untimed + 2 timed with 2 threads
        assert seen[3:6] == [2, 2, 2] and "(timing stopped)" not in out, out
        assert set(seen[6:]) == {2}
    assert plan["step_s"] == pytest.approx(1.0, rel=0.2)
    assert after == 2


@pytest.mark.slow  # three fake-clock runs
def test_a_slow_stretch_within_the_margin_does_not_cut_the_plan_late(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the plan's middle (from batch 20 of about 30), four batches 15 % slower, then the old
    speed again (noise on a shared machine): the plan keeps the length of a run without the
    stretch, as a plan that shrinks late never grows back, and the run ends within its budget
    (36 s, 3 % margin: 1.08 s). The rule before (shrink whenever the budget less its margin is
    overrun) cut this plan from 29 to 28 batches. A lasting slowdown of 50 % from the same batch
    on is still caught: the plan shrinks."""
    speeds = {
        "steady": lambda n: 1.0,
        "stretch": lambda n: 1.15 if 20 <= n < 24 else 1.0,  # 0.6 s lost: within the margin
        "lasting": lambda n: 1.5 if n >= 20 else 1.0,
    }
    batches = {}
    for name, step_s in speeds.items():
        run = _budget_run(synthetic_root, tmp_path / name, 0.6, monkeypatch, step_s=step_s)
        plan = run["ckpt"]["callbacks"]["TimeBudget"]["plan"]
        assert run["clock"].t <= 0.6 * 60, (name, run["clock"].t, plan)
        assert len(run["clock"].lrs) == plan["batches"]
        batches[name] = plan["batches"]
    assert batches["steady"] > 24, batches  # the stretch lies inside the plan's second half
    assert batches["stretch"] == batches["steady"], batches
    assert batches["lasting"] < batches["steady"], batches


@pytest.mark.slow  # a fake-clock run
def test_a_machine_that_speeds_up_late_uses_its_budget(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Batches take 2 s up to batch 12, then 1 s (another program ended): past the plan's
    middle the plan grows to use the budget (36 s) instead of ending early, and the learning rate
    never rises again on the way (the schedule's rest is spread over the longer rest)."""
    run = _budget_run(synthetic_root, tmp_path / "faster", 0.6, monkeypatch,
                      step_s=lambda n: 2.0 if n < 12 else 1.0)  # fmt: skip
    clock, ckpt = run["clock"], run["ckpt"]
    plan = ckpt["callbacks"]["TimeBudget"]["plan"]
    out = capsys.readouterr().out
    first = _first_plan(out, 0.6)
    assert plan["batches"] > first and plan["anchor_epoch"] * plan["per_epoch"] > first / 2, out
    assert len(clock.lrs) == plan["batches"] == ckpt["global_step"]
    assert 0.6 * 60 * 0.9 < clock.t <= 0.6 * 60, (clock.t, plan)
    peak = clock.lrs.index(max(clock.lrs))
    assert all(a >= b for a, b in zip(clock.lrs[peak:], clock.lrs[peak + 1 :])), clock.lrs
    assert clock.lrs[-1] < 0.05 * run["lr"]  # the schedule finished
    assert clock.validated_steps[-1] == plan["batches"]


@pytest.mark.slow  # a fake-clock run
def test_a_periodic_validation_late_in_the_plan_is_skipped(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """2 batches per epoch, validations every 3 epochs (after batches 6, 12, 18, ...): in a plan
    of 19 to 23 batches the one after batch 18 would come a few batches before the validation at
    the plan's end, so it is skipped and its second goes to training; those after 6 and 12,
    within the plan's first three quarters, run."""
    run = _budget_run(synthetic_root, tmp_path / "late", 0.37, monkeypatch)
    clock, ckpt = run["clock"], run["ckpt"]
    batches = ckpt["callbacks"]["TimeBudget"]["plan"]["batches"]
    assert 18 < batches < 24, batches  # the setting this test is about
    assert clock.validated_steps == [6, 12, batches], clock.validated_steps
    assert clock.t <= 0.37 * 60
