"""trainer.precision=auto: bf16 autocast where it trains faster (dekr/precision.py), on fake
clocks so that the choice does not depend on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from conftest import REPO, tiny_overrides

import dekr.precision
import dekr.training
from dekr.config import load_recipe
from dekr.models.dekr import build_model
from dekr.precision import choose_precision
from dekr.training import train

_in_bf16 = [False]  # set while a timed pass runs in bf16 autocast (fixture timed_passes)


def _clock(fp32_s: float, bf16_s: float) -> Callable[[], float]:
    """A clock read at the start and at the end of each timed pass, on which a pass takes
    ``fp32_s`` seconds, or ``bf16_s`` in bf16 autocast."""
    t, reads = [0.0], [0]

    def clock() -> float:
        reads[0] += 1
        if reads[0] % 2 == 0:  # a pass's end
            t[0] += bf16_s if _in_bf16[0] else fp32_s
        return t[0]

    return clock


@pytest.fixture
def timed_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record which precision a timed pass ran in (the clock reads it at the pass's end)."""
    original = dekr.precision._forward_backward

    def forward_backward(model, images, device, bf16):  # type: ignore[no-untyped-def]
        _in_bf16[0] = bf16
        return original(model, images, device, bf16)

    monkeypatch.setattr(dekr.precision, "_forward_backward", forward_backward)
    monkeypatch.setattr(dekr.precision, "bf16_supported", lambda device: True)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("hrnet_w8_tiny", num_keypoints=3)


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "expected"),
    [(1.0, 0.7, "bf16-mixed"), (1.0, 0.95, "32-true"), (1.0, 1.5, "32-true")],
)
def test_auto_picks_bf16_only_where_it_is_clearly_faster(
    timed_passes: None, fp32_s: float, bf16_s: float, expected: str
) -> None:
    choice = choose_precision(_model(), batch_size=2, input_size=64, device=torch.device("cpu"),
                              steps=2, clock=_clock(fp32_s, bf16_s))  # fmt: skip
    assert choice.precision == expected, choice
    assert choice.fp32_s == pytest.approx(fp32_s) and choice.bf16_s == pytest.approx(bf16_s)
    assert f"{fp32_s / bf16_s:.2f}x" in choice.reason


def test_a_pass_slowed_by_other_work_does_not_decide(timed_passes: None) -> None:
    """bf16 passes of 0.7 s, every other one slowed to 1.6 s by another program, against steady
    1.0 s fp32 passes: bf16 is 1.43x faster and chosen (the median of four read it at 0.63x)."""
    passes = {False: iter([1.0] * 5), True: iter([0.7, 1.6] * 3)}
    t, reads = [0.0], [0]

    def clock() -> float:
        reads[0] += 1
        if reads[0] % 2 == 0:  # a pass's end
            t[0] += next(passes[_in_bf16[0]])
        return t[0]

    choice = choose_precision(_model(), batch_size=2, input_size=64, device=torch.device("cpu"),
                              steps=4, clock=clock)  # fmt: skip
    assert choice.precision == "bf16-mixed", choice
    assert choice.bf16_s == pytest.approx(0.7) and choice.fp32_s == pytest.approx(1.0)


def test_the_trial_leaves_the_model_and_the_random_streams_alone(timed_passes: None) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    choose_precision(model, batch_size=2, input_size=64, device=torch.device("cpu"), steps=1,
                     clock=_clock(1.0, 0.5))  # fmt: skip
    after_trial = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_trial)  # the global generator was not drawn from
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BatchNorm statistics


def test_the_trial_runs_on_the_threads_asked_for_and_gives_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The training times on one thread (a busy core slows a two-thread trial tenfold); the
    count set before is back afterwards."""
    seen: list[int] = []

    def passes(*args: object) -> tuple[float, float]:
        seen.append(torch.get_num_threads())
        return 1.0, 0.5

    monkeypatch.setattr(dekr.precision, "_pass_seconds", passes)
    monkeypatch.setattr(dekr.precision, "bf16_supported", lambda device: True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kw = dict(batch_size=2, input_size=64, device=torch.device("cpu"))
        choose_precision(_model(), threads=1, **kw)
        assert torch.get_num_threads() == 2
        choose_precision(_model(), **kw)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_does_not_time_without_native_bf16_or_with_several_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: object) -> float:
        raise AssertionError("timed")

    monkeypatch.setattr(dekr.precision, "_pass_seconds", never)
    kw = dict(batch_size=2, input_size=64, device=torch.device("cpu"))
    monkeypatch.setattr(dekr.precision, "bf16_supported", lambda device: False)
    choice = choose_precision(_model(), **kw)
    assert choice.precision == "32-true" and "no native bf16" in choice.reason
    monkeypatch.setattr(dekr.precision, "bf16_supported", lambda device: True)
    choice = choose_precision(_model(), processes=2, **kw)
    assert choice.precision == "32-true" and "2 processes" in choice.reason


@pytest.mark.slow  # two short training runs
def test_a_run_with_auto_trains_in_the_chosen_precision_and_records_it(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The chosen precision (here bf16, from a stand-in for the trial) is what recipe.yaml and
    the checkpoint's recipe say (so a resume keeps it without timing again) and what the
    console names; the caller's recipe keeps ``auto``."""
    calls: list[str] = []

    def choose(model, **kw):  # type: ignore[no-untyped-def]
        calls.append("timed")
        return dekr.precision.PrecisionChoice("bf16-mixed", "bf16 autocast 1.30x (fake)")

    monkeypatch.setattr(dekr.training, "choose_precision", choose)
    out = tmp_path / "run"
    auto = tiny_overrides(synthetic_root, out, **{"trainer.precision": "auto"})
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", auto)
    result = train(recipe)
    assert recipe.trainer.precision == "auto"
    assert calls == ["timed"]
    printed = capsys.readouterr().out
    assert "precision auto: training in bf16-mixed (bf16 autocast 1.30x (fake))" in printed
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["trainer"]["precision"] == "bf16-mixed"
    ckpt = torch.load(result["last"], weights_only=False, map_location="cpu")
    assert ckpt["hyper_parameters"]["recipe"]["trainer"]["precision"] == "bf16-mixed"
    # a resume of that run keeps bf16 without timing again
    resumed = load_recipe(REPO / "recipes" / "quickstart.yaml",
                          tiny_overrides(synthetic_root, out, **{"trainer.precision": "auto",
                                                                 "trainer.max_epochs": 2,
                                                                 "resume": "auto"}))  # fmt: skip
    train(resumed)
    assert calls == ["timed"]
    assert "training in bf16-mixed (the precision of the resumed run)" in capsys.readouterr().out


def test_the_commands_hide_lightnings_precision_line_and_say_their_own() -> None:
    import logging

    from dekr.cli import _DropNoise

    def shown(message: str) -> bool:
        return _DropNoise().filter(logging.LogRecord("x", 20, "", 0, message, None, None))

    assert not shown("Using bfloat16 Automatic Mixed Precision (AMP)")
    assert shown("precision auto: training in bf16-mixed (bf16 autocast 1.30x ...)")
