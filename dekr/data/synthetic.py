"""Synthetic multi-person keypoint dataset in COCO format: the package's embedded default.

Every image holds 0..``max_people`` articulated figures (see :mod:`dekr.data.figures`) on a
textured background, drawn smallest first so nearer (larger) figures occlude farther ones,
sometimes a crowd patch of tiny unlabelled figures and some occluding shapes. Layout::

    root/images/<split>/000001.jpg ...
    root/annotations/<split>.json

Annotations follow COCO keypoints:

* ``keypoints``: ``[x, y, v] * K`` in image pixels (pixel centres at integer coordinates).
  ``v=2`` visible; ``v=1`` covered by a later-drawn figure or occluder; ``v=0`` (with x=y=0)
  outside the image or randomly left unlabelled (``unlabelled_prob``).
* ``bbox`` and ``area``: COCO's area is the segmentation area; stick figures have no meaningful
  mask, so the box is the extent of all the figure's keypoints, padded by the limb thickness (5 %
  of the figure height) and clipped to the image, and ``area`` is its ``w * h``. This gives OKS
  scales like COCO's (half that area made a small net's AP drop from 0.65 to 0.51).
* ``segmentation``: that box as one polygon for people; for crowd regions (``iscrowd=1``, no
  keypoints) an RLE mask (:func:`pycocotools.mask.encode`) of the crowd's pixels.

Generation is deterministic: image ``i`` of split ``s`` uses ``np.random.default_rng([seed,
crc32(s), i])``, so equal parameters give byte-identical JSON and identical pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dekr.data.figures import (
    FigureMaker,
    add_pixel_noise,
    draw_background,
    draw_crowd,
    draw_figure,
    draw_occluders,
)
from dekr.data.types import Size, as_size
from dekr.errors import OptionError, OutputDirError
from dekr.keypoints import COCO_KEYPOINTS, KeypointSpec

__all__ = [
    "SceneOptions",
    "ensure_synthetic_splits",
    "generate_synthetic_dataset",
    "render_scene",
]

_CROWD_ID, _OCCLUDER_ID = 254, 255  # label-map values; people are 1..max_people


@dataclass(frozen=True)
class SceneOptions:
    """Difficulty knobs of the synthetic scenes.

    Args:
        max_people: people per image are uniform in ``0..max_people`` (so some images are empty).
        min_height: smallest figure height, fraction of the image height.
        max_height: largest figure height, fraction of the image height (log-uniform between).
        occluder_prob: probability that an image gets 1-2 occluding shapes drawn over the people.
        crowd_prob: probability that an image gets a crowd patch (tiny figures, ``iscrowd=1``).
        unlabelled_prob: probability that an in-image keypoint is left unlabelled (``v=0``).
        max_rotation: largest in-plane rotation of a figure, degrees.
        jpeg_quality: JPEG quality of the written images.
    """

    max_people: int = 6
    min_height: float = 0.25
    max_height: float = 0.85
    occluder_prob: float = 0.3
    crowd_prob: float = 0.1
    unlabelled_prob: float = 0.02
    max_rotation: float = 12.0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not 0 <= self.max_people <= 250:
            raise OptionError(f"max_people must be in 0..250, got {self.max_people}")
        if not 0 < self.min_height <= self.max_height:
            raise OptionError(
                f"need 0 < min_height <= max_height, got {self.min_height}, {self.max_height}"
            )


def _visibility(rng: np.random.Generator, keypoints: np.ndarray, labels: np.ndarray,
                own_id: int, unlabelled_prob: float) -> np.ndarray:  # fmt: skip
    """``(K, 3)`` COCO keypoints: 2 on the figure's own pixels, 1 when covered, 0 outside."""
    h, w = labels.shape
    inside = (
        (keypoints[:, 0] >= 0) & (keypoints[:, 0] <= w - 1)
        & (keypoints[:, 1] >= 0) & (keypoints[:, 1] <= h - 1)
    )  # fmt: skip
    cols = np.clip(np.round(keypoints[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.round(keypoints[:, 1]).astype(int), 0, h - 1)
    vis = np.where(labels[rows, cols] == own_id, 2, 1)
    vis = np.where(inside & (rng.random(len(keypoints)) >= unlabelled_prob), vis, 0)
    out = np.concatenate([np.round(keypoints, 2), vis[:, None]], axis=1)
    out[vis == 0, :2] = 0.0
    return out


def _person_annotation(keypoints: np.ndarray, figure_keypoints: np.ndarray, pad: float,
                       size: Size) -> dict[str, Any]:  # fmt: skip
    """COCO fields of one person; the box is the padded keypoint extent clipped to the image."""
    h, w = size
    lo = np.clip(figure_keypoints.min(0) - pad, 0, [w, h])
    hi = np.clip(figure_keypoints.max(0) + pad, 0, [w, h])
    x0, y0, x1, y1 = (round(float(v), 2) for v in (*lo, *hi))
    return {
        "keypoints": [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(keypoints.ravel())],
        "num_keypoints": int((keypoints[:, 2] > 0).sum()),
        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
        "area": round((x1 - x0) * (y1 - y0), 2),
        "iscrowd": 0,
        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
    }


def _crowd_annotation(labels: np.ndarray, num_keypoints: int) -> dict[str, Any] | None:
    """COCO crowd annotation (RLE) of the still-visible crowd pixels, slightly dilated."""
    crowd = cv2.dilate((labels == _CROWD_ID).astype(np.uint8), np.ones((5, 5), np.uint8))
    if not crowd.any():
        return None
    rle = mask_utils.encode(np.asfortranarray(crowd))
    return {
        "keypoints": [0] * (3 * num_keypoints),
        "num_keypoints": 0,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
        "iscrowd": 1,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
    }


def render_scene(rng: np.random.Generator, maker: FigureMaker, *, size: int | tuple[int, int],
                 options: SceneOptions) -> tuple[np.ndarray, list[dict[str, Any]]]:  # fmt: skip
    """One image ``uint8 (H, W, 3)`` RGB of ``size`` ``(h, w)`` (or an int: a square) and its
    annotations (COCO fields, without ids)."""
    size = as_size(size)
    h, w = size
    image = draw_background(rng, height=h, width=w)
    labels = np.zeros((h, w), np.uint8)
    if rng.random() < options.crowd_prob:
        draw_crowd(rng, image, labels, maker, _CROWD_ID)
    n = int(rng.integers(0, options.max_people + 1))
    heights = np.sort(
        np.exp(rng.uniform(np.log(options.min_height), np.log(options.max_height), n))
    )
    figures = []
    for i, rel in enumerate(heights):
        centre = rng.uniform(0.05, 0.95, 2) * np.array([w, h])
        fig = maker.make(rng, centre, rel * h)
        draw_figure(image, fig)
        draw_figure(labels, fig, i + 1)
        figures.append(fig)
    if rng.random() < options.occluder_prob:
        draw_occluders(rng, image, labels, _OCCLUDER_ID)
    add_pixel_noise(rng, image)
    anns = []
    for i, fig in enumerate(figures):
        kps = _visibility(rng, fig.keypoints, labels, i + 1, options.unlabelled_prob)
        anns.append(_person_annotation(kps, fig.keypoints, fig.pad, size))
    crowd = _crowd_annotation(labels, maker.spec.num_keypoints)
    if crowd is not None:
        anns.append(crowd)
    return image, anns


def _categories(spec: KeypointSpec) -> list[dict[str, Any]]:
    return [{
        "id": 1, "name": "person", "supercategory": "person",
        "keypoints": list(spec.names),
        "skeleton": [[a + 1, b + 1] for a, b in spec.limbs],  # COCO skeletons are 1-based
    }]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _SceneJob:
    """Render image ``image_id`` of a split and write its JPEG; returns (file name, people)."""

    maker: FigureMaker
    options: SceneOptions
    size: Size
    image_dir: Path
    stream: tuple[int, int]  # (seed, split key): with the image id, the image's random stream

    def __call__(self, image_id: int) -> tuple[str, list[dict[str, Any]]]:
        rng = np.random.default_rng([*self.stream, image_id])
        image, anns = render_scene(rng, self.maker, size=self.size, options=self.options)
        file_name = f"{image_id:06d}.jpg"
        params = [cv2.IMWRITE_JPEG_QUALITY, self.options.jpeg_quality]
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(self.image_dir / file_name), bgr, params)
        return file_name, anns


def generate_synthetic_dataset(
    root: str | Path,
    *,
    spec: KeypointSpec = COCO_KEYPOINTS,
    num_images: int = 1000,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    split_name: str = "train",
    options: SceneOptions | None = None,
    progress: Callable[[int], Any] | None = None,
    workers: Optional[int] = None,
    **knobs: Any,
) -> Path:
    """Write one split: ``root/images/<split_name>/*.jpg`` and ``root/annotations/<split>.json``.

    Args:
        root: dataset folder (created if missing).
        spec: keypoint set of the figures and annotations.
        num_images: number of images.
        size: image size ``(h, w)`` in pixels (rows first, as every size in the package), or
            one int for a square. (Named ``image_size`` and ``(W, H)`` before; that name is an
            error now, so no old call silently swaps the sides.)
        seed: random seed; mixed with ``split_name``, so splits with one seed differ.
        split_name: split folder and JSON name.
        options: scene difficulty knobs (default :class:`SceneOptions`).
        progress: called with 1 after each image (e.g. a tqdm bar's ``update``).
        workers: processes that render (None: one per CPU core). Every image has its own random
            stream, so the files are the same for any count.
        **knobs: overrides of single :class:`SceneOptions` fields, e.g. ``max_people=8``.

    Returns:
        The path of the annotation JSON.
    """
    _reject_old_size(knobs)
    options = dataclasses.replace(options or SceneOptions(), **knobs)
    size = as_size(size)
    root = Path(root)
    image_dir = root / "images" / split_name
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    job = _SceneJob(
        FigureMaker(spec, max_rotation=options.max_rotation),
        options, size, image_dir, (seed, zlib.crc32(split_name.encode())),
    )  # fmt: skip
    images, annotations = [], []
    ids = range(1, num_images + 1)
    workers = max(1, min(int(workers or os.cpu_count() or 1), num_images))
    with contextlib.ExitStack() as stack:
        if workers > 1:  # each image has its own random stream: the same files for any count
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            pool = stack.enter_context(context.Pool(workers))
            rendered = pool.imap(job, ids, chunksize=8)
        else:
            rendered = map(job, ids)
        for image_id, (file_name, anns) in zip(ids, rendered):
            images.append({"id": image_id, "file_name": file_name, "width": size.w,
                           "height": size.h})  # fmt: skip
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": 1, **ann})  # fmt: skip
            if progress is not None:
                progress(1)
    data = {
        "info": {
            "description": "dekr synthetic keypoints",
            "keypoint_spec": spec.name,
            "seed": seed,
            "split": split_name,
        },  # fmt: skip
        "images": images,
        "annotations": annotations,
        "categories": _categories(spec),
    }
    path = root / "annotations" / f"{split_name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(path)
    return path


_MANIFEST = "manifest.json"
_VERSION = 1  # bump when the generator's output changes, so caches are regenerated


def _reject_old_size(knobs: dict[str, Any]) -> None:
    """TypeError for the old ``image_size=(W, H)`` argument (now ``size=(h, w)``)."""
    if "image_size" in knobs:
        raise TypeError(
            f"image_size={knobs['image_size']!r}: the argument is now size=(h, w) (rows first; "
            "it was image_size=(W, H)), or size=n for an n x n square"
        )


def _params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _cache_valid(root: Path, digest: str, counts: dict[str, int]) -> bool:
    """True when ``root`` holds a complete dataset generated with parameters ``digest``."""
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("hash") != digest:
        return False
    for split, n in counts.items():
        image_dir = root / "images" / split
        if not (root / "annotations" / f"{split}.json").is_file() or not image_dir.is_dir():
            return False
        if sum(1 for e in os.scandir(image_dir) if e.name.endswith(".jpg")) != n:
            return False
    return True


def _swap_in(tmp: Path, root: Path) -> None:
    """Replace ``root`` (absent, empty or an older synthetic dataset) by ``tmp``."""
    if root.exists():
        if any(root.iterdir()) and not (root / _MANIFEST).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputDirError(
                f"{root} exists and is not a synthetic dataset folder (no {_MANIFEST}); "
                "choose an empty or new folder"
            )
        old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
        root.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(root)


def ensure_synthetic_splits(
    root: str | Path,
    *,
    spec: KeypointSpec = COCO_KEYPOINTS,
    train_images: int = 1000,
    val_images: int = 200,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    options: SceneOptions | None = None,
    progress: bool = False,
    workers: Optional[int] = None,
    **knobs: Any,
) -> dict[str, Path]:
    """Train and val splits under ``root``, generated only when missing or stale.

    The parameters are hashed into ``root/manifest.json``; the splits are regenerated when the
    hash differs or a file is missing. Generation happens in a temporary sibling folder renamed
    into place at the end, so an interrupted run never looks complete.

    Args:
        root: dataset folder; must be new, empty or an earlier synthetic dataset.
        spec, size, seed, options, knobs: as in :func:`generate_synthetic_dataset` (``size`` is
            ``(h, w)`` or an int).
        train_images: images in the ``train`` split.
        val_images: images in the ``val`` split.
        progress: say on stdout that the data is being generated, with a progress bar.
        workers: rendering processes (None: one per CPU core); not part of the hash, as the
            files do not depend on it.

    Returns:
        ``{"train": json_path, "val": json_path}``.
    """
    _reject_old_size(knobs)
    options = dataclasses.replace(options or SceneOptions(), **knobs)
    size = as_size(size)
    root = Path(root)
    counts = {"train": int(train_images), "val": int(val_images)}
    params = {
        "version": _VERSION, "spec": spec.to_dict(), "counts": counts, "seed": int(seed),
        "size_hw": list(size), "options": dataclasses.asdict(options),
    }  # fmt: skip
    digest = _params_hash(params)
    paths = {s: root / "annotations" / f"{s}.json" for s in counts}
    if _cache_valid(root, digest, counts):
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{uuid.uuid4().hex[:8]}")
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(counts.values())
        print(f"generating the synthetic dataset in {root}: {counts['train']} train + "
              f"{counts['val']} val images of {size.h}x{size.w} (once; later runs reuse it)",
              flush=True)  # fmt: skip
        bar = tqdm(total=total, unit="image", file=sys.stdout, dynamic_ncols=True)
    try:
        for split, n in counts.items():
            generate_synthetic_dataset(tmp, spec=spec, num_images=n, size=size, seed=seed,
                                       split_name=split, options=options, workers=workers,
                                       progress=bar.update if bar else None)  # fmt: skip
        manifest = {"hash": digest, "params": params}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _swap_in(tmp, root)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
