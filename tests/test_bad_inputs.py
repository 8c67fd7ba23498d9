# ruff: noqa: E501  (the table keeps one case per line or two)
"""Bad input, one table: every case ends with exit code 2, at most two lines on stderr (``error:``
and an optional ``hint:``) naming the offending key or file, nothing on stdout from dekr-train,
and an existing run folder left exactly as it was (docs/reliability.md, "Bad input").

The cases run in-process through each command's ``main(argv)`` and fail before any training;
the data, checkpoints and the guarded run folder are built once for the module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf
from test_reliability import QUICK, _coco_argv, _coco_doc, _write_coco

from dekr.cli import eval_main, export_main, predict_main, train_main
from dekr.config import load_recipe
from dekr.errors import first_line
from dekr.module import DekrModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAINS = {"train": train_main, "eval": eval_main, "predict": predict_main, "export": export_main}


def _two_images() -> dict[str, Any]:
    """A COCO document of two 64² images with two people each."""
    doc = _coco_doc(people=2)
    second = json.loads(json.dumps(doc["annotations"]))
    for i, ann in enumerate(second):
        ann.update(id=200 + i, image_id=2)
    doc["images"].append({"id": 2, "file_name": "b.jpg", "width": 64, "height": 64})
    doc["annotations"] += second
    return doc


def _ckpt(path: Path, recipe: dict[str, Any], resumable: bool = True) -> Path:
    """A dekr checkpoint of ``recipe``'s (random) model; ``resumable``: with (empty) training
    state, as Lightning writes it."""
    ckpt: dict[str, Any] = {"hyper_parameters": {"recipe": recipe}}
    ckpt["state_dict"] = DekrModule.from_recipe(recipe).state_dict()
    if resumable:
        ckpt.update(loops={}, optimizer_states=[], epoch=0, global_step=1)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad_inputs")
    ann, images = _write_coco(root / "data", _two_images())
    empty_doc = _coco_doc(people=0)
    empty_ann, empty_images = _write_coco(root / "nopeople", empty_doc)
    guard = root / "run"  # a finished run that no failed command may touch
    mine = OmegaConf.to_container(load_recipe(QUICK, _coco_argv(ann, images, guard)[1:]))
    k14 = OmegaConf.to_container(
        load_recipe(QUICK, [*_coco_argv(ann, images, guard)[1:], "keypoints=crowdpose"])
    )
    (guard / "checkpoints").mkdir(parents=True)
    (guard / "logs" / "csv").mkdir(parents=True)
    last = _ckpt(guard / "checkpoints" / "last.ckpt", mine)
    (guard / "recipe.yaml").write_text(OmegaConf.to_yaml(mine))
    (guard / "keypoints.json").write_text("{}")
    (guard / "logs" / "csv" / "metrics.csv").write_text("epoch,val/AP\n0,0.5\n")
    files = root / "files"
    files.mkdir()
    official = files / "official.pth"
    torch.save(torch.load(last, weights_only=True)["state_dict"], official)
    bare = {k.removeprefix("model."): v for k, v in torch.load(official, weights_only=True).items()}
    torch.save(bare, official)
    evil = files / "evil.ckpt"
    torch.save({"x": np.zeros(2)}, evil)  # a numpy object: refused by weights_only=True
    corrupt = files / "corrupt.ckpt"
    corrupt.write_bytes(last.read_bytes()[:2000])
    text = files / "notes.txt"
    text.write_text("not a checkpoint\n")
    image = files / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    onnx = files / "garbage.onnx"
    onnx.write_bytes(b"garbage")
    recipe_dir = files / "recipes"
    recipe_dir.mkdir()
    bad_yaml = files / "bad.yaml"
    bad_yaml.write_text("trainer:\n  max_epochs: 3\n  devices: [1, 2\n")
    listed = files / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    other = files / "other_ann.json"
    other.write_text(json.dumps({"images": [{"id": 7, "file_name": "y.png"}]}))
    return SimpleNamespace(
        root=root, ann=ann, images=images, empty_ann=empty_ann, empty_images=empty_images,
        guard=guard, last=last, k14=_ckpt(files / "k14.ckpt", k14),
        weights_only=_ckpt(files / "weights_only.ckpt", mine, resumable=False),
        official=official, evil=evil, corrupt=corrupt, text=text, image=image, onnx=onnx,
        recipe_dir=recipe_dir, bad_yaml=bad_yaml, listed=listed, other_ann=other,
    )  # fmt: skip


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(p.relative_to(folder)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "",
        )
        for p in sorted(folder.rglob("*"))
    }


def train(w: SimpleNamespace, *extra: str, overwrite: bool = True) -> list[str]:
    """dekr-train on the two-image COCO folder into the guarded run folder with ``--overwrite``
    (so that the checks after the output folder's run; the folder must still be left unchanged),
    or, without it, into a new folder that must not appear."""
    argv = _coco_argv(w.ann, w.images, w.guard if overwrite else w.root / "fresh")
    return [*argv, "data.batch_size=2", *extra, *(["--overwrite"] * overwrite)]


Case = tuple[str, str, Callable[[SimpleNamespace], list[str]], list[str]]
# (id, command, argv, texts the stderr must hold). Keys and file names are the offending ones.
CASES: list[Case] = [
    # --- issue 12: silent wrong results, lost work, tracebacks, misleading messages
    ("zero_steps_batch", "train", lambda w: train(w, "data.batch_size=8"),
     ["no optimizer step", "data.batch_size=8", "2 training image(s)", "1 process"]),
    ("zero_steps_ranks", "train",
     lambda w: train(w, "trainer.accelerator=cpu", "trainer.devices=3", "data.batch_size=2"),
     ["no optimizer step", "shared by 3 process(es)", "data.batch_size=2"]),
    ("second_run_refused", "train", lambda w: [*train(w, overwrite=False), f"output_dir={w.guard}"],
     ["output_dir=", "/run is not empty", "resume=auto", "new output_dir", "--overwrite"]),
    ("resume_other_k", "train", lambda w: train(w, f"resume={w.k14}", overwrite=False),
     ["resume=", "k14.ckpt", "K=14", "K=17"]),
    ("gpu_without_gpu", "train", lambda w: train(w, "trainer.accelerator=gpu"),
     ["trainer.accelerator=gpu", "no CUDA GPU"]),
    ("corrupt_checkpoint", "eval", lambda w: [str(w.corrupt)], ["corrupt.ckpt", "truncated"]),
    ("foreign_checkpoint", "eval", lambda w: [str(w.evil)], ["evil.ckpt", "weights_only=True"]),
    ("yaml_line_column", "train", lambda w: [str(w.bad_yaml)], ["bad.yaml:4:1", "not a valid YAML"]),
    ("recipe_is_folder", "train", lambda w: [str(w.recipe_dir)], ["recipes is a folder"]),
    ("weights_other_k", "train", lambda w: train(w, f"model.weights={w.k14}"),
     ["model.weights", "k14.ckpt", "K=14", "K=17"]),
    ("eval_results_folder", "eval", lambda w: [str(w.last), "--results", str(w.guard)],
     ["--results", "is a folder"]),
    # --- recipe values
    ("unknown_key", "train", lambda w: train(w, "data.batchsize=3"), ["data.batchsize", "data.batch_size"]),
    ("wrong_type", "train", lambda w: train(w, "trainer.max_epochs=ten"), ["trainer.max_epochs"]),
    ("not_key_value", "train", lambda w: train(w, "optim.lr"), ["optim.lr", "key=value"]),
    ("recipe_missing", "train", lambda w: [str(w.root / "none.yaml")], ["recipe file not found", "none.yaml"]),
    ("recipe_a_list", "train", lambda w: [str(w.listed)], ["list.yaml", "mapping"]),
    ("backbone", "train", lambda w: train(w, "model.backbone=hrnet_w99"), ["model.backbone='hrnet_w99'"]),
    ("adaptive_impl", "train", lambda w: train(w, "model.adaptive_impl=fast"), ["model.adaptive_impl"]),
    ("offset_blocks", "train", lambda w: train(w, "model.offset_blocks=0"), ["model.offset_blocks=0", "integer >= 1"]),
    ("input_size", "train", lambda w: train(w, "data.input_size=30"), ["data.input_size=30", "multiple of 4"]),
    ("batch_size_0", "train", lambda w: train(w, "data.batch_size=0"), ["data.batch_size=0"]),
    ("num_workers", "train", lambda w: train(w, "data.num_workers=-1"), ["data.num_workers=-1"]),
    ("bad_fraction", "train", lambda w: train(w, "data.max_bad_image_fraction=2"), ["data.max_bad_image_fraction=2"]),
    ("data_source", "train", lambda w: train(w, "data.source=kitti"), ["data.source='kitti'"]),
    ("lr_zero", "train", lambda w: train(w, "optim.lr=0"), ["optim.lr=0"]),
    ("optimizer", "train", lambda w: train(w, "optim.name=sgdd"), ["optim.name='sgdd'", "adam"]),
    ("schedule", "train", lambda w: train(w, "optim.schedule=step"), ["optim.schedule='step'", "linear or constant"]),
    ("milestones", "train", lambda w: train(w, "optim.milestones=[9,3]"), ["optim.milestones=[9.0, 3.0]"]),
    ("ema_decay", "train", lambda w: train(w, "optim.ema_decay=1.5"), ["optim.ema_decay=1.5"]),
    ("scales", "train", lambda w: train(w, "decode.scales=[2.0]"), ["decode.scales=[2.0]", "1.0"]),
    ("scale_order", "train", lambda w: train(w, "augment.min_scale=2", "augment.max_scale=1"),
     ["augment.min_scale=2", "augment.max_scale=1"]),
    ("max_epochs_0", "train", lambda w: train(w, "trainer.max_epochs=0"), ["trainer.max_epochs=0"]),
    ("limit_fraction", "train", lambda w: train(w, "trainer.limit_train_batches=1.5"),
     ["trainer.limit_train_batches=1.5"]),
    ("limit_zero", "train", lambda w: train(w, "trainer.limit_train_batches=0"),
     ["no optimizer step", "trainer.limit_train_batches=0"]),
    ("val_interval", "train", lambda w: train(w, "trainer.val_check_interval=0"), ["trainer.val_check_interval=0"]),
    ("cpu_devices_0", "train", lambda w: train(w, "trainer.accelerator=cpu", "trainer.devices=0"),
     ["trainer.devices=0"]),
    ("cpu_devices_all", "train", lambda w: train(w, "trainer.accelerator=cpu", "trainer.devices=-1"),
     ["trainer.devices=-1"]),
    ("precision", "train", lambda w: train(w, "trainer.precision=17"), ["trainer settings", "Precision '17'"]),
    ("strategy", "train", lambda w: train(w, "trainer.strategy=foo"), ["trainer settings", "strategy='foo'"]),
    ("wandb_missing", "train", lambda w: train(w, "trainer.wandb_project=p"), ["trainer.wandb_project", "wandb"]),
    ("keypoints_name", "train", lambda w: train(w, "keypoints=nope"), ["keypoints", "'nope'"]),
    ("keypoints_inline", "train",
     lambda w: train(w, "keypoints={names: [a, b], sigmas: [0.1]}"), ["keypoints", "sigmas"]),
    ("bad_target", "train", lambda w: train(w, "data.train_dataset={_target_: nowhere.Nothing}"),
     ["nowhere.Nothing", "cannot be imported"]),
    # --- data and images
    ("coco_paths_missing", "train", lambda w: train(w, "data.val_annotations=null"),
     ["data.val_annotations", "data.source=coco"]),
    ("annotations_missing", "train", lambda w: train(w, f"data.train_annotations={w.root}/no.json"),
     ["annotation file not found", "no.json"]),
    ("image_folder_missing", "train", lambda w: train(w, f"data.train_images={w.root}/nowhere"),
     ["image folder not found", "nowhere"]),
    ("annotations_not_json", "train", lambda w: train(w, f"data.train_annotations={w.text}"),
     ["notes.txt", "not valid JSON"]),
    ("no_people", "train",
     lambda w: train(w, f"data.train_annotations={w.empty_ann}", f"data.train_images={w.empty_images}"),
     ["the train data has no images", "data.drop_images_without_annotations"]),
    # --- checkpoints and the output folder
    ("resume_missing", "train", lambda w: train(w, f"resume={w.root}/none.ckpt", overwrite=False),
     ["resume=", "none.ckpt", "not found"]),
    ("resume_folder", "train", lambda w: train(w, f"resume={w.root}", overwrite=False),
     ["resume=", "is a folder"]),
    ("resume_weights_only", "train", lambda w: train(w, f"resume={w.weights_only}", overwrite=False),
     ["weights_only.ckpt", "no training state", "model.weights"]),
    ("resume_corrupt", "train", lambda w: train(w, f"resume={w.corrupt}", overwrite=False),
     ["corrupt.ckpt", "truncated"]),
    ("overwrite_and_resume", "train", lambda w: train(w, "resume=auto"), ["--overwrite", "resume=auto"]),
    ("output_dir_a_file", "train", lambda w: train(w, f"output_dir={w.text}"), ["output_dir=", "notes.txt", "a file"]),
    ("output_dir_under_file", "train", lambda w: train(w, f"output_dir={w.text}/run"),
     ["notes.txt", "is a file"]),
    ("weights_missing", "train", lambda w: train(w, f"model.weights={w.root}/no.pth"), ["model.weights", "no.pth"]),
    ("weights_corrupt", "train", lambda w: train(w, f"model.weights={w.corrupt}"), ["model.weights", "corrupt.ckpt"]),
    ("pretrained_is_pose", "train", lambda w: train(w, f"model.pretrained={w.official}"),
     ["model.pretrained", "official.pth", "pose checkpoint"]),
    ("rescore_missing", "train", lambda w: train(w, f"decode.rescore_checkpoint={w.root}/r.pth"),
     ["decode.rescore_checkpoint", "r.pth"]),
    ("rescore_not_a_rescorer", "train", lambda w: train(w, f"decode.rescore_checkpoint={w.official}"),
     ["decode.rescore_checkpoint", "official.pth", "not a rescoring net"]),
    # --- dekr-eval
    ("eval_missing", "eval", lambda w: [str(w.root / "none.ckpt")], ["checkpoint not found", "none.ckpt"]),
    ("eval_text", "eval", lambda w: [str(w.text)], ["notes.txt", "not a PyTorch checkpoint"]),
    ("eval_official", "eval", lambda w: [str(w.official)], ["official.pth", "no recipe inside", "model.weights"]),
    ("eval_folder", "eval", lambda w: [str(w.root)], ["is a folder"]),
    ("eval_bad_override", "eval", lambda w: [str(w.last), "decode.flipp=false"], ["decode.flipp"]),
    ("eval_keypoints", "eval", lambda w: [str(w.last), "keypoints=crowdpose"],
     ["last.ckpt", "do not fit", "keypoints 14"]),
    ("eval_scales", "eval", lambda w: [str(w.last), "decode.scales=[0.5]"], ["decode.scales=[0.5]"]),
    ("eval_gpu", "eval", lambda w: [str(w.last), "trainer.accelerator=gpu"], ["trainer.accelerator=gpu"]),
    ("eval_results_missing_folder", "eval",
     lambda w: [str(w.last), "--results", str(w.root / "no" / "r.json")], ["--results", "does not exist"]),
    ("eval_results_under_file", "eval", lambda w: [str(w.last), "--results", f"{w.text}/r.json"],
     ["notes.txt", "is not a folder"]),
    # --- dekr-predict
    ("predict_input_missing", "predict", lambda w: [str(w.last), str(w.root / "no.png"), "--out", str(w.guard)],
     ["input not found", "no.png"]),
    ("predict_input_type", "predict", lambda w: [str(w.last), str(w.text), "--out", str(w.guard)],
     ["notes.txt", "unsupported file type"]),
    ("predict_empty_folder", "predict", lambda w: [str(w.last), str(w.recipe_dir), "--out", str(w.guard)],
     ["no images or videos in folder", "recipes"]),
    ("predict_out_file", "predict", lambda w: [str(w.last), str(w.image), "--out", str(w.text)],
     ["output folder", "notes.txt", "not a folder"]),
    ("predict_annotations_missing", "predict",
     lambda w: [str(w.last), str(w.image), "--out", str(w.guard), "--annotations", str(w.root / "a.json")],
     ["annotation file not found", "a.json"]),
    ("predict_annotations_other", "predict",
     lambda w: [str(w.last), str(w.image), "--out", str(w.guard), "--annotations", str(w.other_ann)],
     ["x.png", "other_ann.json"]),
    ("predict_batch_size", "predict",
     lambda w: [str(w.last), str(w.image), "--out", str(w.guard), "--batch-size", "0"], ["--batch-size", "0"]),
    ("predict_scales", "predict",
     lambda w: [str(w.last), str(w.image), "--out", str(w.guard), "--scales", "2"], ["--scales 2", "one of them 1"]),
    ("predict_checkpoint", "predict", lambda w: [str(w.corrupt), str(w.image), "--out", str(w.guard)],
     ["corrupt.ckpt"]),
    ("predict_onnx_missing", "predict",
     lambda w: [str(w.last), str(w.image), "--out", str(w.guard), "--onnx", str(w.root / "m.onnx")],
     ["ONNX file not found", "m.onnx"]),
    ("predict_onnx_garbage", "predict",
     lambda w: [str(w.last), str(w.image), "--out", str(w.guard), "--onnx", str(w.onnx)],
     ["garbage.onnx", "onnxruntime cannot load it"]),
    # --- dekr-export
    ("export_format", "export", lambda w: [str(w.last), "--format", "tflite", "--out", str(w.guard / "m.onnx")],
     ["export format", "tflite"]),
    ("export_missing", "export", lambda w: [str(w.root / "none.ckpt"), "--out", str(w.guard / "m.onnx")],
     ["none.ckpt"]),
    ("export_out_folder", "export", lambda w: [str(w.last), "--out", str(w.guard)], ["--out", "is a folder"]),
    ("export_out_under_file", "export", lambda w: [str(w.last), "--out", f"{w.text}/m.onnx"],
     ["notes.txt", "is a file"]),
    ("export_input_size", "export",
     lambda w: [str(w.last), "--out", str(w.guard / "m.onnx"), "--input-size", "30"], ["--input-size 30"]),
    ("export_official", "export", lambda w: [str(w.official), "--out", str(w.guard / "m.onnx")],
     ["official.pth", "no recipe inside"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    case: Case, w: SimpleNamespace, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, command, argv, texts = case
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on every machine
    before = _snapshot(w.guard)
    rc = MAINS[command](argv(w))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    missing = [t for t in texts if t not in err]
    assert not missing, f"{missing} not in {err!r}"
    if command == "train":
        assert out == "", out  # checked before anything is printed
    assert _snapshot(w.guard) == before
    assert not (w.root / "fresh").exists()


def test_the_table_is_large_enough() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 45
    assert {c[1] for c in CASES} == set(MAINS)


def test_a_bug_shows_its_traceback(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Not a user error (here a ValueError deep inside): traceback and exit code 1."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr("dekr.training.train", broken)
    assert train_main([str(QUICK)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an internal inconsistency" in err
    assert "internal error in dekr" in err


def test_first_line_of_an_error() -> None:
    """The one line a command prints: the message's first non-empty line, the type's name for an
    empty message, and for an error a DataLoader worker re-raised, the worker error's own line."""
    assert first_line(ValueError("\n  bad value x\nmore detail\n")) == "bad value x"
    assert first_line(KeyError()) == "KeyError"
    worker = RuntimeError(
        "Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 3, in f\ndekr.errors.DataError: b.jpg: cannot be decoded'
    )
    assert first_line(worker) == "b.jpg: cannot be decoded"


def test_limit_batches_keep_lightnings_meaning(w: SimpleNamespace, tmp_path: Path) -> None:
    """``trainer.limit_train_batches=1`` is one batch (an int), ``0.5`` half of them."""
    from dekr.training import build_trainer

    recipe = load_recipe(QUICK, [*train(w, overwrite=False)[1:],
                                 "trainer.limit_train_batches=1", "trainer.limit_val_batches=0.5"])  # fmt: skip
    assert type(recipe.trainer.limit_train_batches) is int
    trainer = build_trainer(recipe, tmp_path / "out")
    assert trainer.limit_train_batches == 1 and type(trainer.limit_train_batches) is int
    assert trainer.limit_val_batches == 0.5
    assert not (tmp_path / "out").exists()  # building the Trainer writes nothing


def test_overwrite_replaces_only_the_run(w: SimpleNamespace, tmp_path: Path) -> None:
    from dekr.preflight import RUN_ENTRIES, clear_run

    run = tmp_path / "run"
    shutil.copytree(w.guard, run)
    (run / "notes.md").write_text("mine")
    removed = clear_run(run)
    assert set(removed) <= set(RUN_ENTRIES) and "checkpoints" in removed
    assert sorted(p.name for p in run.iterdir()) == ["notes.md"]


def test_readme_mentions_the_three_ways_out() -> None:
    text = (REPO / "README.md").read_text()
    assert "resume=auto" in text and "--overwrite" in text and "model.weights_partial=true" in text
