"""Heatmap matching of decoded poses (official TEST.MATCH_HMP, DEKR_REFERENCE §6.7), batched torch.

Two steps on the scale-averaged keypoint heatmaps, applied to the poses kept by pose NMS:

* **absorb**: every joint snaps to the nearest of the top ``num_candidates`` local maxima of its
  keypoint heatmap if that peak is closer than ``max_absorb_distance`` input pixels;
* **refine**: joints whose score exceeds ``adjust_threshold`` move to the sub-pixel peak of an
  isotropic 2-D Gaussian ``A·exp(−|p − p0|² / 2σ²)`` fitted on a window around them; a failed
  fit leaves the joint where it is.

Differences from the official code (``lib/core/match.py``):

* The maps are used at the resolution they are given (``stride`` input px per map pixel); the
  decoder passes the scale-1 OUTPUT grid (stride 4), where the official code first upsamples to
  input resolution. With one test scale the upsampled map is bilinear between output pixels, so
  its maxima lie on output pixels and absorbing to output-grid peaks gives the same positions.
  Windows are given in input pixels and rounded up to map pixels: the official 5×5 max-pool
  (radius 2) becomes 3×3, the 13×13 fit window (radius 6) becomes 5×5 output pixels.
* Peaks of value ≤ 0 are not candidates (the official top-k also returns flat zero regions).
* Refinement is a closed-form weighted least-squares fit of ``log h = a + b·x + c·y + d·(x² + y²)``
  (the log of the isotropic Gaussian) with weights ``h²`` — the first-order equivalent of a
  least-squares fit on ``h`` itself (Caruana / Guo) — solved for all joints at once, instead of
  scipy ``curve_fit`` (Levenberg–Marquardt, 300 evaluations) in a Python loop. Both are exact on
  a Gaussian peak. The fit fails (joint unchanged) when ``d ≥ 0``, the system is singular (no
  positive heat in the window) or the peak lies outside the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dekr.maps import reference_index, suppress_non_maxima, upsampled_grid

__all__ = [
    "match_poses_to_heatmaps",
    "MatchSettings",
    "absorb_to_peaks",
    "refine_joints",
    "average_heatmaps",
]


def average_heatmaps(
    heatmaps: Sequence[Tensor],
    sizes: Sequence[Tensor],
    scales: Sequence[float],
    *,
    stride: int = 4,
) -> Tensor:
    """The official scale-averaged ``heatmap_avg``, read on the grid of the reference scale.

    The reference is scale 1 (else the first scale, s); its map pixel (u, v) is input pixel
    ``(stride / s)·(u, v)`` of the scale-1 image. Every other scale's map is upsampled as the
    official ``up_interpolate`` (only at the grid points), so with scale 1 alone the maps are
    returned unchanged.

    Args:
        heatmaps: per scale (B, C, h_s, w_s); sizes: per scale (B, 2) true (h, w).

    Returns:
        (B, C, h_ref, w_ref).
    """
    ref = reference_index(scales)
    if len(heatmaps) == 1 and scales[0] == 1.0:
        return heatmaps[0]
    base = heatmaps[ref]
    step = stride / scales[ref]
    ys = torch.arange(base.shape[-2], device=base.device, dtype=base.dtype)[None] * step
    xs = torch.arange(base.shape[-1], device=base.device, dtype=base.dtype)[None] * step
    total = torch.zeros_like(base)
    for i, (maps, size, s) in enumerate(zip(heatmaps, sizes, scales)):
        if i == ref and s == 1.0:  # the official upsampling is exact on the scale-1 grid
            total += maps
            continue
        total += upsampled_grid(maps.to(base.dtype), size, s, stride, ys, xs)
    return total / len(heatmaps)


def _map_radius(radius: float, stride: float) -> int:
    """A radius in input pixels as a whole number (≥ 1) of map pixels."""
    return max(1, math.ceil(radius / stride - 1e-9))


def _peaks(heatmaps: Tensor, num_candidates: int, pool_radius: int) -> tuple[Tensor, Tensor]:
    """Top local maxima per channel: positions (K, P, 2) as map (x, y) and values (K, P)."""
    k, h, w = heatmaps.shape
    peaks = suppress_non_maxima(heatmaps, 2 * pool_radius + 1, fill=float("-inf")).flatten(1)
    values, index = peaks.topk(min(num_candidates, h * w), dim=1)
    xy = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1)
    return xy.to(heatmaps.dtype), values


@dataclass(frozen=True)
class MatchSettings:
    """Settings of :func:`match_poses_to_heatmaps` (the decoder's ``matching``): the official
    TEST values. ``num_candidates`` peaks per keypoint type (DATASET.MAX_NUM_PEOPLE);
    ``max_absorb_distance`` input px (TEST.MAX_ABSORB_DISTANCE); joints scoring above
    ``adjust_threshold`` are refined (TEST.ADJUST_THRESHOLD); ``pool_radius`` and
    ``window_radius`` input px of the peak max-filter and of the refinement window."""

    num_candidates: int = 30
    max_absorb_distance: float = 75.0
    adjust_threshold: float = 0.05
    pool_radius: float = 2.0
    window_radius: float = 6.0


def absorb_to_peaks(
    joints: Tensor, heatmaps: Tensor, *, stride: float = 4.0, settings: MatchSettings | None = None
) -> Tensor:
    """Snap joints to the nearest heatmap peak of their type within the settings'
    ``max_absorb_distance`` (of ``settings.num_candidates`` peaks per type, local maxima within
    ``settings.pool_radius``; :class:`MatchSettings`, default the official values).

    Args:
        joints: (N, K, 2) input pixels. heatmaps: (K, H, W), map pixel (u, v) ↔ input
            ``(stride·u, stride·v)``.

    Returns:
        (N, K, 2) joints, absorbed ones on map pixels (input px).
    """
    s = settings or MatchSettings()
    xy, values = _peaks(heatmaps, s.num_candidates, _map_radius(s.pool_radius, stride))
    peaks = xy * stride  # (K, P, 2) input px
    dist = (joints[:, :, None, :] - peaks[None]).norm(dim=-1)  # (N, K, P)
    dist = dist.masked_fill(~(values > 0)[None], float("inf"))
    best, index = dist.min(dim=-1)  # (N, K)
    nearest = peaks[torch.arange(peaks.shape[0], device=joints.device)[None], index]
    return torch.where((best < s.max_absorb_distance)[..., None], nearest, joints)


def _windows(heatmaps: Tensor, centers: Tensor, radius: int) -> Tensor:
    """Heat on (2r+1)² windows: centers (N, K, 2) long map (x, y) inside the map → (N, K, S).

    S = (2r+1)²; window pixels outside the map read 0 (zero weight in the fit).
    """
    k, h, w = heatmaps.shape
    padded = F.pad(heatmaps, (radius, radius, radius, radius)).flatten()
    d = torch.arange(-radius, radius + 1, device=heatmaps.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    x = centers[..., 0, None] + dx.flatten() + radius
    y = centers[..., 1, None] + dy.flatten() + radius
    chan = torch.arange(k, device=heatmaps.device)[None, :, None]
    return padded[(chan * (h + 2 * radius) + y) * (w + 2 * radius) + x]


def refine_joints(
    joints: Tensor, heatmaps: Tensor, *, stride: float = 4.0, window_radius: float = 6.0
) -> tuple[Tensor, Tensor]:
    """Sub-pixel peaks of isotropic Gaussians fitted around every joint (see the module doc).

    Args:
        joints: (N, K, 2) input pixels. heatmaps: (K, H, W) at ``stride`` input px per pixel.
        window_radius: half side of the fit window in input pixels (official GUASSIAN_KERNEL 6).

    Returns:
        refined joints (N, K, 2) input px (unchanged where the fit failed), success (N, K) bool.
    """
    r = _map_radius(window_radius, stride)
    # the last pixel (x, y) = (w - 1, h - 1): a point, compared with (x, y) joints
    last = torch.tensor(heatmaps.shape[:0:-1], device=joints.device, dtype=joints.dtype) - 1
    center = torch.minimum(torch.round(joints / stride).clamp(min=0), last)  # official clamp
    heat = _windows(heatmaps, center.long(), r).double()  # (N, K, S)
    d = torch.arange(-r, r + 1, device=joints.device, dtype=torch.float64)
    dy, dx = (g.flatten() for g in torch.meshgrid(d, d, indexing="ij"))
    design = torch.stack([torch.ones_like(dx), dx, dy, dx * dx + dy * dy], dim=-1)  # (S, 4)
    weight = heat.clamp(min=0) ** 2
    log_heat = heat.clamp(min=1e-30).log()
    normal = torch.einsum("nks,si,sj->nkij", weight, design, design)
    rhs = torch.einsum("nks,si,nks->nki", weight, design, log_heat)
    coef, info = torch.linalg.solve_ex(normal, rhs[..., None])
    _, b, c, q = coef[..., 0].unbind(-1)
    shift = torch.stack([-b, -c], dim=-1) / (2 * q.clamp(max=-1e-12))[..., None]
    ok = (info == 0) & (q < 0) & torch.isfinite(shift).all(-1) & (shift.abs() <= r).all(-1)
    refined = (center + shift.to(joints.dtype)) * stride
    return torch.where(ok[..., None], refined, joints), ok


def match_poses_to_heatmaps(
    poses: Tensor, heatmaps: Tensor, *, stride: float = 4.0, settings: MatchSettings | None = None
) -> Tensor:
    """Absorb joints to heatmap peaks, then refine confident ones (official MATCH_HMP).

    Args:
        poses: (N, K, 3) ``x, y, score`` in input pixels of the scale-1 image.
        heatmaps: (K, H, W) or (K+1, H, W) (a last centre channel is ignored) scale-averaged
            heatmaps; map pixel (u, v) is input pixel ``(stride·u, stride·v)``. Pass the
            image's unpadded part. Use stride 1 for maps at input resolution.
        settings: :class:`MatchSettings` (default: the official TEST values); see
            :func:`absorb_to_peaks` and :func:`refine_joints`.

    Returns:
        (N, K, 3) poses with moved joints; scores unchanged.
    """
    n, k = poses.shape[:2]
    if n == 0 or heatmaps.shape[-1] == 0 or heatmaps.shape[-2] == 0:
        return poses.clone()
    maps = heatmaps[:k].to(poses.dtype)
    s = settings or MatchSettings()
    joints = absorb_to_peaks(poses[..., :2], maps, stride=stride, settings=s)
    refined, _ = refine_joints(joints, maps, stride=stride, window_radius=s.window_radius)
    adjust = (poses[..., 2] > s.adjust_threshold)[..., None]
    return torch.cat([torch.where(adjust, refined, joints), poses[..., 2:]], dim=-1)
