"""``dekr-predict``: poses for images, folders and videos; COCO-format JSON and overlays."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np

from dekr.drawing import draw_poses
from dekr.module import DekrModule, load_checkpoint

__all__ = ["predict_files", "collect_inputs", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def collect_inputs(inputs: list[Union[str, Path]]) -> list[Path]:
    """Image and video files from files and folders (folders: sorted, non-recursive)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
            )
            if not found:
                raise FileNotFoundError(f"no images or videos in folder {item}")
            files += found
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                raise ValueError(
                    f"{item}: unsupported file type {item.suffix!r}; expected an "
                    f"image ({sorted(IMAGE_SUFFIXES)}) or a video"
                )
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    return files


def _read_image(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path} (corrupt or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read()
        if not ok:
            raise ValueError(f"cannot read video {path} (corrupt, empty or unsupported codec)")
        while ok:
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            ok, frame = cap.read()
    finally:
        cap.release()


def _records(image_id: int, pred: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    out = []
    for kp, score in zip(pred["keypoints"], pred["scores"]):
        xs, ys = kp[:, 0], kp[:, 1]
        box = [float(xs.min()), float(ys.min()), float(np.ptp(xs)), float(np.ptp(ys))]
        out.append(
            {
                "image_id": image_id,
                "category_id": 1,
                "score": float(score),
                "bbox": box,
                "keypoints": [round(float(v), 2) for v in kp.reshape(-1)],
            }
        )
    return out


class _Predictor:
    def __init__(
        self,
        module: DekrModule,
        model: Any,
        flip: bool,
        scales: list[float],
        batch_size: int,
        threshold: float,
    ) -> None:
        self.module, self.model = module, model
        self.flip, self.scales = flip, scales
        self.batch_size, self.threshold = batch_size, threshold

    def __call__(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        from dekr.inference import predict_poses

        m = self.module
        return predict_poses(
            self.model,
            images,
            spec=m.spec,
            input_size=m.recipe.data.input_size,
            scales=self.scales,
            flip=self.flip,
            flip_shift=m.recipe.decode.flip_shift,
            decoder=m.decoder,
        )

    def overlay(self, image: np.ndarray, pred: dict[str, np.ndarray]) -> np.ndarray:
        drawn = draw_poses(
            image,
            pred["keypoints"],
            pred["scores"],
            self.module.spec,
            score_threshold=self.threshold,
        )
        return cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)


def _predict_video(p: _Predictor, path: Path, out: Path, first_id: int, doc: dict[str, Any]) -> int:
    target = out / f"{path.stem}.mp4"
    tmp = target.with_suffix(".partial.mp4")
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    writer, image_id, batch = None, first_id, []
    try:
        for frame in [*_video_frames(path), None]:
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) == p.batch_size):
                for image, pred in zip(batch, p(batch)):
                    if writer is None:
                        h, w = image.shape[:2]
                        writer = cv2.VideoWriter(
                            str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
                        )
                    writer.write(p.overlay(image, pred))
                    doc["images"].append(
                        {
                            "id": image_id,
                            "file_name": f"{path.name}#{image_id - first_id}",
                            "width": image.shape[1],
                            "height": image.shape[0],
                        }
                    )
                    doc["annotations"] += _records(image_id, pred)
                    image_id += 1
                batch = []
    finally:
        if writer is not None:
            writer.release()
    os.replace(tmp, target)
    return image_id


class _FixedSizeONNX:
    """An ONNX network exported with fixed sizes: batches run image by image when the graph's
    batch is 1; another image size is a clear error."""

    def __init__(self, model: Any, shape: list[Any]) -> None:
        self.model, self.batch, self.size = model, shape[0], (shape[2], shape[3])

    def eval(self) -> _FixedSizeONNX:
        return self

    def __call__(self, images: Any) -> Any:
        import torch

        h, w = images.shape[-2:]
        if (h, w) != self.size:
            raise ValueError(
                f"{self.model.path} was exported for a fixed {self.size[0]}x{self.size[1]} "
                f"input, this image needs {h}x{w}: export with --dynamic for dekr-predict"
            )
        if images.shape[0] == self.batch or self.batch != 1:
            return self.model(images)
        outputs = [self.model(image[None]) for image in images]
        return tuple(torch.cat(maps) for maps in zip(*outputs))


def _onnx_model(path: Path) -> Any:
    """The network of an exported ONNX file (without decoder) as a torch-like callable."""
    from dekr.export import ONNXPoseModel

    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = ONNXPoseModel(path)
    except ValueError as err:
        if "poses" not in str(err):
            raise
        raise ValueError(
            f"{path} has the decoder in the graph (--with-decoder); dekr-predict --onnx needs "
            "an export without it (flip test, scales and pose NMS run in Python)"
        ) from None
    shape = model.session.get_inputs()[0].shape  # (B, 3, H, W); names where dynamic
    return _FixedSizeONNX(model, shape) if all(isinstance(d, int) for d in shape) else model


def _predict_images(
    p: _Predictor, paths: list[Path], out: Path, first_id: int, doc: dict[str, Any]
) -> int:
    """One batched forward pass over ``paths``; overlays and records; returns the next id."""
    images = [_read_image(path) for path in paths]
    for offset, (path, image, pred) in enumerate(zip(paths, images, p(images) if images else [])):
        cv2.imwrite(str(out / f"{path.stem}.png"), p.overlay(image, pred))
        image_id = first_id + offset
        doc["images"].append(
            {
                "id": image_id,
                "file_name": path.name,
                "width": image.shape[1],
                "height": image.shape[0],
            }
        )
        doc["annotations"] += _records(image_id, pred)
    return first_id + len(paths)


def predict_files(
    checkpoint: Union[str, Path],
    inputs: list[Union[str, Path]],
    out: Union[str, Path],
    *,
    flip: Optional[bool] = None,
    scales: Optional[list[float]] = None,
    batch_size: int = 4,
    score_threshold: float = 0.05,
    onnx: Optional[Union[str, Path]] = None,
) -> Path:
    """Predict every input; write overlays (PNG per image, MP4 per video) and
    ``predictions.json`` (COCO format) into ``out``. Returns the JSON path.

    The JSON is written last, through a temporary file, so a run that fails midway never leaves
    a complete-looking result behind.
    """
    from tqdm import tqdm

    files = collect_inputs(inputs)
    module = load_checkpoint(checkpoint)
    model: Any = module.model
    if onnx is not None:
        model = _onnx_model(Path(onnx))
    d = module.recipe.decode
    p = _Predictor(
        module,
        model,
        d.flip if flip is None else flip,
        list(d.scales) if scales is None else list(scales),
        batch_size,
        score_threshold,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [
            {
                "id": 1,
                "name": "person",
                "keypoints": list(module.spec.names),
                "skeleton": [[a + 1, b + 1] for a, b in module.spec.limbs],
            }
        ],
    }
    image_id, pending = 1, []
    for path in tqdm([*files, None], desc="predict", unit="file", total=len(files)):
        if path is not None and path.suffix.lower() not in VIDEO_SUFFIXES:
            pending.append(path)
            if len(pending) < batch_size:
                continue
        image_id = _predict_images(p, pending, out, image_id, doc)  # a full batch, or the rest
        pending = []
        if path is not None and path.suffix.lower() in VIDEO_SUFFIXES:
            image_id = _predict_video(p, path, out, image_id, doc)
    for i, ann in enumerate(doc["annotations"], start=1):
        ann["id"] = i
    target = out / "predictions.json"
    tmp = target.with_suffix(".json.partial")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, target)
    return target
