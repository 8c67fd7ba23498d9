"""The official offset-target rules, for ``official=True`` of :mod:`dekr.targets`.

OffsetGenerator (target_generators.py:71-124, DEKR_REFERENCE.md §3.7) visits people in order and,
for each, its labelled joints in order; a person's window is ``[ct − r, ct + r)`` (8×8 for r = 4,
clipped to the map) around the TRUNCATED centre ``ct = int(centre)``, and a person is skipped when
``ct`` lies outside the map. At each window pixel of joint k the person writes ``pixel − keypoint``
and ``1/√area``, and sets one area map SHARED by all joints, unless joint k already holds a
non-zero offset there and the area map holds a smaller area. The area map is float32 and is
compared with the float64 area, as in the official code, so a person whose area rounds down in
float32 does not overwrite joints that others wrote at pixels its own earlier joints took.

The rule is sequential in people and joints, so both implementations loop over (person, joint)
pairs and vectorise each 8×8 window (the torch one also over the batch).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["official_offsets", "official_offsets_batch"]


def official_offsets(
    keypoints: np.ndarray,
    kp_ok: np.ndarray,
    centers: np.ndarray,
    center_ok: np.ndarray,
    areas: np.ndarray,
    h: int,
    w: int,
    radius: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights (2K, h, w) of one sample.

    Args:
        keypoints: (N, K, 3) output pixels; kp_ok (N, K): labelled joints inside the map.
        centers: (N, 2) output pixels; center_ok (N,): people whose centre counts (v = 1).
        areas: (N,) float64 official "areas", input pixels² (weight ``1/√area``).
    """
    n, k = kp_ok.shape
    off = np.zeros((2 * k, h, w), np.float32)
    off_w = np.zeros((2 * k, h, w), np.float32)
    area_map = np.zeros((h, w), np.float32)
    ct = np.trunc(centers).astype(np.int64) if n else np.zeros((0, 2), np.int64)
    areas = np.asarray(areas, dtype=np.float64)
    with np.errstate(divide="ignore"):
        inv = 1.0 / np.sqrt(areas)
    for i in range(n):
        cx, cy = ct[i]
        if not center_ok[i] or cx < 0 or cy < 0 or cx >= w or cy >= h:
            continue
        x0, x1 = max(cx - radius, 0), min(cx + radius, w)
        y0, y1 = max(cy - radius, 0), min(cy + radius, h)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        amap = area_map[y0:y1, x0:x1]
        for j in np.nonzero(kp_ok[i])[0]:
            o = off[2 * j : 2 * j + 2, y0:y1, x0:x1]
            taken = (o[0] != 0) | (o[1] != 0)
            write = ~(taken & (amap.astype(np.float64) < areas[i]))
            o[0][write] = (xs - np.float64(keypoints[i, j, 0]))[write]
            o[1][write] = (ys - np.float64(keypoints[i, j, 1]))[write]
            off_w[2 * j : 2 * j + 2, y0:y1, x0:x1][:, write] = inv[i]
            amap[write] = areas[i]
    return off, off_w


def official_offsets_batch(
    keypoints: torch.Tensor,
    kp_ok: torch.Tensor,
    centers: torch.Tensor,
    center_ok: torch.Tensor,
    areas: torch.Tensor,
    h: int,
    w: int,
    radius: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`official_offsets` for a padded batch: (B, N, K, 3), (B, N, K), (B, N, 2), (B, N),
    float64 areas (B, N); returns (B, 2K, h, w) offsets and weights in the keypoints' dtype.

    Window entries that do not write go to one spare element past the end of each map.
    """
    b, n, k = kp_ok.shape
    dev, dt = keypoints.device, keypoints.dtype
    hw = h * w
    ct = torch.trunc(centers).long()
    center_ok = center_ok & (ct[..., 0] >= 0) & (ct[..., 1] >= 0) & (ct[..., 0] < w)
    center_ok = center_ok & (ct[..., 1] < h)
    d = torch.arange(-radius, radius, device=dev)
    px = (ct[..., 0:1] + d)[..., None, :].expand(b, n, 2 * radius, 2 * radius)
    py = (ct[..., 1:2] + d)[..., :, None].expand(b, n, 2 * radius, 2 * radius)
    px, py = px.reshape(b, n, -1), py.reshape(b, n, -1)  # (B, N, P)
    pix_ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    pix = py.clamp(0, h - 1) * w + px.clamp(0, w - 1)
    areas = areas.to(device=dev, dtype=torch.float64)
    inv = (1.0 / areas.sqrt()).to(dt)
    off = torch.zeros(b, k, 2, hw + 1, device=dev, dtype=dt)
    off_w = torch.zeros(b, k, hw + 1, device=dev, dtype=dt)
    area_map = torch.zeros(b, hw + 1, device=dev, dtype=torch.float32)
    active = (kp_ok & center_ok[..., None]).any(0).nonzero().tolist()  # one host sync
    for i, j in active:  # people, then joints, in order (nonzero is row-major)
        ok = (kp_ok[:, i, j] & center_ok[:, i])[:, None] & pix_ok[:, i]  # (B, P)
        p = pix[:, i]
        cur = off[:, j].gather(2, p[:, None, :].expand(b, 2, -1))  # (B, 2, P)
        taken = (cur != 0).any(1)
        smaller = area_map.gather(1, p).double() < areas[:, i, None]
        dst = torch.where(ok & ~(taken & smaller), p, hw)
        vx = px[:, i].to(dt) - keypoints[:, i, j, 0:1]
        vy = py[:, i].to(dt) - keypoints[:, i, j, 1:2]
        off[:, j].scatter_(2, dst[:, None, :].expand(b, 2, -1), torch.stack([vx, vy], 1))
        off_w[:, j].scatter_(1, dst, inv[:, i, None].expand_as(vx).contiguous())
        area_map.scatter_(1, dst, areas[:, i, None].float().expand_as(vx).contiguous())
    off = off[..., :hw].reshape(b, 2 * k, h, w)
    off_w = off_w[..., :hw].repeat_interleave(2, dim=1).reshape(b, 2 * k, h, w)
    return off, off_w
