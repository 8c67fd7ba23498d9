"""Tests of the embedded synthetic dataset generator."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dekr.data.synthetic import ensure_synthetic_splits, generate_synthetic_dataset
from dekr.keypoints import COCO_KEYPOINTS, KeypointSpec

SIZE = (80, 96)  # (h, w): small and non-square to catch x/y mix-ups
K5 = KeypointSpec(
    name="k5",
    names=("top", "l_arm", "r_arm", "mid", "tail"),
    sigmas=(0.05, 0.06, 0.06, 0.07, 0.08),
    flip_pairs=(("l_arm", "r_arm"),),
    skeleton=(("top", "l_arm"), ("top", "r_arm"), ("top", "mid"), ("mid", "tail")),
)
# dense scenes so a few images exercise occlusion and crowds
DENSE = {"max_people": 8, "crowd_prob": 0.5, "occluder_prob": 0.5}


def _generate(root: Path, seed: int = 0, spec: KeypointSpec = COCO_KEYPOINTS, n: int = 12,
              workers: int = 1) -> Path:  # fmt: skip
    return generate_synthetic_dataset(
        root, spec=spec, num_images=n, size=SIZE, seed=seed, split_name="val", workers=workers,
        **DENSE,
    )  # fmt: skip


def _images(root: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted((root / "images" / "val").glob("*.jpg"))]


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("coco"), n=30)


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_deterministic_by_seed(tmp_path: Path, coco_json: Path) -> None:
    again = _generate(tmp_path / "a", n=30)
    assert again.read_bytes() == coco_json.read_bytes()
    for x, y in zip(_images(coco_json.parent.parent), _images(tmp_path / "a")):
        assert np.array_equal(x, y)
    other = _generate(tmp_path / "b", seed=1, n=30)
    assert other.read_bytes() != coco_json.read_bytes()
    assert not np.array_equal(_images(tmp_path / "b")[0], _images(tmp_path / "a")[0])


def test_the_same_files_from_any_number_of_rendering_processes(
    tmp_path: Path, coco_json: Path
) -> None:
    parallel = _generate(tmp_path / "p", n=30, workers=3)
    assert parallel.read_bytes() == coco_json.read_bytes()
    files = sorted(p.name for p in (tmp_path / "p" / "images" / "val").glob("*.jpg"))
    assert files == [f"{i:06d}.jpg" for i in range(1, 31)]
    for x, y in zip(_images(coco_json.parent.parent), _images(tmp_path / "p"), strict=True):
        assert np.array_equal(x, y)


def test_size_is_rows_first_and_the_old_argument_is_an_error(
    tmp_path: Path, coco_json: Path
) -> None:
    assert all(im.shape[:2] == SIZE for im in _images(coco_json.parent.parent))
    with pytest.raises(TypeError, match=r"size=\(h, w\)"):
        generate_synthetic_dataset(tmp_path, num_images=1, image_size=(96, 80))
    with pytest.raises(TypeError, match=r"size=\(h, w\)"):
        ensure_synthetic_splits(tmp_path, train_images=1, val_images=1, image_size=96)
    assert not any(tmp_path.iterdir()), "nothing is written before the error"


def test_coco_structure(coco_json: Path) -> None:
    coco = _load(coco_json)
    data = json.loads(coco_json.read_text())
    assert [im["id"] for im in data["images"]] == list(range(1, 31))
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    cat = data["categories"][0]
    assert cat["id"] == 1 and cat["keypoints"] == list(COCO_KEYPOINTS.names)
    assert cat["skeleton"] == [[a + 1, b + 1] for a, b in COCO_KEYPOINTS.limbs]
    root = coco_json.parent.parent
    for im in data["images"]:
        assert (im["height"], im["width"]) == SIZE
        assert (root / "images" / "val" / im["file_name"]).is_file()
    people = [a for a in data["annotations"] if not a["iscrowd"]]
    assert len(people) > 30 and len(coco.getImgIds()) == 30
    assert any(not coco.getAnnIds(imgIds=i) for i in coco.getImgIds()), "no empty image"


def test_keypoints_and_boxes(coco_json: Path) -> None:
    data = json.loads(coco_json.read_text())
    h, w = SIZE
    flags = []
    for a in data["annotations"]:
        if a["iscrowd"]:
            continue
        kps = np.array(a["keypoints"], dtype=float).reshape(-1, 3)
        assert kps.shape == (17, 3) and a["num_keypoints"] == int((kps[:, 2] > 0).sum())
        lab = kps[kps[:, 2] > 0]
        assert np.all(
            (lab[:, 0] >= 0) & (lab[:, 0] <= w - 1) & (lab[:, 1] >= 0) & (lab[:, 1] <= h - 1)
        )
        assert np.all(kps[kps[:, 2] == 0, :2] == 0)
        x, y, bw, bh = a["bbox"]
        assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        assert a["area"] == pytest.approx(bw * bh, rel=1e-3, abs=0.05)
        assert np.all(
            (lab[:, 0] >= x) & (lab[:, 0] <= x + bw) & (lab[:, 1] >= y) & (lab[:, 1] <= y + bh)
        )
        flags.extend(kps[:, 2].tolist())
    assert {0.0, 1.0, 2.0} <= set(flags), "expected visible, occluded and unlabelled keypoints"


def test_crowd_regions_are_rle(coco_json: Path) -> None:
    coco = _load(coco_json)
    crowds = [a for a in coco.dataset["annotations"] if a["iscrowd"]]
    assert crowds
    for a in crowds:
        assert isinstance(a["segmentation"], dict) and a["num_keypoints"] == 0
        assert not any(a["keypoints"])
        m = coco.annToMask(a)
        assert m.shape == SIZE and m.sum() == pytest.approx(a["area"])


def _ap_of_ground_truth(path: Path, spec: KeypointSpec) -> float:
    coco = _load(path)
    dets = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in coco.dataset["annotations"]
        if not a["iscrowd"] and a["num_keypoints"] > 0
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "keypoints")
        ev.params.kpt_oks_sigmas = np.array(spec.sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_ground_truth_scores_ap_one(coco_json: Path) -> None:
    assert _ap_of_ground_truth(coco_json, COCO_KEYPOINTS) == pytest.approx(1.0)


def test_custom_spec(tmp_path: Path) -> None:
    path = _generate(tmp_path, spec=K5)
    data = json.loads(path.read_text())
    assert data["categories"][0]["keypoints"] == list(K5.names)
    people = [a for a in data["annotations"] if not a["iscrowd"]]
    assert people and all(len(a["keypoints"]) == 15 for a in people)
    assert _ap_of_ground_truth(path, K5) == pytest.approx(1.0)
    # the generic figure is mirror-symmetric: the "left" member sits on the image right
    kps = np.array([a["keypoints"] for a in people], dtype=float).reshape(-1, 5, 3)
    both = (kps[:, 1, 2] > 0) & (kps[:, 2, 2] > 0)
    assert np.mean(kps[both, 1, 0] > kps[both, 2, 0]) > 0.9


def test_cache_reused_and_regenerated(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    kwargs = {"train_images": 4, "val_images": 2, "size": SIZE, "seed": 0}
    paths = ensure_synthetic_splits(root, **kwargs)
    assert set(paths) == {"train", "val"} and all(p.is_file() for p in paths.values())
    stamp = paths["train"].stat().st_mtime_ns
    assert ensure_synthetic_splits(root, **kwargs) == paths
    assert paths["train"].stat().st_mtime_ns == stamp
    ensure_synthetic_splits(root, **kwargs, max_people=2)  # new parameters: regenerated
    assert paths["train"].stat().st_mtime_ns != stamp
    stamp = paths["train"].stat().st_mtime_ns
    next((root / "images" / "val").glob("*.jpg")).unlink()  # incomplete: regenerated
    ensure_synthetic_splits(root, **kwargs, max_people=2)
    assert paths["train"].stat().st_mtime_ns != stamp
    assert len(list((root / "images" / "val").glob("*.jpg"))) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["synth"], "temporary folders left behind"


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ensure_synthetic_splits(tmp_path, train_images=1, val_images=1, size=SIZE)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
