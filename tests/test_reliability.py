"""Reliability: bad input, faults, crashes and resumption, safe loading (docs/reliability.md)."""

from __future__ import annotations

import ast
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, tiny_overrides
from omegaconf import OmegaConf

from dekr.cli import eval_main, predict_main, train_main
from dekr.config import RecipeError, load_recipe
from dekr.data.coco import COCOKeypoints
from dekr.data.robust import SkipBadImages, TooManyBadImages
from dekr.decoder import DEKRDecoder
from dekr.evaluation import COCOEvaluator
from dekr.keypoints import COCO_KEYPOINTS
from dekr.loss import DEKRLoss
from dekr.module import DekrModule, load_checkpoint
from dekr.targets import encode_targets, encode_targets_batch
from dekr.training import AtomicCheckpointIO

QUICK = REPO / "recipes" / "quickstart.yaml"


# ------------------------------------------------------------------------------ safe loading
def _unsafe_torch_loads(path: Path) -> list[int]:
    """Line numbers of ``torch.load(...)`` calls in ``path`` without ``weights_only=True``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        func = getattr(node, "func", None)
        if not (isinstance(node, ast.Call) and isinstance(func, ast.Attribute)):
            continue
        if func.attr != "load" or not (
            isinstance(func.value, ast.Name) and func.value.id == "torch"
        ):
            continue
        flags = [k for k in node.keywords if k.arg == "weights_only"]
        if not (
            flags and isinstance(flags[0].value, ast.Constant) and flags[0].value.value is True
        ):
            bad.append(node.lineno)
    return bad


def test_every_torch_load_is_weights_only(tmp_path: Path) -> None:
    sources = sorted([*(REPO / "dekr").rglob("*.py"), *(REPO / "tools").rglob("*.py")])
    assert sources
    offenders = {str(p.relative_to(REPO)): _unsafe_torch_loads(p) for p in sources}
    assert {p: lines for p, lines in offenders.items() if lines} == {}
    # the checker itself sees an unsafe call
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\ntorch.load('x')\ntorch.load('y', weights_only=True)\n")
    assert _unsafe_torch_loads(probe) == [2]


def test_yaml_python_tags_are_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.yaml"
    bad.write_text(
        "seed: !!python/object/apply:os.system\n"
        f"  - touch {marker}\n"
        "model: !!python/object:argparse.Namespace {backbone: x}\n"
    )
    with pytest.raises(RecipeError, match="not a valid YAML recipe"):
        load_recipe(bad)
    assert not marker.exists()


class _Payload:
    """Pickles to a call that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"recipe": {}}, "state_dict": _Payload(marker)}, ckpt)
    with pytest.raises(ValueError, match=f"cannot read checkpoint {ckpt}"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


# ------------------------------------------------------------------------------ bad input
def _coco_doc(people: int = 1, k: int = 17, size: int = 64) -> dict[str, Any]:
    """A COCO keypoint document: one ``size``² image (``a.jpg``) with ``people`` people."""
    rng = np.random.default_rng(people)
    anns = []
    for i in range(people):
        xy = rng.uniform(2, size - 3, size=(k, 2))
        kps = np.concatenate([xy, np.full((k, 1), 2.0)], 1).round(2)
        ann = {"id": 100 + i, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 400.0}
        anns.append({**ann, "bbox": [0, 0, 20, 20], "keypoints": kps.ravel().tolist()})
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": size, "height": size}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(k)]}],
    }


def _write_coco(root: Path, doc: dict[str, Any], text: str | None = None) -> tuple[Path, Path]:
    """Write ``doc`` (or raw ``text``) as ``root/ann.json`` and its images; (json, image dir)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for info in doc["images"]:
        shape = (info["height"], info["width"], 3)
        cv2.imwrite(str(images / info["file_name"]), np.full(shape, 127, np.uint8))
    ann = root / "ann.json"
    ann.write_text(json.dumps(doc) if text is None else text)
    return ann, images


def _coco_argv(ann: Path, images: Path, out: Path) -> list[str]:
    """``dekr-train`` arguments: the quickstart recipe on a COCO-format folder, tiny model."""
    return [str(QUICK), *tiny_overrides(out / "unused", out),
            "data.source=coco", f"data.train_annotations={ann}", f"data.train_images={images}",
            f"data.val_annotations={ann}", f"data.val_images={images}"]  # fmt: skip


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


RECIPE_ERRORS = {
    "unknown_key": ("data:\n  batchsize: 3\n", "unknown key 'data.batchsize'"),
    "wrong_type": ("trainer:\n  max_epochs: ten\n", "bad value for 'trainer.max_epochs'"),
    "bad_target": ("data:\n  train_dataset: {_target_: nowhere.Nothing}\n", "cannot be imported"),
    "bad_yaml": ("data: [1, 2\n", "not a valid YAML recipe"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_ERRORS))
def test_cli_recipe_errors(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, expected = RECIPE_ERRORS[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert train_main([str(recipe)]) == 2
    line = _one_error_line(capsys)
    assert expected in line and str(recipe) in line or case == "bad_target" and expected in line
    with pytest.raises(RecipeError):
        train_main([str(recipe), "--debug"])  # --debug: the exception and its traceback


def test_cli_missing_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_main([str(tmp_path / "none.yaml")]) == 2
    assert "recipe file not found" in _one_error_line(capsys)


def _mutate(case: str, root: Path) -> tuple[Path, Path, str]:
    """A broken COCO folder for ``case``; returns (json, images, text the error must hold)."""
    doc = _coco_doc(people=2)
    if case == "missing_json":
        ann, images = _write_coco(root, doc)
        ann.unlink()
        return ann, images, f"annotation file not found: {ann}"
    if case == "missing_images":
        ann, _ = _write_coco(root, doc)
        return ann, root / "nowhere", f"image folder not found: {root / 'nowhere'}"
    if case == "truncated_json":
        ann, images = _write_coco(root, doc, text=json.dumps(doc)[:80])
        return ann, images, f"{ann}: not valid JSON"
    if case == "not_an_object":
        ann, images = _write_coco(root, doc, text="[1, 2, 3]")
        return ann, images, f"{ann}: not a COCO annotation file"
    if case == "other_k":
        ann, images = _write_coco(root, _coco_doc(people=2, k=5))
        return ann, images, f"{ann}: no category has 17 keypoints"
    if case == "short_keypoints":
        doc["annotations"][1]["keypoints"] = doc["annotations"][1]["keypoints"][:-3]
        ann, images = _write_coco(root, doc)
        return ann, images, f"{ann}: annotation id 101 has 48 keypoint numbers, expected 51"
    assert case == "nan_keypoints"
    doc["annotations"][1]["keypoints"][4] = float("nan")  # json writes NaN literally
    ann, images = _write_coco(root, doc)
    return ann, images, f"{ann}: annotation id 101 has NaN or infinite keypoint values"


DATA_ERRORS = ["missing_json", "missing_images", "truncated_json", "not_an_object", "other_k",
               "short_keypoints", "nan_keypoints"]  # fmt: skip


@pytest.mark.parametrize("case", DATA_ERRORS)
def test_cli_data_errors(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann, images, expected = _mutate(case, tmp_path / "data")
    assert train_main(_coco_argv(ann, images, tmp_path / "out")) == 2
    assert expected in _one_error_line(capsys)


def _checkpoint(path: Path, recipe: dict[str, Any], weights_recipe: dict[str, Any]) -> Path:
    """A checkpoint holding ``recipe`` and the (random) weights of ``weights_recipe``'s model."""
    state = DekrModule.from_recipe(weights_recipe).state_dict()
    torch.save({"hyper_parameters": {"recipe": recipe}, "state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    "other",
    ["keypoints=crowdpose", pytest.param("model.backbone=hrnet_w16_small", marks=pytest.mark.slow)],
)
@pytest.mark.slow  # a training run per case
def test_cli_checkpoint_of_another_model(
    other: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = load_recipe(QUICK, tiny_overrides(tmp_path / "syn", tmp_path / "out"))
    mine = OmegaConf.to_container(recipe, resolve=True)
    theirs = OmegaConf.to_container(
        load_recipe(QUICK, [*tiny_overrides(tmp_path, tmp_path), other])
    )
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    bad = _checkpoint(tmp_path / "bad.ckpt", mine, theirs)  # weights of another model
    good = _checkpoint(tmp_path / "good.ckpt", mine, mine)
    predict_argv = [str(bad), str(image), "--out", str(tmp_path / "p")]
    for argv, main in [([str(bad)], eval_main), ([str(good), other], eval_main),
                       (predict_argv, predict_main)]:  # fmt: skip
        assert main(argv) == 2
        line = _one_error_line(capsys)
        assert "checkpoint weights do not fit" in line and "size mismatch" in line, line


def _crowded_folder(root: Path, people: int = 120) -> tuple[Path, Path]:
    """``people`` people on one 96² image, one keypoint far outside, one person of area 0."""
    doc = _coco_doc(people=people, size=96)
    doc["annotations"][0]["keypoints"][:2] = [-50.0, 400.0]  # outside the image
    doc["annotations"][1]["area"] = 0.0  # zero-area person
    return _write_coco(root, doc)


def test_crowded_image_targets_decoder_evaluation(tmp_path: Path) -> None:
    ann, images = _crowded_folder(tmp_path)
    ds = COCOKeypoints(str(ann), str(images), COCO_KEYPOINTS)
    assert ds.num_outside_keypoints == 1  # kept as labelled
    sample = ds[0]
    assert sample["keypoints"][0, 0].tolist() == [-50.0, 400.0, 2.0]
    assert sample["keypoints"].shape == (120, 17, 3) and sample["areas"][1] == 0.0
    kps = sample["keypoints"].copy()
    kps[..., :2] /= 4  # output pixels, 24² maps
    maps = encode_targets(kps, sample["areas"], None, output_size=24, min_center_area=0.0)
    batch = encode_targets_batch(
        torch.from_numpy(kps)[None], torch.from_numpy(sample["areas"])[None], None,
        output_size=24, min_center_area=0.0,
    )  # fmt: skip
    for name, value in maps.items():
        assert np.isfinite(value).all()
        np.testing.assert_allclose(batch[name][0].numpy(), value, atol=1e-5, err_msg=name)
    decoder = DEKRDecoder(COCO_KEYPOINTS, max_people=30, center_threshold=0.0)
    heat = torch.from_numpy(maps["heatmaps"])[None]
    poses = decoder(heat, torch.from_numpy(maps["offsets"])[None])[0]
    assert 0 < len(poses["scores"]) <= 30 and torch.isfinite(poses["keypoints"]).all()
    evaluator = COCOEvaluator(COCO_KEYPOINTS, coco_gt=ds.ground_truth())
    truth = sample["keypoints"].copy()
    evaluator.process([1], [{"keypoints": truth, "scores": np.linspace(1, 0.5, 120)}])
    metrics = evaluator.evaluate()
    # pycocotools keeps 20 detections per image (params.maxDets): recall <= 20/120 here
    assert all(np.isfinite(v) for v in metrics.values()) and 0.1 < metrics["AP"] <= 0.2


@pytest.mark.slow  # a training run
@pytest.mark.integration
def test_crowded_image_trains_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann, images = _crowded_folder(tmp_path / "data")
    argv = [*_coco_argv(ann, images, tmp_path / "out"), "data.batch_size=1", "data.input_size=96"]
    assert train_main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("AP ")
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1  # one training step on the 120-person image


# ------------------------------------------------------------------------------ bad images
class _Files(torch.utils.data.Dataset):
    """Samples ``{"index": i}``; the indices in ``missing`` raise like a missing image file."""

    def __init__(self, size: int, missing: set[int]) -> None:
        self.size, self.missing = size, missing

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, int]:
        if index in self.missing:
            raise FileNotFoundError(f"image file not found: /data/img{index}.jpg")
        return {"index": index}


def test_skip_bad_images_warns_counts_and_stops() -> None:
    ds = SkipBadImages(_Files(10, {3, 4}), max_bad_fraction=0.2)
    with pytest.warns(UserWarning, match=r"/data/img3\.jpg \(1 of 10 bad so far, at most 2"):
        assert ds[3] == {"index": 5}  # the next readable sample, deterministically
    assert ds[3] == {"index": 5} and ds.num_bad == 2 and ds[9] == {"index": 9}
    strict = SkipBadImages(_Files(10, {3, 6}), max_bad_fraction=0.1)
    with pytest.warns(UserWarning, match="img3"):
        assert strict[3] == {"index": 4}  # 1 bad allowed: skipped
    with pytest.raises(TooManyBadImages, match=r"2 of 10 training images .*img6\.jpg"):
        strict[6]
    with pytest.raises(TooManyBadImages, match="none of the 2"):
        with pytest.warns(UserWarning):
            SkipBadImages(_Files(2, {0, 1}), max_bad_fraction=1.0)[0]


def _image_folder(root: Path, images: int, broken: dict[int, str]) -> tuple[Path, Path]:
    """``images`` one-person images; ``broken`` maps an image index to "missing" / "corrupt"."""
    one = _coco_doc(people=1)
    doc = {"images": [], "annotations": [], "categories": one["categories"]}
    for i in range(images):
        doc["images"].append({**one["images"][0], "id": i + 1, "file_name": f"{i}.jpg"})
        doc["annotations"].append({**one["annotations"][0], "id": 100 + i, "image_id": i + 1})
    ann, folder = _write_coco(root, doc)
    for i, how in broken.items():
        path = folder / f"{i}.jpg"
        path.unlink() if how == "missing" else path.write_bytes(b"\xff\xd8 truncated")
    return ann, folder


@pytest.mark.slow  # a training run
@pytest.mark.integration
def test_training_skips_a_bad_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann, images = _image_folder(tmp_path / "data", 8, {2: "missing", 5: "corrupt"})
    valid, _ = _write_coco(tmp_path / "val", _coco_doc(people=1))
    val_images = tmp_path / "val" / "images"
    argv = [*_coco_argv(ann, images, tmp_path / "out"), f"data.val_annotations={valid}",
            f"data.val_images={val_images}", "data.max_bad_image_fraction=0.25"]  # fmt: skip
    with pytest.warns(UserWarning, match="skipping an unreadable training image") as record:
        assert train_main(argv) == 0
    messages = " ".join(str(w.message) for w in record)
    assert str(images / "2.jpg") in messages and str(images / "5.jpg") in messages
    assert "2 of 8 bad so far" in messages


@pytest.mark.integration
def test_training_stops_past_the_bad_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ann, images = _image_folder(tmp_path / "data", 8, {1: "corrupt", 6: "missing"})
    # the error crosses a DataLoader worker process
    argv = [*_coco_argv(ann, images, tmp_path / "out"), "data.max_bad_image_fraction=0.1",
            "data.num_workers=1"]  # fmt: skip
    assert train_main(argv) == 2
    line = _one_error_line(capsys)
    assert "training images could not be read" in line and "max_bad_image_fraction=0.1" in line


@pytest.mark.slow  # a training run
def test_evaluation_names_a_bad_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ann, images = _image_folder(tmp_path / "data", 3, {1: "corrupt"})
    recipe = load_recipe(QUICK, _coco_argv(ann, images, tmp_path / "out")[1:])
    plain = OmegaConf.to_container(recipe, resolve=True)
    ckpt = _checkpoint(tmp_path / "m.ckpt", plain, plain)
    assert eval_main([str(ckpt)]) == 2
    assert f"cannot decode image file: {images / '1.jpg'}" in _one_error_line(capsys)
    (images / "1.jpg").unlink()
    assert eval_main([str(ckpt)]) == 2
    assert f"image file not found: {images / '1.jpg'}" in _one_error_line(capsys)


# ------------------------------------------------------------------------------ faults
def test_atomic_checkpoint_survives_a_crash_while_saving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, last)

    def crash_halfway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")  # partial bytes, then the crash
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, last)
    monkeypatch.undo()
    kept = torch.load(last, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["state_dict"]["w"], torch.ones(3))
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, last)  # next save works
    assert torch.load(last, weights_only=True)["epoch"] == 2


@pytest.mark.slow  # two training runs
@pytest.mark.integration
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    epoch = {"now": 0}
    real_forward, real_epoch_start = DEKRLoss.forward, DekrModule.on_train_epoch_start

    def note_epoch(self: DekrModule) -> None:
        epoch["now"] = self.current_epoch
        real_epoch_start(self)

    def nan_from_epoch_2(self: DEKRLoss, *args: Any) -> dict[str, torch.Tensor]:
        losses = real_forward(self, *args)
        return {k: v * float("nan") for k, v in losses.items()} if epoch["now"] else losses

    monkeypatch.setattr(DekrModule, "on_train_epoch_start", note_epoch)
    monkeypatch.setattr(DEKRLoss, "forward", nan_from_epoch_2)
    out = tmp_path / "run"
    argv = [str(QUICK), *tiny_overrides(synthetic_root, out, **{"trainer.max_epochs": 2})]
    assert train_main(argv) == 1
    line = _one_error_line(capsys)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] > 0  # epoch 1's checkpoint, intact
    step = ckpt["global_step"]
    assert f"non-finite loss at epoch 1, step {step}" in line and "max_bad_loss_batches=0" in line
    module = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in module.state_dict().values())


# ------------------------------------------------------------------------------ kill -9 + resume
def _train_command(root: Path, out: Path, *extra: str) -> list[str]:
    """``dekr-train`` on the tiny deterministic setup (one DataLoader worker, 2 epochs)."""
    exe = Path(sys.executable).with_name("dekr-train")
    items = {"trainer.max_epochs": 2, "trainer.deterministic": "true", "seed": 7,
             "data.synthetic.train_images": 40, "data.num_workers": 1}  # fmt: skip
    prefix = [str(exe)] if exe.is_file() else [sys.executable, "-c", _TRAIN_MAIN]
    return [*prefix, str(QUICK), *tiny_overrides(root, out, **items), *extra]


_TRAIN_MAIN = "import sys; from dekr.cli import train_main; sys.exit(train_main(sys.argv[1:]))"


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _kill_during_epoch_2(command: list[str], last: Path, env: dict[str, str]) -> int:
    """Start ``command``, SIGKILL it as soon as epoch 1's ``last.ckpt`` exists; its epoch."""
    with open(last.parent.parent.with_name("killed.log"), "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 300
            while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # into epoch 2
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    progress = last.parent.parent.with_name("killed.log").read_text(errors="replace")
    assert "Epoch 1:" in progress  # the progress bar of epoch 2 had started
    return int(torch.load(last, weights_only=True)["epoch"])


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = tmp_path / "syn"
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run = functools.partial(subprocess.run, env=env, timeout=300, capture_output=True, text=True)
    done = run(_train_command(root, whole))
    assert done.returncode == 0, done.stderr[-2000:]
    last = broken / "checkpoints" / "last.ckpt"
    assert _kill_during_epoch_2(_train_command(root, broken), last, env) == 0  # epoch 1 kept
    resumed = run(_train_command(root, broken, "resume=auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _final_state(whole), _final_state(broken)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], different[:5]
    ends = [torch.load(o / "checkpoints" / "last.ckpt", weights_only=True) for o in (whole, broken)]
    assert [e["epoch"] for e in ends] == [1, 1]  # last.ckpt is rewritten every epoch
    assert ends[0]["global_step"] == ends[1]["global_step"] > 0
