"""DEKR training targets: keypoint + centre heatmaps and centre-anchored offsets.

Two implementations of the same maps: :func:`encode_targets` (numpy, one sample, used in data
loader workers) and :func:`encode_targets_batch` (torch, a padded batch, on any device). Both
scatter small windows with reductions (max for heatmaps, min-rank for the offset overlap rule);
there are no per-pixel Python loops. Coordinates follow ``docs/architecture.md``: keypoints in
output pixels, pixel centres at integer coordinates.

Differences from the official target generators (DEKR_REFERENCE.md §3, items 4, 6, 7):

* Offset-weight size: ``1 / sqrt(area)`` with ``area`` = keypoint-box diagonal² (w² + h² of the
  labelled keypoints) in INPUT pixels (output diagonal × ``stride``), floored at
  ``min_box_diagonal``. Official: ``max_x² + max_y²`` (the box is taken together with an
  unlabelled (0, 0) row, so the "area" depends on where the person stands in the image).
  Input pixels keep the official order of magnitude of the weights (≈ 1/300).
* People without labelled keypoints get no centre. Official: a centre at (0, 0) with v = 1.
* Offset overlap rule per joint: at each pixel of joint k the smallest person (by the size above)
  that labels joint k wins. Official: one area map shared by all joints, so a person's later
  joints overwrite anyone; an offset of exactly 0 also counted as "empty".
* Centre σ is always ``center_sigma``. Official: σ = 2 for the centre whenever K != 17.
* Offset window: the (2r+1)² pixels centred on the ROUNDED centre (symmetric, 9×9 for r = 4), the
  pixel the decoder's centre NMS picks from a sub-pixel Gaussian peak. Official: truncated
  centre and an asymmetric −r..r−1 window (8×8).
* Keypoints come as float32 (the sample contract; official: float64), so heatmaps and offsets
  differ from the official ones by float32 rounding of the coordinates (< 4e-6).
* Kept: Gaussian window ``[floor(x−3σ−1), ceil(x+3σ+2))``, max-combined, sub-pixel peaks; weights
  1 inside windows and ``bg_weight`` (BG_WEIGHT 0.1) elsewhere, times the valid mask; keypoints
  and centres outside the map are skipped; persons with annotation area < ``min_center_area``
  (32², COCOKeypoints.py:91) keep their keypoint heatmaps but get no centre and no offsets;
  offsets are not masked by the ignore mask.

``official=True`` (recipe ``targets.official``) reproduces the official targets instead, given the
per-person ``official_centers`` and ``official_areas`` that
:func:`dekr.data.transforms.official_people` computes before the warp: the ``max_x² + max_y²``
area, the (0, 0) centre of people without labelled keypoints (the reader's
``unlabelled_people=True`` hands them over), the 8×8 window around the truncated centre and the
shared-area-map overlap rule (:mod:`dekr.official_targets`), and σ = ``sigma`` for rows < 17
(``center_sigma`` from row 17 on, the centre row included only when K ≥ 17). Together with the
official flip of the transforms it equals the official arrays on the golden scenes of
``tests/data/conformance`` (``tests/test_conformance_targets.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dekr.data.types import BatchTargetMaps, TargetMaps, as_size
from dekr.official_targets import official_offsets, official_offsets_batch

__all__ = ["encode_targets", "encode_targets_batch", "person_centers"]


def person_centers(
    keypoints: np.ndarray, areas: np.ndarray, min_center_area: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the labelled keypoints of every person.

    Args:
        keypoints: (N, K, 3) ``x, y, v``.
        areas: (N,) annotation areas (original image pixels²).
        min_center_area: persons with a smaller annotation area get no centre.

    Returns:
        centres (N, 2) float and ``has_center`` (N,) bool.
    """
    lab = keypoints[..., 2] > 0
    n = lab.sum(-1)
    xy = (keypoints[..., :2] * lab[..., None]).sum(-2) / np.maximum(n, 1)[:, None]
    return xy, (n > 0) & (areas >= min_center_area)


def _box_diagonal(keypoints: np.ndarray) -> np.ndarray:
    """(N,) diagonal of the box around the labelled keypoints of each person, (N, K, 3) input."""
    lab = keypoints[..., 2] > 0
    big = np.float64(1e12)
    lo = np.where(lab[..., None], keypoints[..., :2], big).min(-2)
    hi = np.where(lab[..., None], keypoints[..., :2], -big).max(-2)
    wh = np.where(lab.any(-1)[:, None], hi - lo, 0.0)
    return np.sqrt((wh**2).sum(-1))


def _window_len(sigma: float) -> int:
    return int(math.ceil(6 * sigma + 3)) + 1


def _gaussian_scatter(heat, weight, mask, pts, chans, sigma) -> None:
    """Max-combine Gaussians at ``pts`` (M, 2) into channels ``chans`` (M,) of ``heat`` (C, h, w).

    ``weight`` (C, h, w) becomes ``mask`` (h, w) inside every window.
    """
    h, w = heat.shape[1:]
    if len(pts) == 0:
        return
    steps = np.arange(_window_len(sigma))
    lo = np.floor(pts - 3 * sigma - 1)  # window [floor(x-3σ-1), ceil(x+3σ+2)), official
    hi = np.ceil(pts + 3 * sigma + 2)
    xs = lo[:, 0:1] + steps  # (M, L)
    ys = lo[:, 1:2] + steps
    vx = (xs < hi[:, 0:1]) & (xs >= 0) & (xs < w)
    vy = (ys < hi[:, 1:2]) & (ys >= 0) & (ys < h)
    gx = np.exp(-((xs - pts[:, 0:1]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((ys - pts[:, 1:2]) ** 2) / (2 * sigma**2))
    val = gy[:, :, None] * gx[:, None, :]
    pix = ys[:, :, None] * w + xs[:, None, :]
    valid = vy[:, :, None] & vx[:, None, :]
    pix = pix[valid].astype(np.int64)
    idx = np.broadcast_to(chans[:, None, None], valid.shape)[valid] * (h * w) + pix
    np.maximum.at(heat.reshape(-1), idx, val[valid].astype(np.float32))
    weight.reshape(-1)[idx] = mask.reshape(-1)[pix]


def _inside(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    return (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] < w) & (xy[..., 1] < h)


def encode_targets(
    keypoints: np.ndarray,
    areas: np.ndarray,
    valid_mask: np.ndarray | None,
    *,
    output_size: int | tuple[int, int],
    stride: int = 4,
    sigma: float = 2.0,
    center_sigma: float = 4.0,
    bg_weight: float = 0.1,
    offset_radius: int = 4,
    min_center_area: float = 32**2,
    min_box_diagonal: float = 32.0,
    official: bool = False,
    official_centers: np.ndarray | None = None,
    official_areas: np.ndarray | None = None,
) -> TargetMaps:
    """DEKR targets of one sample.

    Args:
        keypoints: (N, K, 3) ``x, y, v`` in OUTPUT pixels; v = 0 marks an unlabelled keypoint.
        areas: (N,) annotation areas in original image pixels² (only for the small-person rule).
        valid_mask: (h, w), non-zero where the loss counts (``None``: everywhere).
        output_size: ``(h, w)`` of the maps, or one int for a square.
        stride: input pixels per output pixel (offset weights use input-pixel person sizes).
        sigma: keypoint Gaussian σ (DATASET.SIGMA 2); center_sigma: centre σ (CENTER_SIGMA 4).
        bg_weight: heatmap weight outside Gaussian windows (DATASET.BG_WEIGHT 0.1).
        offset_radius: half side of the offset window (DATASET.OFFSET_RADIUS 4).
        min_center_area: annotation area below which a person gets no centre / offsets.
        min_box_diagonal: floor (input px) of the size in the offset weight ``1/size``.
        official: the official target rules (module docstring); they need
            ``official_centers`` (N, 2, output px) and ``official_areas`` (N,), input px² from
            :func:`dekr.data.transforms.official_people`, and ignore ``min_box_diagonal``.

    Returns:
        ``heatmaps`` (K+1, h, w), ``heatmap_weights`` (K+1, h, w), ``offsets`` (2K, h, w) and
        ``offset_weights`` (2K, h, w), all float32.
    """
    h, w = as_size(output_size, "output_size")
    kps = np.asarray(keypoints, dtype=np.float64)
    if kps.ndim != 3 or kps.shape[2] != 3:
        raise ValueError(f"keypoints must be (N, K, 3), got shape {kps.shape}")
    n, k = kps.shape[:2]
    areas = np.asarray(areas, dtype=np.float64).reshape(n)
    heat = np.zeros((k + 1, h, w), np.float32)
    mask = np.ones((h, w), np.float32) if valid_mask is None else valid_mask.astype(np.float32)
    hw_ = np.empty((k + 1, h, w), np.float32)
    hw_[:] = mask * np.float32(bg_weight)
    kp_ok = (kps[..., 2] > 0) & _inside(kps, h, w)  # (N, K)
    if official:
        centres = _official_centres(official_centers, official_areas, n)
        has_c = areas >= min_center_area
    else:
        centres, has_c = person_centers(kps, areas, min_center_area)
    c_ok = has_c & _inside(centres, h, w)
    nn, kk = np.nonzero(kp_ok)
    sig = _row_sigmas(k, sigma, center_sigma, official)
    for value in np.unique(sig[:k]):
        sel = sig[kk] == value
        _gaussian_scatter(heat, hw_, mask, kps[nn[sel], kk[sel], :2], kk[sel], float(value))
    ctr = np.full(int(c_ok.sum()), k)
    _gaussian_scatter(heat, hw_, mask, centres[c_ok], ctr, float(sig[k]))
    if official:
        off, off_w = official_offsets(
            kps, kp_ok, centres, has_c, np.asarray(official_areas, np.float64).reshape(n),
            h, w, offset_radius,
        )  # fmt: skip
    else:
        size = np.maximum(_box_diagonal(kps) * stride, min_box_diagonal)
        off, off_w = _offsets_numpy(kps, kp_ok, centres, c_ok, size, h, w, offset_radius)
    return {"heatmaps": heat, "heatmap_weights": hw_, "offsets": off, "offset_weights": off_w}


def _row_sigmas(k: int, sigma: float, center_sigma: float, official: bool) -> np.ndarray:
    """(K+1,) σ per heatmap row: ``center_sigma`` for the centre row; officially for rows >= 17
    (HeatmapGenerator's ``idx < 17``, so K < 17 gives the centre σ = ``sigma``)."""
    rows = np.arange(k + 1)
    limit = 17 if official else k
    return np.where(rows < limit, sigma, center_sigma)


def _official_centres(centers, areas_off, n: int) -> np.ndarray:
    """(N, 2) float64 official centres; both official inputs must be given."""
    if centers is None or areas_off is None:
        raise ValueError(
            "official=True needs official_centers and official_areas "
            "(dekr.data.transforms.warp_sample(..., official=True) returns them)"
        )
    return np.asarray(centers, dtype=np.float64).reshape(n, 2)


def _offsets_numpy(kps, kp_ok, centres, c_ok, size, h, w, radius):
    """Offsets (2K, h, w) and weights around each centre; the smallest person wins per joint."""
    n, k = kp_ok.shape
    off = np.zeros((2 * k, h, w), np.float32)
    off_w = np.zeros((2 * k, h, w), np.float32)
    if not (n and c_ok.any()):
        return off, off_w
    d = np.arange(-radius, radius + 1)
    ct = np.clip(np.floor(centres + 0.5), 0, [w - 1, h - 1]).astype(np.int64)  # (N, 2)
    px = np.broadcast_to(ct[:, None, 0:1] + d[None, None, :], (n, len(d), len(d)))
    py = np.broadcast_to(ct[:, None, 1:2] + d[None, :, None], (n, len(d), len(d)))
    px, py = px.reshape(n, -1), py.reshape(n, -1)  # (N, P) window pixels
    pix_ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    ok = (kp_ok & c_ok[:, None])[:, :, None] & pix_ok[:, None, :]  # (N, K, P)
    nn, kk, pp = np.nonzero(ok)
    rank = np.empty(n, np.int32)
    rank[np.argsort(size, kind="stable")] = np.arange(n)
    # per (joint, pixel): the smallest rank among the people that write there
    flat = kk * (h * w) + py[nn, pp] * w + px[nn, pp]
    owner = np.full(k * h * w, n, np.int16 if n < 2**15 else np.int32)
    np.minimum.at(owner, flat, rank[nn].astype(owner.dtype))
    win = owner[flat] == rank[nn]
    nn, kk, pp, flat = nn[win], kk[win], pp[win], flat[win]
    pix = flat - kk * (h * w)
    ox = off.reshape(k, 2, h * w)
    ox[kk, 0, pix] = px[nn, pp] - kps[nn, kk, 0]
    ox[kk, 1, pix] = py[nn, pp] - kps[nn, kk, 1]
    wt = off_w.reshape(k, 2, h * w)
    wt[kk, 0, pix] = 1.0 / size[nn]
    wt[kk, 1, pix] = 1.0 / size[nn]
    return off, off_w


# ---------------------------------------------------------------- torch, batched
def _gaussian_scatter_torch(heat, window, pts, ok, bch, sigma) -> None:
    """Batched :func:`_gaussian_scatter` without data-dependent shapes (no ``nonzero``).

    ``heat`` / ``window`` (B, C, h, w); ``pts`` (M, 2); ``ok`` (M,) which points to draw;
    ``bch`` (M,) flat ``b·C + c`` channel. Entries outside the window/map scatter a 0 (a no-op
    under max) at a clamped index; ``window`` becomes 1 inside every drawn window.
    """
    h, w = heat.shape[-2:]
    steps = torch.arange(_window_len(sigma), device=pts.device, dtype=pts.dtype)
    lo = torch.floor(pts - 3 * sigma - 1)
    hi = torch.ceil(pts + 3 * sigma + 2)
    xs, ys = lo[:, 0:1] + steps, lo[:, 1:2] + steps  # (M, L)
    vx = (xs < hi[:, 0:1]) & (xs >= 0) & (xs < w)
    vy = (ys < hi[:, 1:2]) & (ys >= 0) & (ys < h)
    gx = torch.exp(-((xs - pts[:, 0:1]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((ys - pts[:, 1:2]) ** 2) / (2 * sigma**2))
    valid = (vy[:, :, None] & vx[:, None, :]) & ok[:, None, None]
    pix = ys.long().clamp(0, h - 1)[:, :, None] * w + xs.long().clamp(0, w - 1)[:, None, :]
    idx = (bch[:, None, None] * (h * w) + pix).reshape(-1)
    val = (gy[:, :, None] * gx[:, None, :] * valid).reshape(-1).to(heat.dtype)
    heat.view(-1).scatter_reduce_(0, idx, val, reduce="amax")
    window.view(-1).scatter_reduce_(0, idx, valid.reshape(-1).to(window.dtype), reduce="amax")


def encode_targets_batch(
    keypoints: torch.Tensor,
    areas: torch.Tensor,
    valid_mask: torch.Tensor | None,
    *,
    output_size: int | tuple[int, int],
    stride: int = 4,
    sigma: float = 2.0,
    center_sigma: float = 4.0,
    bg_weight: float = 0.1,
    offset_radius: int = 4,
    min_center_area: float = 32**2,
    min_box_diagonal: float = 32.0,
    official: bool = False,
    official_centers: torch.Tensor | None = None,
    official_areas: torch.Tensor | None = None,
) -> BatchTargetMaps:
    """:func:`encode_targets` for a padded batch, on the device and dtype of ``keypoints``.

    Args:
        keypoints: (B, N, K, 3) in output pixels; padded people have v = 0 and produce nothing.
        areas: (B, N) annotation areas; valid_mask: (B, h, w) or ``None``.
        official_centers: (B, N, 2), official_areas: (B, N) (float64 keeps the official
            float32-area-map comparison exact), for ``official``; padded people need an area
            below ``min_center_area`` (collate pads with −1).
        Others: as :func:`encode_targets`.

    Returns:
        ``heatmaps`` / ``heatmap_weights`` (B, K+1, h, w), ``offsets`` / ``offset_weights``
        (B, 2K, h, w).
    """
    h, w = as_size(output_size, "output_size")
    kps = keypoints if keypoints.is_floating_point() else keypoints.float()
    b, n, k = kps.shape[:3]
    dev, dt = kps.device, kps.dtype
    areas = areas.to(device=dev, dtype=dt).reshape(b, n)
    mask = torch.ones(b, h, w, device=dev, dtype=dt) if valid_mask is None else valid_mask.to(dt)
    heat = torch.zeros(b, k + 1, h, w, device=dev, dtype=dt)
    window = torch.zeros_like(heat)
    lab = kps[..., 2] > 0
    cnt = lab.sum(-1)
    if official:
        if official_centers is None or official_areas is None:
            raise ValueError("official=True needs official_centers and official_areas")
        centres = official_centers.to(device=dev, dtype=dt).reshape(b, n, 2)
        has_c = areas >= min_center_area
    else:
        centres = (kps[..., :2] * lab[..., None]).sum(-2) / cnt.clamp(min=1)[..., None]
        has_c = (cnt > 0) & (areas >= min_center_area)
    c_ok = has_c & _inside_t(centres, h, w)  # (B, N)
    kp_ok = lab & _inside_t(kps, h, w)  # (B, N, K)
    ar_b = torch.arange(b, device=dev)[:, None] * (k + 1)
    bch = (ar_b[:, :, None] + torch.arange(k, device=dev)).expand(b, n, k)
    sig = _row_sigmas(k, sigma, center_sigma, official)
    for value in np.unique(sig[:k]):
        rows = torch.from_numpy(sig[:k] == value).to(dev)
        _gaussian_scatter_torch(
            heat, window, kps[..., :2].reshape(-1, 2), (kp_ok & rows).reshape(-1),
            bch.reshape(-1), float(value),
        )  # fmt: skip
    bch = (ar_b + k).expand(b, n).reshape(-1)
    _gaussian_scatter_torch(
        heat, window, centres.reshape(-1, 2), c_ok.reshape(-1), bch, float(sig[k])
    )
    hw_ = mask[:, None] * torch.where(window > 0, 1.0, bg_weight).to(dt)
    if official:
        off, off_w = official_offsets_batch(
            kps, kp_ok, centres, has_c, official_areas.reshape(b, n), h, w, offset_radius
        )
        return {"heatmaps": heat, "heatmap_weights": hw_, "offsets": off, "offset_weights": off_w}
    big = torch.full_like(kps[..., 0], 1e12)
    lo = torch.where(lab[..., None], kps[..., :2], big[..., None]).amin(-2)
    hi = torch.where(lab[..., None], kps[..., :2], -big[..., None]).amax(-2)
    diag = torch.where(cnt[..., None] > 0, hi - lo, torch.zeros_like(hi)).square().sum(-1).sqrt()
    size = (diag * stride).clamp(min=min_box_diagonal)  # (B, N) input pixels
    off, off_w = _offsets_torch(kps, kp_ok & c_ok[..., None], centres, size, h, w, offset_radius)
    return {"heatmaps": heat, "heatmap_weights": hw_, "offsets": off, "offset_weights": off_w}


def _inside_t(xy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] < w) & (xy[..., 1] < h)


def _offsets_torch(kps, ok_bnk, centres, size, h, w, radius):
    """Batched :func:`_offsets_numpy`; ``ok_bnk`` (B, N, K) marks the joints that get offsets.

    Dense over (B, N, K, P) window entries (no ``nonzero``): entries that do not win write
    into one spare element past the end of the maps.
    """
    b, n, k = ok_bnk.shape
    dev, dt = kps.device, kps.dtype
    d = torch.arange(-radius, radius + 1, device=dev)
    ct = torch.floor(centres + 0.5).long()
    ct = torch.stack([ct[..., 0].clamp(0, w - 1), ct[..., 1].clamp(0, h - 1)], -1)  # (B, N, 2)
    px = (
        (ct[..., None, 0:1] + d[None, None, None, :])
        .expand(b, n, len(d), len(d))
        .reshape(b, n, len(d) ** 2)
    )
    py = (
        (ct[..., None, 1:2] + d[None, None, :, None])
        .expand(b, n, len(d), len(d))
        .reshape(b, n, len(d) ** 2)
    )
    pix_ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)  # (B, N, P)
    ok = ok_bnk[..., None] & pix_ok[:, :, None, :]  # (B, N, K, P)
    rank = torch.empty(b * n, dtype=torch.long, device=dev)
    rank[torch.argsort(size.reshape(-1), stable=True)] = torch.arange(b * n, device=dev)
    rank = rank.view(b, n, 1, 1).expand_as(ok)
    pix = (py.clamp(0, h - 1) * w + px.clamp(0, w - 1))[:, :, None, :]  # (B, N, 1, P)
    bk = torch.arange(b, device=dev).view(b, 1, 1, 1) * k + torch.arange(k, device=dev).view(
        1, 1, k, 1
    )
    flat = (bk * (h * w) + pix).expand_as(ok)  # (B, N, K, P) index into (B·K, h·w)
    owner = torch.full((b * k * h * w,), b * n, dtype=torch.long, device=dev)
    owner.scatter_reduce_(0, flat.reshape(-1), torch.where(ok, rank, b * n).reshape(-1), "amin")
    win = ok & (owner[flat] == rank)
    dump = b * k * h * w
    dst = torch.where(win, flat, dump).reshape(-1)
    off_x = (px[:, :, None, :].to(dt) - kps[..., 0:1]).reshape(-1)
    off_y = (py[:, :, None, :].to(dt) - kps[..., 1:2]).reshape(-1)
    wt = (1.0 / size).view(b, n, 1, 1).expand_as(ok).reshape(-1)
    out = torch.zeros(3, dump + 1, device=dev, dtype=dt)
    out[0].index_put_((dst,), off_x)
    out[1].index_put_((dst,), off_y)
    out[2].index_put_((dst,), wt)
    maps = out[:, :dump].view(3, b * k, h * w)
    off = maps[:2].transpose(0, 1).reshape(b, 2 * k, h, w)  # channel 2k: x, 2k+1: y
    off_w = maps[2:].expand(2, b * k, h * w).transpose(0, 1).reshape(b, 2 * k, h, w)
    return off, off_w
