"""The quickstart learns: its recipe as committed (model, synthetic data of the same scenes,
augmentation, loss, optimiser), three pinned epochs instead of the time budget so that the result
does not depend on the machine's speed, against the same network untrained. One epoch is not
enough to tell them apart reliably (three epochs: AP 0.292 against 0.000, measured)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO

from dekr.config import load_recipe
from dekr.convert import save_checkpoint
from dekr.module import DekrModule
from dekr.training import evaluate, train

QUICK = REPO / "recipes" / "quickstart.yaml"


@pytest.mark.slow  # about 1.5 minutes: 1,100 synthetic images, three epochs, two validations
@pytest.mark.integration
def test_one_epoch_of_the_quickstart_beats_the_untrained_network(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path_factory.mktemp("quickstart_data")
    out = tmp_path_factory.mktemp("quickstart_run")
    pin = [
        f"data.synthetic.root={data}",
        f"output_dir={out}",
        "trainer.budget_minutes=null",  # the plan a budget run prints, pinned: no clock involved
        "trainer.max_epochs=2",
        "trainer.max_steps=300",  # 1.5 epochs (203 batches each); validated at the end
        "trainer.max_time_minutes=null",
        "trainer.check_val_every_n_epoch=2",
    ]
    recipe = load_recipe(QUICK, pin)
    torch.manual_seed(0)
    untrained = save_checkpoint(DekrModule.from_recipe(recipe), out.parent / "untrained.ckpt")
    result = train(recipe)
    trained_ap = result["metrics"]["AP"]
    blank_ap = evaluate(untrained, [f"data.synthetic.root={data}"])["AP"]
    capsys.readouterr()
    assert math.isfinite(trained_ap) and math.isfinite(blank_ap)
    # measured on a 2-core machine (AMD EPYC): AP 0.292 after three epochs (80-100 s in all),
    # 0.000 untrained; the recipe before hrnet_w24_tiny / offset_scale / flips-only augmentation
    # gave 0.006 there and 0.040 on another machine, too close to chance for a test
    assert trained_ap >= 0.1 and trained_ap >= blank_ap + 0.1, (trained_ap, blank_ap)
