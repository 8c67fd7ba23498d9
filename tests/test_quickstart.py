"""The quickstart learns: its recipe as committed (model, synthetic data of the same scenes,
augmentation, loss, optimiser, precision), 250 pinned batches (1.2 epochs) instead of the time
budget so that the result does not depend on the machine's speed, against the same network
untrained (measured: AP 0.463 against 0.000)."""

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


@pytest.mark.slow  # about 1.5 minutes: 2,100 synthetic images, 250 batches, two evaluations
@pytest.mark.integration
def test_250_batches_of_the_quickstart_beat_the_untrained_network(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path_factory.mktemp("quickstart_data")
    out = tmp_path_factory.mktemp("quickstart_run")
    pin = [
        f"data.synthetic.root={data}",
        f"output_dir={out}",
        "trainer.budget_minutes=null",  # the plan a budget run prints, pinned: no clock involved
        "trainer.max_epochs=2",
        "trainer.max_steps=250",  # 1.2 epochs (203 batches each); validated at the end
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
    # measured with the committed recipe (linear decay, targets scaled to the small people) on
    # a 2-core AMD EPYC (bf16 chosen): AP 0.463 after 250 batches, 0.000 untrained, 64 s for
    # the run. With the recipe before (cosine, official target sizes) 0.370 on a 2-core Intel
    # Xeon with AMX; before model.init=scratch and 2,000 training images, 375 batches gave 0.292.
    # The bar leaves room for seeds, machines and fp32.
    assert trained_ap >= 0.3 and trained_ap >= blank_ap + 0.3, (trained_ap, blank_ap)
