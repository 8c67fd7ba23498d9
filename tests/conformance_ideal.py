"""Ideal DEKR network outputs of the post-processing conformance scene (tests/data/conformance).

The golden file ``postprocess.json`` describes a scene (keypoints in original pixels, keypoint
and centre amplitudes, optional explicit centres) and, per run and test scale, the affine map
from the original image to the network input. The official code was fed network outputs built
from that scene by fixed rules; this module rebuilds them so that dekr can be fed the same maps.
The JSON stores checksums of the arrays built then (``geometry[*].built_checksums``); the tests
check every array built here against them before using it.

Rules (stride 4: output pixel (u, v) is input pixel (4u, 4v)):

* a point p of the original image lies at output coordinate ``(A[:, :2] p + A[:, 2]) / 4``;
* keypoint channel j = pixel-wise maximum over people of ``amp · exp(−d² / (2·2²))`` around that
  person's joint j, on the whole grid (no window); the centre channel (last) uses σ = 4 around
  the person's centre (the mean of its keypoints unless the scene gives one);
* offsets: every pixel belongs to the person with the nearest centre (ties: lowest index), and
  holds ``pixel − joint`` of that person (x, y interleaved per joint);
* flipped view: the scene moved by ``flip_perturb_orig_px`` original pixels, all amplitudes times
  ``flip_amp``, joints permuted by the COCO flip index and x mirrored as ``w_out − 1 − x``
  (the output grid of the mirrored input shifted left by 3 input pixels).

Everything is computed in float64 and returned as float32.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

KEYPOINT_SIGMA = 2.0
CENTER_SIGMA = 4.0
STRIDE = 4.0


def to_output(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Original-image points (..., 2) → output-pixel coordinates of one test scale."""
    a = np.asarray(affine, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) @ a[:, :2].T + a[:, 2]) / STRIDE


def render(
    joints: np.ndarray,
    amp_joint: np.ndarray,
    amp_center: np.ndarray,
    centers: np.ndarray,
    hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (K+1, h, w) and offsets (2K, h, w) of people with joints (P, K, 2) (output px).

    amp_joint (P, K), amp_center (P,), centers (P, 2) output px.
    """
    h, w = hw
    p, k, _ = joints.shape
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)

    def gaussians(points: np.ndarray, sigma: float) -> np.ndarray:
        """exp(−d²/2σ²) of every point (..., 2) on the grid: (..., h, w), separably."""
        gx = np.exp(-((xs - points[..., 0, None]) ** 2) / (2 * sigma**2))
        gy = np.exp(-((ys - points[..., 1, None]) ** 2) / (2 * sigma**2))
        return gy[..., :, None] * gx[..., None, :]

    heat = np.empty((k + 1, h, w))
    heat[:k] = (amp_joint[..., None, None] * gaussians(joints, KEYPOINT_SIGMA)).max(axis=0)
    heat[k] = (amp_center[:, None, None] * gaussians(centers, CENTER_SIGMA)).max(axis=0)
    d2 = (xs[None, None, :] - centers[:, 0, None, None]) ** 2 + (
        ys[None, :, None] - centers[:, 1, None, None]
    ) ** 2
    owner = d2.argmin(axis=0)  # (h, w); argmin keeps the first (lowest) index on ties
    own = joints[owner]  # (h, w, K, 2)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (h, w, 2) as (x, y)
    off = grid[:, :, None, :] - own  # (h, w, K, 2)
    off = off.reshape(h, w, 2 * k).transpose(2, 0, 1)
    return heat.astype(np.float32), np.ascontiguousarray(off).astype(np.float32)


def _centers(
    affine: np.ndarray, joints_out: np.ndarray, centers_orig: Optional[np.ndarray]
) -> np.ndarray:
    """Person centres in output px: the keypoint mean, or the mapped explicit centre."""
    centers = joints_out.mean(axis=1)
    if centers_orig is not None:
        given = ~np.isnan(centers_orig).any(axis=1)
        centers[given] = to_output(affine, centers_orig[given])
    return centers


def scale_outputs(
    scene: dict[str, Any], affine: np.ndarray, hw: tuple[int, int], flip_index: list[int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"normal": (heatmaps, offsets), "flipped": (heatmaps, offsets)}`` of one test scale."""
    kpts = np.asarray(scene["kpts_orig"], dtype=np.float64)  # (P, K, 2) original px
    amp_k = np.asarray(scene["amp_kpt"], dtype=np.float64)
    amp_c = np.asarray(scene["amp_ctr"], dtype=np.float64)
    centers_orig = np.array(
        [[np.nan if v is None else v for v in c] for c in scene["centres_orig"]], dtype=np.float64
    )
    shift = np.asarray(scene["flip_perturb_orig_px"], dtype=np.float64)
    flip_amp = float(scene["flip_amp"])

    j_out = to_output(affine, kpts)
    normal = render(j_out, amp_k, amp_c, _centers(affine, j_out, centers_orig), hw)

    jf = to_output(affine, kpts + shift)
    cf = _centers(affine, jf, centers_orig + shift)
    mirror = hw[1] - 1
    jf = jf[:, flip_index]
    jf[..., 0] = mirror - jf[..., 0]
    cf[:, 0] = mirror - cf[:, 0]
    flipped = render(jf, flip_amp * amp_k[:, flip_index], flip_amp * amp_c, cf, hw)
    return {"normal": normal, "flipped": flipped}


def checksums(views: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Float64 sums of the built arrays, named as ``geometry[*].built_checksums``."""
    (h, o), (hf, of) = views["normal"], views["flipped"]
    return {
        "heatmap_sum": float(h.astype(np.float64).sum()),
        "offset_sum": float(o.astype(np.float64).sum()),
        "flip_heatmap_sum": float(hf.astype(np.float64).sum()),
        "flip_offset_sum": float(of.astype(np.float64).sum()),
    }
