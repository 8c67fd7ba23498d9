"""Decoding of DEKR network maps into scored multi-person poses (paper §3.3, official §6.4-6.6).

Everything is batched torch: centre candidates by max-pool NMS and top-k, poses read from the
per-pixel pose maps, heat values sampled at the candidates' joints, greedy pose NMS on a
vectorised pairwise distance matrix. Only the greedy pass (at most ``max_people`` candidates per
scale) loops in Python.

Coordinates: a pose map holds absolute joint positions ``(x, y)`` in output pixels of its scale
(``pixel − offset``). Decoded poses are returned in input pixels of the scale-1 image
(``stride / scale`` × output pixels, as the official code), before any inverse resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from dekr.keypoints import KeypointSpec
from dekr.maps import (
    max_filter,
    pool_kernel_for,
    reference_index,
    suppress_non_maxima,
    upsampled_points,
)
from dekr.matching import MatchSettings, average_heatmaps, match_poses_to_heatmaps

__all__ = [
    "ScaleMaps",
    "DEKRDecoder",
    "offsets_to_poses",
    "find_centers",
    "sample_heat_values",
    "pose_nms_keep",
    "max_filter",
]


@dataclass
class ScaleMaps:
    """Network outputs of one test scale, flip-averaged.

    Attributes:
        heatmaps: (B, K+1, h, w) keypoint heatmaps, centre last.
        offsets: (B, 2K, h, w) ``pixel − joint`` in output pixels of this scale (x, y interleaved);
            the pose of the person centred at pixel p is ``p − offsets[:, :, p]``.
        sizes: (B, 2) long, true (unpadded) map size (h_b, w_b) of every image.
        scale: test scale factor s (the input short side is ``input_size · s``).
        flip_offsets: optional (B, 2K, h, w) offsets of the flip-test pass as the network gave
            them (not mirrored back). Then ``offsets`` holds the direct pass only and the decoder
            averages the two poses at the candidate pixels alone (see :mod:`dekr.inference`).
        flip_centers: (B,) float, with ``flip_offsets``: pixel u of the flipped pass shows output
            coordinate ``c − u`` of the image.
    """

    heatmaps: Tensor
    offsets: Tensor
    sizes: Tensor
    scale: float = 1.0
    flip_offsets: Optional[Tensor] = None
    flip_centers: Optional[Tensor] = None


def offsets_to_poses(offsets: Tensor) -> Tensor:
    """Per-pixel absolute poses ``pixel − offset``: (B, 2K, h, w) → (B, h, w, K, 2)."""
    b, c, h, w = offsets.shape
    ys = torch.arange(h, device=offsets.device, dtype=offsets.dtype)
    xs = torch.arange(w, device=offsets.device, dtype=offsets.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    off = offsets.permute(0, 2, 3, 1).reshape(b, h, w, c // 2, 2)
    return grid[None, :, :, None, :] - off


def find_centers(
    center_maps: Tensor,
    sizes: Tensor,
    *,
    max_people: int,
    threshold: float,
    pool_thresholds: Sequence[int] = (200, 300),
) -> tuple[Tensor, Tensor, Tensor]:
    """Local maxima of the centre maps, top ``max_people``, above ``threshold``.

    Args:
        center_maps: (B, h, w) centre heatmaps (maybe padded).
        sizes: (B, 2) true map sizes (h_b, w_b); padded pixels never become centres.

    Returns:
        scores (B, M), flat pixel indices (B, M) into h·w, valid mask (B, M), M = max_people.
    """
    b, h, w = center_maps.shape
    ys = torch.arange(h, device=center_maps.device)[None, :, None]
    xs = torch.arange(w, device=center_maps.device)[None, None, :]
    inside = (ys < sizes[:, 0, None, None]) & (xs < sizes[:, 1, None, None])
    maps = center_maps.masked_fill(~inside, float("-inf"))
    kernels = [pool_kernel_for((int(hh), int(ww)), pool_thresholds) for hh, ww in sizes.tolist()]
    if len(set(kernels)) == 1:
        peaks = suppress_non_maxima(maps, kernels[0])
    else:
        peaks = torch.stack([suppress_non_maxima(m, k) for m, k in zip(maps, kernels)])
    peaks = peaks.masked_fill(~inside, -1.0)
    scores, indices = peaks.flatten(1).topk(min(max_people, h * w), dim=1)
    return scores, indices, scores > threshold


def sample_heat_values(
    heatmaps: Sequence[Tensor],
    sizes: Sequence[Tensor],
    scales: Sequence[float],
    points: Tensor,
    *,
    stride: int = 4,
) -> Tensor:
    """Heat of every joint at ``floor(x), floor(y)`` of the scale-averaged, scale-1-input-sized map.

    The official code upsamples every scale's heatmaps to the scale-1 input resolution, averages
    them and reads the joint's channel at the floored, clamped position. Only the needed points
    are evaluated here, with the same interpolation, so no full-resolution map is materialised.
    Every step is a tensor operation on the given sizes, so the function also traces into an ONNX
    graph with dynamic sizes (:class:`dekr.export.InGraphDecoder` reads its heat with it).

    Args:
        heatmaps: per scale (B, K+1, h_s, w_s). sizes: per scale (B, 2) true (h, w).
        points: (B, M, K, 2) joints in scale-1 input pixels.

    Returns:
        (B, M, K) heat values.
    """
    ref = reference_index(scales)
    full = sizes[ref].to(points.dtype) * stride  # (B, 2) scale-1 upsampled size (h, w)
    x = points[..., 0].transpose(1, 2).floor().clamp(min=0)  # (B, K, M): one channel per joint
    y = points[..., 1].transpose(1, 2).floor().clamp(min=0)
    x = torch.minimum(x, full[:, 1, None, None] - 1)
    y = torch.minimum(y, full[:, 0, None, None] - 1)
    total = torch.zeros_like(x)
    for maps, size, s in zip(heatmaps, sizes, scales):
        total = total + upsampled_points(maps[:, :-1].to(points.dtype), size, s, stride, x, y)
    return (total / len(heatmaps)).transpose(1, 2)


def pose_nms_keep(
    poses: Tensor, heat_scores: Tensor, valid: Tensor, *, threshold: float, num_joints: int
) -> list[int]:
    """Greedy pose NMS of one image (official ``nms_core``); returns kept candidate indices.

    Poses i, j are duplicates when more than ``num_joints`` joints lie closer than
    ``threshold · √(w_i² + h_i²)`` (pose i's keypoint box). For each unsuppressed candidate i in
    order, the group {i} ∪ duplicates(i) votes for its highest ``heat_scores`` member, which is kept
    unless already suppressed; the whole group is then suppressed.

    Args:
        poses: (M, K, 2). heat_scores: (M,). valid: (M,) bool.
    """
    extent = poses.amax(1) - poses.amin(1)
    radius = threshold * extent.pow(2).sum(-1).sqrt()  # (M,)
    dist = (poses[:, None] - poses[None]).pow(2).sum(-1).sqrt()  # (M, M, K)
    dup = ((dist < radius[:, None, None]).sum(-1) > num_joints) & valid[None] & valid[:, None]
    dup = dup | torch.eye(len(poses), dtype=torch.bool, device=poses.device)
    dup_rows, scores, ok = dup.tolist(), heat_scores.tolist(), valid.tolist()
    suppressed = [False] * len(scores)
    keep: list[int] = []
    for i, row in enumerate(dup_rows):
        if suppressed[i] or not ok[i]:
            continue
        group = [j for j, d in enumerate(row) if d]
        best = max(group, key=lambda j: scores[j])
        if suppressed[best]:
            continue
        keep.append(best)
        for j in group:
            suppressed[j] = True
    return keep


class DEKRDecoder:
    """Centre NMS → poses from pose maps → heat scores → pose NMS, batched over images and scales.

    Args:
        spec: keypoint set (K).
        max_people: candidates per scale and results per image (official DATASET.MAX_NUM_PEOPLE).
        center_threshold: minimum centre heat of a candidate (TEST.KEYPOINT_THRESHOLD).
        nms_threshold: joint distance threshold as a fraction of √(w² + h²) of the pose box
            (TEST.NMS_THRE: 0.05 single-scale, 0.15 multi-scale).
        nms_num: poses sharing more than this many close joints are duplicates
            (TEST.NMS_NUM_THRE, 8 for COCO); default ``K // 2``.
        pool_thresholds: map sizes (mean of h, w) above which the centre NMS kernel grows from
            3 to 5 and from 5 to 7 (TEST.POOL_THRESHOLD2, POOL_THRESHOLD1).
        scale_decrease: factor on the renormalised scores of scales ≠ 1 (TEST.DECREASE).
        match_heatmaps: snap the kept poses' joints to heatmap maxima and refine them
            (TEST.MATCH_HMP), see :func:`dekr.matching.match_poses_to_heatmaps`.
        matching: the matching's settings (default: the official TEST values).
        stride: input pixels per output pixel.
        rescorer: optional callable ``(keypoints (N, K, 3) original px, scores (N,)) → scores``
            applied by :mod:`dekr.inference` after the inverse resize.
    """

    def __init__(
        self,
        spec: KeypointSpec,
        *,
        max_people: int = 30,
        center_threshold: float = 0.01,
        nms_threshold: float = 0.05,
        nms_num: Optional[int] = None,
        pool_thresholds: Sequence[int] = (200, 300),
        scale_decrease: float = 0.9,
        match_heatmaps: bool = False,
        matching: Optional[MatchSettings] = None,
        stride: int = 4,
        rescorer: Optional[object] = None,
    ) -> None:
        self.spec = spec
        self.max_people = int(max_people)
        self.center_threshold = float(center_threshold)
        self.nms_threshold = float(nms_threshold)
        self.nms_num = spec.num_keypoints // 2 if nms_num is None else int(nms_num)
        self.pool_thresholds = tuple(int(t) for t in pool_thresholds)
        self.scale_decrease = float(scale_decrease)
        self.match_heatmaps = bool(match_heatmaps)
        self.matching = matching or MatchSettings()
        self.stride = int(stride)
        self.rescorer = rescorer

    def __call__(
        self, heatmaps: Tensor, offsets: Tensor, sizes: Optional[Tensor] = None
    ) -> list[dict[str, Tensor]]:
        """Single scale, no flip: heatmaps (B, K+1, h, w), offsets (B, 2K, h, w), sizes (B, 2)."""
        if sizes is None:
            sizes = torch.tensor([heatmaps.shape[-2:]] * heatmaps.shape[0], device=heatmaps.device)
        return self.decode([ScaleMaps(heatmaps, offsets, sizes, 1.0)])

    def candidates(self, maps: ScaleMaps) -> tuple[Tensor, Tensor, Tensor]:
        """Pose proposals of one scale, before pose NMS (official ``aggregate_results``).

        Returns:
            poses (B, M, K, 2) in scale-1 input pixels (flip-averaged when ``maps`` has
            ``flip_offsets``), centre scores (B, M) not yet renormalised across scales, and a
            valid mask (B, M) (centre above ``center_threshold``); M = ``max_people``, valid
            entries first, in descending score order.
        """
        scores, indices, valid = find_centers(
            maps.heatmaps[:, -1],
            maps.sizes,
            max_people=self.max_people,
            threshold=self.center_threshold,
            pool_thresholds=self.pool_thresholds,
        )
        b, c, h, w = maps.offsets.shape
        idx = indices[:, None, :].expand(-1, c, -1)
        off = maps.offsets.flatten(2).gather(2, idx).transpose(1, 2).reshape(b, -1, c // 2, 2)
        if maps.flip_offsets is not None:
            off = self._average_flip(maps, indices, off)
        pixel = torch.stack([indices % w, indices // w], dim=-1).to(off.dtype)  # (B, M, 2)
        poses = pixel[:, :, None, :] - off  # only the candidates' poses are formed
        return poses * (self.stride / maps.scale), scores, valid

    def _average_flip(self, maps: ScaleMaps, indices: Tensor, off: Tensor) -> Tensor:
        """Direct-pass offsets (B, M, K, 2) at candidate pixels averaged with the flipped pass.

        The flipped pass's pose at pixel u is read at its mirrored pixel n(u) = round(c − u)
        (clamped to the image): joint x = c − n(u) + off_f, permuted by ``spec.flip_index``.
        Averaged with u − off, as an offset: x (off − off_f + u − c + n(u)) / 2 and
        y (off + off_f) / 2; the same values as mirroring the whole pose map back first.
        """
        b, c2, h, w = maps.offsets.shape
        u = (indices % w).to(off.dtype)
        c = maps.flip_centers.to(off.dtype)[:, None]
        last = (maps.sizes[:, 1, None] - 1).to(off.dtype)
        n = torch.minimum(torch.round(c - u).clamp(min=0), last)  # (B, M)
        src = (indices // w) * w + n.long()
        flip = torch.tensor(self.spec.flip_index, device=off.device)
        flipped = maps.flip_offsets.flatten(2).gather(2, src[:, None, :].expand(-1, c2, -1))
        flipped = flipped.transpose(1, 2).reshape(b, -1, c2 // 2, 2)[:, :, flip]  # (B, M, K, 2)
        x = (off[..., 0] - flipped[..., 0] + (u - c + n)[..., None]) / 2
        return torch.stack([x, (off[..., 1] + flipped[..., 1]) / 2], dim=-1)

    def _renormalise(self, scores: list[Tensor], valid: list[Tensor], ref: int) -> None:
        """Official multi-scale rule: score · max(scale-1 scores) / max(this scale) · decrease."""

        def peak(s: Tensor, v: Tensor) -> Tensor:
            m = s.masked_fill(~v, float("-inf")).amax(1)
            return torch.where(v.any(1), m, torch.ones_like(m))

        ref_max = peak(scores[ref], valid[ref])
        for i in range(len(scores)):
            if i != ref:
                factor = ref_max / peak(scores[i], valid[i]) * self.scale_decrease
                scores[i] = scores[i] * factor[:, None]

    def decode(self, scale_maps: Sequence[ScaleMaps]) -> list[dict[str, Tensor]]:
        """Decode all scales of a batch.

        Returns:
            one dict per image: ``keypoints`` (N, K, 3) = x, y in scale-1 input pixels and joint
            score (centre score × heat value); ``scores`` (N,) = mean joint score; N ≤ max_people.
        """
        order = sorted(range(len(scale_maps)), key=lambda i: -scale_maps[i].scale)
        scale_maps = [scale_maps[i] for i in order]
        scales = [m.scale for m in scale_maps]
        ref = reference_index(scales)
        cands = [self.candidates(m) for m in scale_maps]
        scores = [c[1] for c in cands]
        valid = [c[2] for c in cands]
        self._renormalise(scores, valid, ref)
        poses = torch.cat([c[0] for c in cands], dim=1)
        center_scores = torch.cat(scores, dim=1)
        valid_all = torch.cat(valid, dim=1)
        heat = sample_heat_values(
            [m.heatmaps for m in scale_maps],
            [m.sizes for m in scale_maps],
            scales,
            poses,
            stride=self.stride,
        )
        heat_scores = heat.mean(-1)
        joint_scores = center_scores[..., None] * heat
        results = []
        for b in range(poses.shape[0]):
            keep = pose_nms_keep(
                poses[b], heat_scores[b], valid_all[b],
                threshold=self.nms_threshold, num_joints=self.nms_num,
            )  # fmt: skip
            keep_t = torch.tensor(keep, dtype=torch.long, device=poses.device)
            if len(keep) > self.max_people:
                top = heat_scores[b, keep_t].topk(self.max_people).indices
                keep_t = keep_t[top]
            kpts = torch.cat([poses[b, keep_t], joint_scores[b, keep_t, :, None]], dim=-1)
            results.append({"keypoints": kpts, "scores": kpts[..., 2].mean(-1)})
        if self.match_heatmaps:
            self._match(results, scale_maps, ref)
        return results

    def _match(self, results: list[dict[str, Tensor]], maps: Sequence[ScaleMaps], ref: int) -> None:
        """Heatmap matching of the kept poses, in place; scores stay as they are."""
        scales = [m.scale for m in maps]
        avg = average_heatmaps([m.heatmaps for m in maps], [m.sizes for m in maps], scales,
                               stride=self.stride)  # fmt: skip
        for b, res in enumerate(results):
            h, w = maps[ref].sizes[b].tolist()
            res["keypoints"] = match_poses_to_heatmaps(
                res["keypoints"],
                avg[b, :, :h, :w],
                stride=self.stride / scales[ref],
                settings=self.matching,
            )
