"""``dekr-predict`` and ``dekr-eval --results`` as users expect: unique overlay names, a COCO
results list with the annotation's ids, unreadable files skipped and counted, output paths
checked before any work."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import dekr.predict
import dekr.training
from dekr.cli import eval_main, predict_main
from dekr.predict import plan_inputs


def _val_images(tiny_run: dict) -> list[Path]:
    return sorted((tiny_run["root"] / "images" / "val").glob("*.jpg"))


def _ckpt(tiny_run: dict) -> str:
    return str(tiny_run["out"] / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def candidates(tiny_run: dict, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny checkpoint keeping every centre candidate: poses on every image."""
    state = torch.load(_ckpt(tiny_run), weights_only=True)
    state["hyper_parameters"]["recipe"]["decode"]["center_threshold"] = -1e9
    path = tmp_path_factory.mktemp("candidates") / "every_candidate.ckpt"
    torch.save(state, path)
    return str(path)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a checkpoint or evaluating fails the test: the checks must come first."""

    def forbidden(*args: object, **kwargs: object) -> None:
        pytest.fail("the model was loaded / evaluated before the output path was checked")

    monkeypatch.setattr(dekr.predict, "load_checkpoint", forbidden)
    monkeypatch.setattr(dekr.training, "evaluate", forbidden)


def test_overlay_names_keep_the_folders_and_stay_unique(tmp_path: Path) -> None:
    files = [_touch(tmp_path / d / "img.jpg") for d in ("a", "b", "c")]
    _touch(tmp_path / "c" / "img.png")  # same stem as c/img.jpg
    _touch(tmp_path / "c" / "sub" / "deep.png")
    _touch(tmp_path / "c" / "clip.mp4")
    _touch(tmp_path / "c" / "notes.txt")

    def overlays(*inputs: Path, **kw: bool) -> list[str]:
        return [str(item.overlay) for item in plan_inputs(inputs, **kw)]

    # several files: relative to their common folder; listed twice = predicted once
    assert overlays(*files, files[0]) == ["a/img.png", "b/img.png", "c/img.png"]
    assert overlays(files[0]) == ["img.png"]
    # a folder: relative to it, sorted; same stems keep the whole name
    assert overlays(tmp_path / "c") == ["clip.mp4", "img.jpg.png", "img.png.png"]
    assert overlays(tmp_path / "c", recursive=True) == [
        "clip.mp4", "img.jpg.png", "img.png.png", "sub/deep.png"
    ]  # fmt: skip
    # several folders: relative to their common parent
    planned = plan_inputs([tmp_path / "a", tmp_path / "b"])
    assert [str(item.overlay) for item in planned] == ["a/img.png", "b/img.png"]
    assert planned[0].rel == PurePosixPath("a/img.jpg") and not planned[0].video
    # the output folder inside a searched folder is not searched
    _touch(tmp_path / "c" / "pred" / "old.png")
    assert "pred/old.png" not in overlays(
        tmp_path / "c", recursive=True, out=tmp_path / "c" / "pred"
    )
    with pytest.raises(FileNotFoundError, match="searched with --recursive"):
        plan_inputs([tmp_path])


@pytest.mark.slow  # prediction with every centre candidate
def test_three_inputs_of_one_name_give_three_overlays(
    tiny_run: dict, candidates: str, tmp_path: Path
) -> None:
    source = _val_images(tiny_run)
    inputs = []
    for folder, image in zip(("x", "y", "z"), source):
        inputs.append(tmp_path / "in" / folder / "frame.jpg")
        inputs[-1].parent.mkdir(parents=True)
        shutil.copy(image, inputs[-1])
    out = tmp_path / "out"
    assert predict_main([candidates, *map(str, inputs), "--out", str(out), "--no-flip"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "x/frame.png", "y/frame.png", "z/frame.png"
    ]  # fmt: skip
    summary = json.loads((out / "images.json").read_text())
    assert [(im["id"], im["file"], im["overlay"]) for im in summary["images"]] == [
        (i, str(path), f"{path.parent.name}/frame.png") for i, path in enumerate(inputs, 1)
    ]
    assert summary["skipped"] == [] and summary["annotations"] is None
    results = json.loads((out / "predictions.json").read_text())
    assert isinstance(results, list) and len(results) > 0
    counts = {im["id"]: im["poses"] for im in summary["images"]}
    assert sum(counts.values()) == len(results)
    assert all(set(r) == {"image_id", "category_id", "keypoints", "score"} for r in results)
    assert all(r["image_id"] in counts and len(r["keypoints"]) == 17 * 3 for r in results)


def test_results_load_with_the_annotation_ids(
    tiny_run: dict, candidates: str, tmp_path: Path, capsys
) -> None:
    root = tiny_run["root"]
    gt = json.loads((root / "annotations" / "val.json").read_text())
    new_id = {im["id"]: 1000 + 7 * im["id"] for im in gt["images"]}
    for im in gt["images"]:  # other ids, file names with a folder (matched by the name)
        im["id"], im["file_name"] = new_id[im["id"]], f"val/{im['file_name']}"
    for ann in gt["annotations"]:
        ann["image_id"] = new_id[ann["image_id"]]
    gt["images"].reverse()
    annotations = tmp_path / "gt.json"
    annotations.write_text(json.dumps(gt))
    out = tmp_path / "out"
    argv = [candidates, str(root / "images" / "val"), "--out", str(out), "--no-flip"]
    assert predict_main([*argv, "--annotations", str(annotations)]) == 0
    summary = json.loads((out / "images.json").read_text())
    expected = {f"val/{p.name}": p for p in _val_images(tiny_run)}
    by_id = {im["id"]: im["file_name"] for im in gt["images"]}
    assert {by_id[im["id"]]: Path(im["file"]) for im in summary["images"]} == expected
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
        dt = coco.loadRes(str(out / "predictions.json"))
        ev = COCOeval(coco, dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert set(dt.getImgIds()) <= set(new_id.values()) and len(ev.stats) == 10
    assert {r["image_id"] for r in dt.dataset["annotations"]} <= set(new_id.values())
    # an input that is not in the annotation file is named, before the model is loaded
    stranger = tmp_path / "stranger.jpg"
    shutil.copy(_val_images(tiny_run)[0], stranger)
    capsys.readouterr()
    argv = [_ckpt(tiny_run), str(stranger), "--out", str(tmp_path / "o"), "--annotations"]
    assert predict_main([*argv, str(annotations)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "1 of 1 inputs are not images of" in err[0] and "stranger.jpg" in err[0]
    )


@pytest.mark.slow  # prediction over a folder
def test_unreadable_files_are_skipped_and_counted(tiny_run: dict, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(_val_images(tiny_run)[0], folder / "b_good.jpg")
    (folder / "a_broken.jpg").write_bytes(b"not a jpeg")
    (folder / "c_broken.png").write_bytes(b"")
    out = tmp_path / "out"
    argv = [_ckpt(tiny_run), str(folder), "--out", str(out), "--no-flip"]
    assert predict_main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipped: cannot read image") == 2
    assert "skipped 2 of 3 inputs that could not be read" in err.strip().splitlines()[-1]
    summary = json.loads((out / "images.json").read_text())
    assert [im["file"] for im in summary["images"]] == [str(folder / "b_good.jpg")]
    assert [s["file"] for s in summary["skipped"]] == [
        str(folder / "a_broken.jpg"), str(folder / "c_broken.png")
    ]  # fmt: skip
    assert (out / "b_good.png").is_file() and (out / "predictions.json").is_file()
    # --strict: the first unreadable file stops the run; no predictions.json (the old one goes)
    assert predict_main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "a_broken.jpg" in err[-1] and "--strict" in err[-1]
    assert not (out / "predictions.json").exists() and not (out / "images.json").exists()


def test_predict_checks_the_output_folder_first(
    tiny_run: dict, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _val_images(tiny_run)[0]
    png = tmp_path / "photo.png"
    shutil.copy(image, png)
    existing = _touch(tmp_path / "file.txt")
    _no_loading(monkeypatch)
    cases = [
        (image, existing, "is an existing file, not a folder"),
        (image, existing / "sub", "cannot create output folder"),
        (png, tmp_path, "would overwrite the input"),  # photo.png → overlay photo.png
    ]
    if sys.platform.startswith("linux"):  # sysfs: no new folders, not even for root
        cases.append((image, Path("/sys/dekr-predictions"), "cannot create output folder"))
    for source, out, message in cases:
        assert predict_main([_ckpt(tiny_run), str(source), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(out) in err[0], err
    assert not (tmp_path / "photo.png.png").exists()


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_videos_keep_their_folder_and_frame_ids(
    tiny_run: dict, candidates: str, tmp_path: Path, capsys
) -> None:
    image = tmp_path / "in" / "clip.jpg"
    image.parent.mkdir()
    shutil.copy(_val_images(tiny_run)[0], image)
    video = tmp_path / "in" / "videos" / "clip.mp4"
    video.parent.mkdir()
    frame = cv2.imread(str(image))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, frame.shape[1::-1])
    for shift in range(3):
        writer.write(np.roll(frame, 8 * shift, axis=1))
    writer.release()
    (tmp_path / "in" / "videos" / "broken.mp4").write_bytes(b"no video")
    out = tmp_path / "out"
    argv = [candidates, str(tmp_path / "in"), "--out", str(out), "--recursive", "--batch-size", "2"]
    assert predict_main(argv) == 0
    assert "warning: skipped: cannot read video" in capsys.readouterr().err
    summary = json.loads((out / "images.json").read_text())
    rows = [(im["id"], im.get("frame"), im["overlay"]) for im in summary["images"]]
    assert rows == [(1, None, "clip.png")] + [(2 + i, i, "videos/clip.mp4") for i in range(3)]
    assert _frames(out / "videos" / "clip.mp4") == 3 and (out / "clip.png").is_file()
    assert not list(out.rglob("*partial*"))
    ids = {r["image_id"] for r in json.loads((out / "predictions.json").read_text())}
    assert ids == {1, 2, 3, 4}


def test_eval_checks_the_results_path_first(
    tiny_run: dict, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_loading(monkeypatch)
    not_a_folder = _touch(tmp_path / "file.txt")
    cases = [
        (tmp_path, "is a folder; give a file path"),
        (tmp_path / "missing" / "r.json", f"the folder {tmp_path / 'missing'} does not exist"),
        (not_a_folder / "r.json", "is not a folder"),
    ]
    if sys.platform.startswith("linux"):
        cases.append((Path("/sys/r.json"), "the folder /sys is not writable"))
    for results, message in cases:
        assert eval_main([_ckpt(tiny_run), "--results", str(results)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
