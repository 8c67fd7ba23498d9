"""``dekr-predict``: poses for images, folders and videos; COCO results JSON and overlays.

What lands in the output folder ``out``:

* one overlay per input: a PNG per image, an MP4 per video, at the input's path relative to the
  common folder of all inputs (one folder given: relative to that folder; one file given: its
  name), with the suffix replaced (``a/x.jpg`` → ``a/x.png``). Inputs that would share an
  overlay (``x.jpg`` and ``x.png`` in one folder) keep their whole name (``x.jpg.png``,
  ``x.png.png``); anything still equal gets ``-2``, ``-3``, ... in input order.
* ``predictions.json``: the COCO *results* list ``[{image_id, category_id, keypoints, score}]``
  that ``COCO.loadRes`` and ``COCOeval`` take. Image ids are those of ``annotations`` (matched
  by file name) when it is given, otherwise 1, 2, ... in input order (video frames: one id each).
* ``images.json``: ``{"predictions", "annotations", "images": [...], "skipped": [...]}``: per
  image (or video frame) its ``id``, ``file``, ``frame`` (videos only), ``width``, ``height``,
  ``poses`` (in predictions.json), ``people`` (at or above the score threshold: drawn) and
  ``overlay`` (relative to ``out``); per skipped input its ``file`` and ``error``.

Inputs are listed in the order given, each folder's files sorted; a file listed twice is
predicted once. Everything that can be checked without the network is checked before the
checkpoint is loaded: the inputs exist, the annotation file matches them, ``out`` is a writable
folder and no overlay would overwrite an input.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Union

import cv2
import numpy as np

from dekr.drawing import draw_poses
from dekr.errors import DataError, MissingFileError, OptionError, OutputError
from dekr.module import DekrModule, load_checkpoint

__all__ = [
    "predict_files",
    "collect_inputs",
    "plan_inputs",
    "PlannedInput",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
PREDICTIONS = "predictions.json"
SUMMARY = "images.json"


@dataclass(frozen=True)
class PlannedInput:
    """One input file and where its overlay goes.

    ``path``: the file as given or found; ``rel``: its path relative to the common folder of the
    inputs; ``overlay``: the overlay's path relative to the output folder.
    """

    path: Path
    rel: PurePosixPath
    overlay: PurePosixPath
    video: bool


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _listing(folder: Path, recursive: bool, exclude: Optional[Path]) -> list[Path]:
    """Images and videos of ``folder`` (sorted); with ``recursive`` those of its subfolders,
    leaving out anything inside ``exclude`` (the output folder)."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if _is_media(p) and p.is_file())
    if exclude is not None and recursive:
        files = [p for p in files if not _inside(p, exclude)]
    if not files:
        hint = ""
        if not recursive and any(p.is_dir() for p in folder.iterdir()):
            hint = " (its subfolders are searched with --recursive)"
        raise MissingFileError(f"no images or videos in folder {folder}{hint}")
    return files


def _overlay_names(items: list[tuple[PurePosixPath, bool]]) -> list[PurePosixPath]:
    """Unique overlay paths (compared case-insensitively) for (relative path, is video)."""

    def suffix(video: bool) -> str:
        return ".mp4" if video else ".png"

    first = [rel.with_suffix(suffix(video)) for rel, video in items]
    shared = Counter(str(name).lower() for name in first)
    names = [
        name if shared[str(name).lower()] == 1 else rel.with_name(rel.name + suffix(video))
        for name, (rel, video) in zip(first, items)
    ]
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 2
        while str(candidate).lower() in taken:
            candidate, n = name.with_name(f"{name.stem}-{n}{name.suffix}"), n + 1
        taken.add(str(candidate).lower())
        unique.append(candidate)
    return unique


def plan_inputs(
    inputs: Iterable[Union[str, Path]],
    *,
    recursive: bool = False,
    out: Optional[Union[str, Path]] = None,
) -> list[PlannedInput]:
    """The image and video files of ``inputs`` (files and folders) with unique overlay paths.

    Folders: their files sorted (with ``recursive`` also their subfolders', leaving out ``out``).
    Paths are taken relative to the common folder of the inputs (a folder input counts as its own
    folder, a file input as its parent).
    """
    exclude = Path(out).resolve() if out is not None else None
    found: list[Path] = []
    bases: list[str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += _listing(item, recursive, exclude)
            bases.append(os.path.abspath(item))
        elif item.is_file():
            if not _is_media(item):
                raise DataError(
                    f"{item}: unsupported file type {item.suffix!r}; expected an "
                    f"image ({', '.join(sorted(IMAGE_SUFFIXES))}) or a video "
                    f"({', '.join(sorted(VIDEO_SUFFIXES))})"
                )
            found.append(item)
            bases.append(os.path.dirname(os.path.abspath(item)))
        else:
            raise MissingFileError(f"input not found: {item}")
    if not found:
        raise OptionError("no inputs given")
    root = os.path.commonpath(bases)
    seen: set[str] = set()
    files: list[tuple[Path, PurePosixPath, bool]] = []
    for path in found:
        absolute = os.path.abspath(path)
        if absolute in seen:
            continue
        seen.add(absolute)
        rel = PurePosixPath(Path(os.path.relpath(absolute, root)).as_posix())
        files.append((path, rel, path.suffix.lower() in VIDEO_SUFFIXES))
    names = _overlay_names([(rel, video) for _, rel, video in files])
    return [
        PlannedInput(path, rel, overlay, video) for (path, rel, video), overlay in zip(files, names)
    ]


def collect_inputs(inputs: Iterable[Union[str, Path]], *, recursive: bool = False) -> list[Path]:
    """Image and video files from files and folders (folders: sorted; see :func:`plan_inputs`)."""
    return [item.path for item in plan_inputs(inputs, recursive=recursive)]


# ------------------------------------------------------------------ checks before any work
def _check_out(out: Path, planned: list[PlannedInput]) -> None:
    """``out`` is (or can be made) a writable folder and no overlay overwrites an input."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is an existing file, not a folder")
    sources = {item.path.resolve(): item.path for item in planned}
    for item in planned:
        target = (out / item.overlay).resolve()
        if target in sources:
            raise OutputError(
                f"the overlay of {item.path} would overwrite the input {sources[target]}: "
                "choose an output folder outside the inputs"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {out}: {err.strerror or err}") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise OutputError(f"output folder {out} is not writable: {err.strerror or err}") from None


def _annotation_images(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MissingFileError(f"annotation file not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON (truncated or malformed?): {err}") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not all(
        isinstance(im, dict) and "id" in im and "file_name" in im for im in images
    ):
        raise DataError(
            f"{path}: not a COCO annotation file (an 'images' list of objects with 'id' and "
            "'file_name' expected)"
        )
    return images


def _annotation_ids(path: Path, planned: list[PlannedInput]) -> list[int]:
    """The id of every input in the COCO file ``path``: the image whose ``file_name`` is the
    input's relative path, else the only image with the input's file name."""
    by_path: dict[str, int] = {}
    by_name: dict[str, list[int]] = defaultdict(list)
    for image in _annotation_images(path):
        name = PurePosixPath(str(image["file_name"]).replace("\\", "/"))
        by_path[str(name)] = int(image["id"])
        by_name[name.name].append(int(image["id"]))
    ids: list[int] = []
    missing: list[str] = []
    for item in planned:
        if item.video:
            raise OptionError(f"{item.path} is a video; --annotations matches images only")
        candidates = by_name.get(item.rel.name, [])
        if str(item.rel) in by_path:
            ids.append(by_path[str(item.rel)])
        elif len(candidates) == 1:
            ids.append(candidates[0])
        elif candidates:
            raise DataError(
                f"{item.path}: {len(candidates)} images of {path} are named "
                f"{item.rel.name!r} and none has the file_name {str(item.rel)!r}"
            )
        else:
            missing.append(str(item.path))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(
            f"{len(missing)} of {len(planned)} inputs are not images of {path} "
            f"(matched by file_name): {shown}"
        )
    owner: dict[int, Path] = {}
    for item, image_id in zip(planned, ids):
        if image_id in owner:
            raise DataError(
                f"{owner[image_id]} and {item.path} are both image id {image_id} of {path}"
            )
        owner[image_id] = item.path
    return ids


# ------------------------------------------------------------------------------- the work
def _read_image(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image {path} (corrupt or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _records(image_id: int, pred: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """COCO results of one image: ``image_id``, ``category_id``, ``keypoints``, ``score``."""
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "keypoints": [round(float(v), 2) for v in kp.reshape(-1)],
            "score": float(score),
        }
        for kp, score in zip(pred["keypoints"], pred["scores"])
    ]


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


class _Run:
    """Results, per-image summary and skipped inputs of one ``predict_files`` call."""

    def __init__(self, p: _Predictor, out: Path, strict: bool, ids: Optional[list[int]]) -> None:
        self.p, self.out, self.strict, self.ids = p, out, strict, ids
        self.results: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.pending: list[tuple[PlannedInput, np.ndarray, int]] = []
        self.next_id = 1

    def skip(self, item: PlannedInput, err: Exception) -> None:
        if self.strict:
            raise DataError(f"{err}; --strict stops at the first unreadable input") from None
        from tqdm import tqdm

        tqdm.write(f"warning: skipped: {err}", file=sys.stderr)
        self.skipped.append({"file": str(item.path), "error": str(err)})

    def take_id(self, index: int) -> int:
        if self.ids is not None:
            return self.ids[index]
        self.next_id += 1
        return self.next_id - 1

    def record(
        self,
        item: PlannedInput,
        image: np.ndarray,
        image_id: int,
        pred: dict[str, np.ndarray],
        frame: Optional[int] = None,
    ) -> None:
        self.results += _records(image_id, pred)
        entry: dict[str, Any] = {"id": image_id, "file": str(item.path)}
        if frame is not None:
            entry["frame"] = frame
        entry.update(
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            poses=len(pred["scores"]),
            people=int(np.sum(np.asarray(pred["scores"]) >= self.p.threshold)),
            overlay=str(item.overlay),
        )
        self.images.append(entry)

    def add_image(self, index: int, item: PlannedInput) -> None:
        try:
            image = _read_image(item.path)
        except DataError as err:
            self.skip(item, err)
            return
        self.pending.append((item, image, self.take_id(index)))
        if len(self.pending) == self.p.batch_size:
            self.flush()

    def flush(self) -> None:
        """One batched forward pass over the pending images; their overlays and records."""
        if not self.pending:
            return
        preds = self.p([image for _, image, _ in self.pending])
        for (item, image, image_id), pred in zip(self.pending, preds):
            target = self.out / item.overlay
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(target), self.p.overlay(image, pred)):
                raise OutputError(f"cannot write overlay {target}")
            self.record(item, image, image_id, pred)
        self.pending = []

    def add_video(self, item: PlannedInput) -> None:
        self.flush()  # ids stay in input order
        cap = cv2.VideoCapture(str(item.path))
        try:
            ok, frame = cap.read()
            if not ok:
                reason = f"cannot read video {item.path} (corrupt, empty or unsupported codec)"
                self.skip(item, DataError(reason))
                return
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            target = self.out / item.overlay
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.stem}.partial.mp4")
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OutputError(f"cannot write video overlay {tmp} (no mp4v encoder in OpenCV?)")
            try:
                index, batch = 0, []
                while ok:
                    batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    ok, frame = cap.read()
                    if len(batch) == self.p.batch_size or not ok:
                        for image, pred in zip(batch, self.p(batch)):
                            writer.write(self.p.overlay(image, pred))
                            self.record(item, image, self.take_id(-1), pred, frame=index)
                            index += 1
                        batch = []
            finally:
                writer.release()
            os.replace(tmp, target)
        finally:
            cap.release()


def _onnx_model(path: Path) -> Any:
    """The network of an exported ONNX file (without decoder) as a torch-like callable."""
    from dekr.export import ONNXPoseModel

    if not path.is_file():
        raise MissingFileError(f"ONNX file not found: {path}")
    try:
        model = ONNXPoseModel(path)
    except ValueError as err:
        if "poses" not in str(err):
            raise
        raise OptionError(
            f"{path} has the decoder in the graph (--with-decoder); dekr-predict --onnx needs "
            "an export without it (flip test, scales and pose NMS run in Python)"
        ) from None
    shape = model.session.get_inputs()[0].shape  # (B, 3, H, W); names where dynamic
    return _FixedSizeONNX(model, shape) if all(isinstance(d, int) for d in shape) else model


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
            raise OptionError(
                f"{self.model.path} was exported for a fixed {self.size[0]}x{self.size[1]} "
                f"input, this image needs {h}x{w}: export with --dynamic for dekr-predict "
                "(every test scale but 1 needs another size: --scales 1 runs the scale-1 pass "
                "alone)"
            )
        if images.shape[0] == self.batch or self.batch != 1:
            return self.model(images)
        outputs = [self.model(image[None]) for image in images]
        return tuple(torch.cat(maps) for maps in zip(*outputs))


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


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
    annotations: Optional[Union[str, Path]] = None,
    strict: bool = False,
    recursive: bool = False,
) -> Path:
    """Predict every input; write overlays, ``predictions.json`` (COCO results list) and
    ``images.json`` (per-image summary) into ``out`` (layout: module docstring). Returns the
    path of ``predictions.json``.

    Args:
        annotations: a COCO JSON whose images are the inputs: its image ids are used.
        strict: stop at the first unreadable input; by default it is skipped with a warning on
            stderr and a final count (none readable is an error either way).
        recursive: also the images and videos in the subfolders of folder inputs.

    Inputs, annotations and ``out`` are checked before the checkpoint is loaded. The old
    ``predictions.json`` and ``images.json`` are removed before the work starts and the new ones
    written last (through temporary files): a run that fails midway leaves none behind.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise OptionError(f"--batch-size must be at least 1, got {batch_size}")
    if scales is not None and (1.0 not in scales or min(scales) <= 0):
        shown = " ".join(map(str, scales))
        raise OptionError(f"--scales {shown}: expected scales > 0, one of them 1")
    out = Path(out)
    planned = plan_inputs(inputs, recursive=recursive, out=out)
    ids = _annotation_ids(Path(annotations), planned) if annotations is not None else None
    _check_out(out, planned)

    onnx_model = _onnx_model(Path(onnx)) if onnx is not None else None
    module = load_checkpoint(checkpoint)
    model: Any = module.model if onnx_model is None else onnx_model
    d = module.recipe.decode
    p = _Predictor(
        module,
        model,
        d.flip if flip is None else flip,
        list(d.scales) if scales is None else list(scales),
        batch_size,
        score_threshold,
    )
    for name in (PREDICTIONS, SUMMARY):
        (out / name).unlink(missing_ok=True)
    run = _Run(p, out, strict, ids)
    for index, item in enumerate(tqdm(planned, desc="predict", unit="file")):
        if item.video:
            run.add_video(item)
        else:
            run.add_image(index, item)
    run.flush()
    if not run.images:
        raise DataError(
            f"none of the {len(planned)} inputs could be read (first: {run.skipped[0]['error']})"
        )
    if run.skipped:
        print(
            f"skipped {len(run.skipped)} of {len(planned)} inputs that could not be read "
            "(listed in images.json; --strict stops at the first)",
            file=sys.stderr,
        )
    target = out / PREDICTIONS
    summary = {
        "predictions": PREDICTIONS,
        "annotations": None if annotations is None else str(annotations),
        "images": run.images,
        "skipped": run.skipped,
    }
    _write_json(out / SUMMARY, summary)
    _write_json(target, run.results)
    return target
