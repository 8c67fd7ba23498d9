"""Training system: recipes, losses, schedule, dekr-train / dekr-eval / dekr-predict."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TEST_DATA, tiny_overrides

from dekr.cli import eval_main, predict_main, train_main
from dekr.config import RecipeError, load_recipe, recipe_from_dict
from dekr.loss import heatmap_loss, offset_loss
from dekr.module import DekrModule, load_checkpoint, lr_factor
from dekr.training import build_datamodule

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_builds(path: Path) -> None:
    recipe = load_recipe(path, ["model.backbone=hrnet_w8_tiny"])
    module = DekrModule.from_recipe(recipe)
    k = module.spec.num_keypoints
    heatmaps, offsets = module(torch.zeros(1, 3, 64, 64))
    assert heatmaps.shape == (1, k + 1, 16, 16) and offsets.shape == (1, 2 * k, 16, 16)
    assert build_datamodule(recipe).batch_size == recipe.data.batch_size


def test_official_values_in_recipes() -> None:
    r = load_recipe(REPO / "recipes" / "coco_w32.yaml")
    assert (r.optim.lr, r.optim.weight_decay, list(r.optim.milestones)) == (1e-3, 0.0, [90, 120])
    assert r.data.batch_size * r.trainer.devices == r.optim.reference_batch == 40
    assert (r.loss.heatmap_factor, r.loss.offset_factor, r.trainer.max_epochs) == (1.0, 0.03, 140)
    c = load_recipe(REPO / "recipes" / "crowdpose_w48.yaml")
    assert (c.keypoints, c.data.input_size, c.trainer.max_epochs) == ("crowdpose", 640, 300)
    assert c.data.batch_size * c.trainer.devices == 40


@pytest.mark.parametrize(
    "override,match",
    [
        ("data.batchsize=3", "unknown key 'data.batchsize'; did you mean 'data.batch_size'"),
        ("trainer.max_epoch=3", "did you mean 'trainer.max_epochs'"),
        ("trainer.max_epochs=ten", "bad value for 'trainer.max_epochs'"),
        ("optim.lr", "not of the form key=value"),
    ],
)
def test_recipe_errors_name_the_key(override: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        load_recipe(REPO / "recipes" / "quickstart.yaml", [override])


def test_bad_target_and_missing_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = {"data": {"train_dataset": {"_target_": "dekr.nothing.Here"}}}
    with pytest.raises(RecipeError, match="'dekr.nothing.Here' cannot be imported"):
        recipe_from_dict(bad)
    wrong_args = {
        "data": {
            "train_dataset": {
                "_target_": "dekr.data.coco.COCOKeypoints",
                "annotation_fle": "x.json",
            }
        }
    }
    with pytest.raises(RecipeError, match="annotation_fle"):
        recipe_from_dict(wrong_args)


def test_heatmap_loss_is_masked_mse() -> None:
    pred = torch.tensor([[[[1.0, 2.0]]]])
    target = torch.tensor([[[[0.0, 0.0]]]])
    weights = torch.tensor([[[[0.1, 0.0]]]])
    assert heatmap_loss(pred, target, weights).item() == pytest.approx(0.1 * 1.0 / 2)


def test_offset_loss_normalised_by_positive_weights() -> None:
    pred = torch.tensor([[[[1.0, 0.05, 7.0]]]])
    target = torch.zeros_like(pred)
    weights = torch.tensor([[[[0.5, 1.0, 0.0]]]])
    beta = 1.0 / 9
    expected = (0.5 * (1.0 - beta / 2) + 1.0 * 0.5 * 0.05**2 / beta) / 2
    assert offset_loss(pred, target, weights, beta).item() == pytest.approx(expected)
    assert offset_loss(pred, target, torch.zeros_like(pred)).item() == 0.0


def test_lr_schedules() -> None:
    kw = dict(max_epochs=140, milestones=[90, 120], gamma=0.1, warmup_epochs=0.0)
    assert [lr_factor(e, schedule="multistep", **kw) for e in (0, 89.9, 90, 130)] == pytest.approx(
        [1, 1, 0.1, 0.01]
    )
    assert lr_factor(70, schedule="cosine", **kw) == pytest.approx(0.5)
    warm = dict(kw, warmup_epochs=2.0)
    assert lr_factor(1.0, schedule="multistep", **warm) == pytest.approx(0.5, abs=1e-3)
    linear = [lr_factor(e, schedule="linear", **warm) for e in (2.0, 71.0, 140.0, 150.0)]
    assert linear == pytest.approx([1.0, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="optim.schedule 'step' unknown"):
        lr_factor(0, schedule="step", **kw)


@pytest.mark.integration
def test_tiny_training_run(tiny_run: dict, capsys: pytest.CaptureFixture) -> None:
    out = tiny_run["out"]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "recipe.yaml").is_file() and (out / "keypoints.json").is_file()
    ap = tiny_run["result"]["metrics"]["AP"]
    # the AP train() returns is the one the last validation logged
    rows = list(csv.DictReader((out / "logs" / "csv" / "metrics.csv").open()))
    logged = [float(r["val/AP"]) for r in rows if r.get("val/AP")]
    assert logged and logged[-1] == pytest.approx(ap, abs=1e-6)
    module = load_checkpoint(out / "checkpoints" / "last.ckpt")  # no YAML needed
    assert module.spec.num_keypoints == 17 and not module.training
    # Adam ran its fused kernel on the CPU (PyTorch's default there is a per-tensor loop)
    groups = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"]
    assert [g["fused"] for g in groups[0]["param_groups"]] == [True, True]


@pytest.mark.integration
def test_cli_eval_and_predict(tiny_run: dict, tmp_path: Path, capsys) -> None:
    ckpt = tiny_run["out"] / "checkpoints" / "last.ckpt"
    assert eval_main([str(ckpt), "decode.flip=false", "--results", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("AP ")
    images = tiny_run["root"] / "images" / "val"
    out = tmp_path / "pred"
    assert predict_main([str(ckpt), str(images), "--out", str(out)]) == 0
    assert isinstance(json.loads((out / "predictions.json").read_text()), list)
    summary = json.loads((out / "images.json").read_text())["images"]
    assert [im["id"] for im in summary] == list(range(1, len(list(images.iterdir())) + 1))
    assert sorted(p.name for p in out.glob("*.png")) == sorted(im["overlay"] for im in summary)


@pytest.mark.slow  # a second training run
@pytest.mark.integration
def test_resume_auto_continues(tiny_run: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"  # a copy: the shared run stays as other tests expect it
    shutil.copytree(tiny_run["out"], out)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    argv = [
        str(REPO / "recipes" / "quickstart.yaml"),
        *tiny_overrides(tiny_run["root"], out, **{"trainer.max_epochs": 2}),
        "resume=auto",
    ]
    assert train_main(argv) == 0
    again = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert again["global_step"] == 2 * ckpt["global_step"]
    # last.ckpt is written at the end of every epoch (before Lightning counts it "completed")
    assert again["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    quick = str(REPO / "recipes" / "quickstart.yaml")
    assert train_main([quick, "data.batchsize=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'data.batch_size'" in err[0]
    assert eval_main([str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert train_main([quick, "--print-config", "seed=5"]) == 0
    assert "seed: 5" in capsys.readouterr().out


def test_predict_bad_inputs(tiny_run: dict, tmp_path: Path, capsys) -> None:
    ckpt = str(tiny_run["out"] / "checkpoints" / "last.ckpt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_main([ckpt, str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no images or videos in folder" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert predict_main([ckpt, str(broken), "--out", str(tmp_path / "o2")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "none of the 1 inputs could be read" in last and "cannot read image" in last
    assert not (tmp_path / "o2" / "predictions.json").exists()


@pytest.mark.slow  # tests/test_bad_inputs.py keeps resume_other_k and eval_keypoints
def test_checkpoint_of_other_k_is_clear(tiny_run: dict) -> None:
    module = load_checkpoint(tiny_run["out"] / "checkpoints" / "last.ckpt")
    state = {k: v for k, v in module.model.state_dict().items()}
    from dekr.models.dekr import build_model
    from dekr.models.weights import load_official_dekr

    with pytest.raises(ValueError, match="K=17 keypoints, the model K=3"):
        load_official_dekr(build_model("hrnet_w8_tiny", num_keypoints=3), state)
    assert np.isfinite(sum(float(v.float().sum()) for v in state.values()))


def _real_data_overrides(ann: Path, images: Path, out: Path) -> list[str]:
    return [
        "model.backbone=hrnet_w8_tiny",
        f"data.train_annotations={ann}",
        f"data.train_images={images}",
        f"data.val_annotations={ann}",
        f"data.val_images={images}",
        "data.input_size=128",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "trainer.devices=1",
        "trainer.strategy=auto",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.benchmark=false",
        f"output_dir={out}",
    ]


@pytest.mark.slow  # a CrowdPose training run
@pytest.mark.integration
def test_crowdpose_recipe_runs_on_the_sample(tmp_path: Path) -> None:
    from dekr.training import train

    sample = TEST_DATA / "crowdpose_sample"
    ann = sample / "annotations" / "crowdpose_sample.json"
    recipe = load_recipe(
        REPO / "recipes" / "crowdpose_w32.yaml",
        _real_data_overrides(ann, sample / "images", tmp_path),
    )
    metrics = train(recipe)["metrics"]
    assert {"AP", "APE", "APH"} <= set(metrics)  # CrowdPose easy / hard split from crowdIndex
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt").spec.num_keypoints == 14


@pytest.mark.slow
def test_coco_recipe_runs_on_the_real_sample(tmp_path: Path, capsys) -> None:
    from dekr.training import train

    sample = TEST_DATA / "coco_sample"
    ann = sample / "annotations" / "person_keypoints_val_sample.json"
    recipe = load_recipe(
        REPO / "recipes" / "coco_w32.yaml", _real_data_overrides(ann, sample / "images", tmp_path)
    )
    result = train(recipe)
    # the run's final AP is what dekr-eval reports for its last checkpoint
    assert eval_main([str(result["last"]), "data.num_workers=0"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("AP ")
    assert float(printed.split()[1]) == pytest.approx(result["metrics"]["AP"], abs=1e-3)


@pytest.mark.slow  # prediction twice over the val set
@pytest.mark.integration
def test_predict_batches_equal_single_images(tiny_run: dict, tmp_path: Path) -> None:
    state = torch.load(tiny_run["out"] / "checkpoints" / "last.ckpt", weights_only=True)
    state["hyper_parameters"]["recipe"]["decode"]["center_threshold"] = -1e9  # keep candidates
    ckpt = str(tmp_path / "every_candidate.ckpt")
    torch.save(state, ckpt)
    images = str(tiny_run["root"] / "images" / "val")
    args = ["--no-flip", "--score-threshold", "0"]
    docs = []
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        assert (
            predict_main([ckpt, images, "--out", str(out), "--batch-size", str(batch), *args]) == 0
        )
        docs.append(
            (
                json.loads((out / "images.json").read_text())["images"],
                json.loads((out / "predictions.json").read_text()),
            )
        )
    assert docs[0][0] == docs[1][0]  # ids, files, sizes, pose counts and overlays
    for a, b in zip(docs[0][1], docs[1][1]):
        assert a["image_id"] == b["image_id"]
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=0.02)
    assert len(docs[0][1]) == len(docs[1][1]) > 0


@pytest.mark.slow
@pytest.mark.integration
def test_scale_switches_train(synthetic_root: Path, tmp_path: Path, capsys) -> None:
    """Targets on the device, bf16 autocast, accumulation, clipping, EMA and lr scaling together."""
    from dekr.training import train

    extra = {
        "targets.on_device": True,
        "trainer.precision": "bf16-mixed",
        "trainer.accumulate_grad_batches": 2,
        "trainer.gradient_clip_val": 1.0,
        "optim.ema_decay": 0.9,
        "optim.scale_lr": True,
        "model.channels_last": True,
    }
    recipe = load_recipe(
        REPO / "recipes" / "quickstart.yaml", tiny_overrides(synthetic_root, tmp_path, **extra)
    )
    result = train(recipe)
    assert math.isfinite(result["metrics"]["AP"])
    assert "precision: training in bf16-mixed" in capsys.readouterr().out
    module = load_checkpoint(result["last"])
    lr = module.recipe.optim.lr
    assert module.effective_lr() == lr  # no trainer attached: nothing to scale by
    ckpt = torch.load(result["last"], weights_only=True)
    # the optimiser was built with the global batch: batch x world x accumulate / reference
    scaled = lr * 4 * 1 * 2 / 40
    base_lrs = ckpt["lr_schedulers"][0]["base_lrs"]
    factor = module.recipe.optim.offset_lr_factor
    assert base_lrs == pytest.approx([scaled, scaled * factor])
    assert any("EMAWeightAveraging" in key for key in ckpt.get("callbacks", {}))
    # one optimizer step per 2 batches (and one for a last odd batch)
    dm = build_datamodule(recipe)
    dm.setup("fit")
    batches = len(dm.train_dataloader())
    assert batches >= 2 and ckpt["global_step"] == math.ceil(batches / 2)


def test_hard_stop_that_cuts_the_schedule_is_said(synthetic_root: Path, tmp_path: Path, capsys):
    """Lightning's hard stop ending training before its schedule: the closing lines say so."""
    from types import SimpleNamespace

    from dekr.training import _hard_stop_cut, train

    assert _hard_stop_cut(SimpleNamespace(callbacks=[])) is None  # no trainer.max_time_minutes
    extra = {"trainer.max_time_minutes": 1e-4, "trainer.max_epochs": 3}
    train(load_recipe(REPO / "recipes" / "quickstart.yaml",
                      tiny_overrides(synthetic_root, tmp_path / "run", **extra)))  # fmt: skip
    out = capsys.readouterr().out
    assert "stopped by trainer.max_time_minutes (0.0001) at step 1, with 3 epochs" in out, out
    assert out.rstrip().splitlines()[-1].startswith("AP ")
