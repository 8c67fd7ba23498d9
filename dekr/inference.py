"""Test-time pipeline: eval resize, flip test, multi-scale forward passes, inverse transform.

``predict_poses`` runs a model callable ``model(images (B, 3, H, W)) -> (heatmaps, offsets)`` on a
list of RGB images of any sizes, batched by zero padding (every image keeps its true size, so the
padded area never produces detections), and returns poses in original image pixels.

Resize (official ``get_multi_scale_size``, DEKR_REFERENCE §6.2): the short side becomes
``input_size · s``, the long side ``ceil64(input_size / short · long) · s``; the image is warped to
that input size ``(h', w')`` by the similarity ``x' = k (x − c) + (w'/2, h'/2)`` around the point
``c = (int(w/2 + 0.5), int(h/2 + 0.5))`` with ``k`` = resized short side / short side. Decoded
poses (scale-1 input pixels) go back through the inverse of the scale-1 transform.

Flip test (§6.3): the second pass sees the mirrored image shifted left by ``flip_shift`` input
pixels (the last ``flip_shift`` columns keep the unshifted mirror, as the official code does).
Input column ``x'`` of that image shows original column ``W − 1 − flip_shift − x'``, so its output
pixel ``u'`` (input ``stride · u'``) lies at original output coordinate ``c − u'`` with
``c = (W − 1 − flip_shift) / stride``. Poses of the flipped pass are decoded per pixel, joints
permuted by ``spec.flip_index`` and mirrored as ``x ← c − x`` (exact for any shift); the heatmaps
(channels permuted by ``spec.flip_index_with_center``) and the pose map are mirrored back about
``c``. With ``flip_shift = stride − 1`` (3, official checkpoints) ``c`` is an integer and the maps
are mirrored exactly, as officially. Other shifts need a sub-pixel resample: heatmaps are
linearly interpolated, the pose map takes the nearest pixel. The default 0 is a plain mirror.
Only the heatmaps are mirrored in full: the flipped pass's pose map goes to the decoder as it is
(``ScaleMaps.flip_offsets``), which averages the poses at its centre candidates alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from dekr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dekr.data.types import Size
from dekr.decoder import DEKRDecoder, ScaleMaps
from dekr.errors import OptionError
from dekr.keypoints import KeypointSpec

__all__ = ["EvalTransform", "eval_transform", "resize_image", "predict_poses", "forward_scale"]


Model = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class EvalTransform:
    """Similarity ``x' = zoom · (x − center) + (w/2, h/2)`` from an original image to the input.

    Attributes:
        center: (cx, cy), a point in original pixels. zoom: input px per original px.
        input_hw: :class:`~dekr.data.types.Size` ``(h, w)`` of the resized input (rows first,
            as every size in the package).
    """

    center: tuple[float, float]
    zoom: float
    input_hw: Size

    def _half(self) -> tuple[float, float]:
        """The input centre as a point (x, y)."""
        return self.input_hw.w / 2, self.input_hw.h / 2

    def matrix(self) -> np.ndarray:
        """2×3 affine matrix for ``cv2.warpAffine``."""
        (cx, cy), k, (hx, hy) = self.center, self.zoom, self._half()
        return np.array([[k, 0.0, hx - k * cx], [0.0, k, hy - k * cy]], dtype=np.float64)

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Original → input pixels for points (..., 2)."""
        c, half = np.asarray(self.center), np.asarray(self._half())
        return (np.asarray(points, dtype=np.float64) - c) * self.zoom + half

    def to_original(self, points: Union[np.ndarray, Tensor]) -> Union[np.ndarray, Tensor]:
        """Input → original pixels for points (..., 2); numpy or torch."""
        c, half = self.center, self._half()
        if isinstance(points, Tensor):
            shift = points.new_tensor(half)
            return (points - shift) / self.zoom + points.new_tensor(c)
        return (np.asarray(points, dtype=np.float64) - half) / self.zoom + np.asarray(c)


def eval_transform(height: int, width: int, input_size: int, scale: float = 1.0) -> EvalTransform:
    """Official test resize of an (height, width) image at test scale ``scale``."""
    base = int((input_size + 63) // 64 * 64)
    short, long = min(height, width), max(height, width)
    short_r = int(base * scale)
    long_r = int(int((base / short * long + 63) // 64 * 64) * scale)
    input_hw = Size(long_r, short_r) if width < height else Size(short_r, long_r)
    center = (float(int(width / 2.0 + 0.5)), float(int(height / 2.0 + 0.5)))
    return EvalTransform(center=center, zoom=short_r / short, input_hw=input_hw)


def resize_image(image: np.ndarray, transform: EvalTransform) -> np.ndarray:
    """Warp an (H, W, 3) image to ``transform.input_hw`` (bilinear, black border)."""
    h, w = transform.input_hw
    # cv2 takes its destination size as (width, height)
    return cv2.warpAffine(image, transform.matrix(), (w, h), flags=cv2.INTER_LINEAR)


def _batch(images: Sequence[np.ndarray], device: torch.device) -> tuple[Tensor, Tensor]:
    """Normalised, zero-padded batch (B, 3, H, W) and true sizes (B, 2) as (h, w)."""
    hp = max(im.shape[0] for im in images)
    wp = max(im.shape[1] for im in images)
    batch = torch.zeros(len(images), 3, hp, wp, device=device)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    for i, im in enumerate(images):
        t = torch.from_numpy(np.ascontiguousarray(im)).to(device).permute(2, 0, 1).float() / 255
        batch[i, :, : im.shape[0], : im.shape[1]] = (t - mean) / std
    sizes = torch.tensor([im.shape[:2] for im in images], device=device)
    return batch, sizes


def _flip_inputs(batch: Tensor, widths: Tensor, shift: int, *, inplace: bool = False) -> Tensor:
    """Mirror every image within its true width, shifted left by ``shift`` px (official).

    Column ``x`` of image b reads ``w_b − 1 − shift − x`` for ``x < w_b − shift``, ``w_b − 1 − x``
    for the last ``shift`` columns, and itself in the padding. Slices and per-image flips only:
    a gather along the width costs several times more on CPU, and with ``inplace`` the batch is
    overwritten instead of allocating another one (fresh large buffers page-fault on first use).
    """
    out = batch if inplace else torch.empty_like(batch)
    for b, w in enumerate(widths.tolist()):
        cut = max(w - shift, 0)
        out[b, ..., cut:w] = batch[b, ..., : w - cut].flip(-1)  # before its source is overwritten
        out[b, ..., :cut] = batch[b, ..., :cut].flip(-1)
        if not inplace:
            out[b, ..., w:] = batch[b, ..., w:]
    return out


def _reverse_into(out: Tensor, src: Tensor, center: int) -> None:
    """``out[..., u] = src[..., clamp(center − u, 0, n − 1)]`` for an integer centre, n = src width.

    out (..., w_out) and src (..., n) share their leading shape; written with three slice copies.
    """
    w_out, n = out.shape[-1], src.shape[-1]
    left = min(max(center - (n - 1), 0), w_out)  # [0, left) read the last source column
    right = min(max(center + 1, left), w_out)  # [right, w_out) read the first one
    if left > 0:
        out[..., :left] = src[..., n - 1 :]
    if right > left:
        out[..., left:right] = src[..., center - right + 1 : center - left + 1].flip(-1)
    if right < w_out:
        out[..., right:] = src[..., :1]


def _mirror_maps(maps: Tensor, centers: Tensor, widths: Tensor) -> Tensor:
    """``out[..., u] = maps[..., c − u]`` along the last axis per image, linearly interpolated.

    Source positions are clamped to the image's true width. maps: (B, ..., w) with the width
    last; centers (B,) float; widths (B,) true map widths. ``c − u`` has the same fraction for
    every u, so each image is one reversed slice, or two blended ones for a fractional ``c``.
    """
    out = torch.empty_like(maps)
    for b, (c, w) in enumerate(zip(centers.tolist(), widths.tolist())):
        src = maps[b, ..., :w]
        lo = math.floor(c)
        _reverse_into(out[b], src, lo)
        if c != lo:
            upper = torch.empty_like(out[b])
            _reverse_into(upper, src, lo + 1)
            out[b].mul_(1 - (c - lo)).add_(upper, alpha=c - lo)
    return out


def forward_scale(
    model: Model,
    batch: Tensor,
    sizes: Tensor,
    *,
    spec: KeypointSpec,
    scale: float,
    flip: bool,
    flip_shift: int = 3,
    stride: int = 4,
    reuse_input: bool = False,
) -> ScaleMaps:
    """Network pass(es) at one scale: heatmaps and offsets, flip-averaged (poses averaged).

    Args:
        batch: (B, 3, H, W) normalised, zero-padded images; sizes: (B, 2) their true (h, w).
        reuse_input: with ``flip``, overwrite ``batch`` by its mirror for the second pass
            instead of allocating a flipped copy (the caller must not use ``batch`` afterwards).
    """
    heatmaps, offsets = model(batch)
    heatmaps, offsets = heatmaps.float(), offsets.float()
    map_sizes = (sizes + stride - 1) // stride
    if flip:
        heat_f, off_f = model(_flip_inputs(batch, sizes[:, 1], flip_shift, inplace=reuse_input))
        c = (sizes[:, 1].to(heatmaps.dtype) - 1 - flip_shift) / stride
        perm = torch.tensor(spec.flip_index_with_center, device=heatmaps.device)
        heat_m = _mirror_maps(heat_f.float(), c, map_sizes[:, 1])
        # channel k averages with the mirrored channel perm[k] (the permutation is an involution)
        heatmaps = torch.index_add(heatmaps, 1, perm, heat_m).mul_(0.5)
        # the pose maps are averaged by the decoder at its candidate pixels only
        return ScaleMaps(heatmaps, offsets, map_sizes, scale, flip_offsets=off_f.float(),
                         flip_centers=c)  # fmt: skip
    return ScaleMaps(heatmaps=heatmaps, offsets=offsets, sizes=map_sizes, scale=scale)


@torch.no_grad()
def predict_poses(
    model: Model,
    images: Sequence[np.ndarray],
    *,
    spec: KeypointSpec,
    input_size: int = 512,
    scales: Sequence[float] = (1.0,),
    flip: bool = True,
    flip_shift: int = 3,
    decoder: Optional[DEKRDecoder] = None,
    device: Union[str, torch.device, None] = None,
    stride: int = 4,
) -> list[dict[str, np.ndarray]]:
    """Poses of every image (RGB uint8 (H, W, 3)) in original image pixels.

    Args:
        model: callable returning heatmaps (B, K+1, H/4, W/4) and offsets (B, 2K, H/4, W/4).
        scales: test scales (multi-scale: (2, 1, 0.5)); must contain 1.
        flip_shift: input-pixel shift of the flipped pass, see the module docstring.
        decoder: defaults to ``DEKRDecoder(spec)``; its ``rescorer`` is applied at the end.

    Returns:
        one dict per image: ``keypoints`` (N, K, 3) float32 (x, y, score), ``scores`` (N,).
    """
    if 1.0 not in scales:
        raise OptionError(f"scales {tuple(scales)} must contain 1.0 (the reference scale)")
    decoder = decoder or DEKRDecoder(spec, stride=stride)
    device = torch.device(device) if device is not None else torch.device("cpu")
    base = [eval_transform(im.shape[0], im.shape[1], input_size, 1.0) for im in images]
    maps = []
    for s in sorted(scales, reverse=True):
        resized = [
            resize_image(im, eval_transform(im.shape[0], im.shape[1], input_size, s))
            for im in images
        ]
        batch, sizes = _batch(resized, device)
        maps.append(
            forward_scale(model, batch, sizes, spec=spec, scale=s, flip=flip,
                          flip_shift=flip_shift, stride=stride, reuse_input=True)
        )  # fmt: skip
    results = []
    for det, t in zip(decoder.decode(maps), base):
        kpts = det["keypoints"].double().cpu()
        kpts[..., :2] = t.to_original(kpts[..., :2])
        scores = det["scores"].double().cpu()
        if decoder.rescorer is not None and len(scores):
            scores = decoder.rescorer(kpts, scores)
        results.append({"keypoints": kpts.float().numpy(), "scores": scores.float().numpy()})
    return results
