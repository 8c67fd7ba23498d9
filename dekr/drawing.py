"""Pose overlays: skeleton limbs in the spec's colours, joints, and the person score (OpenCV)."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from dekr.keypoints import KeypointSpec

__all__ = ["draw_poses"]


def draw_poses(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    spec: KeypointSpec,
    *,
    score_threshold: float = 0.1,
    joint_threshold: float = 0.0,
    thickness: Optional[int] = None,
) -> np.ndarray:
    """A copy of ``image`` with the poses drawn.

    Args:
        image: (H, W, 3) RGB uint8.
        keypoints: (N, K, 3) x, y, joint score (or visibility) in image pixels.
        scores: (N,) person scores; people below ``score_threshold`` are skipped.
        joint_threshold: joints with a third value ≤ this are not drawn (0 skips unlabelled ones).
        thickness: line width, default from the image size.

    Returns:
        (H, W, 3) RGB uint8.
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, spec.num_keypoints, 3)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    width = thickness or max(1, round(max(out.shape[:2]) / 320))
    for person, score in zip(kps, scores):
        if not score >= score_threshold:
            continue
        ok = np.isfinite(person).all(-1) & (person[:, 2] > joint_threshold)
        pts = np.round(np.nan_to_num(person[:, :2])).astype(np.int32)
        for (a, b), color in zip(spec.limbs, spec.colors):
            if ok[a] and ok[b]:
                cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), color, width,
                         cv2.LINE_AA)  # fmt: skip
        for k in np.flatnonzero(ok):
            cv2.circle(out, tuple(map(int, pts[k])), width + 1, (255, 255, 255), -1, cv2.LINE_AA)
        if ok.any():
            x, y = pts[ok, 0].min(), max(int(pts[ok, 1].min()) - 4, 10)
            cv2.putText(out, f"{score:.2f}", (int(x), y), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * width, (255, 255, 255), max(1, width // 2), cv2.LINE_AA)  # fmt: skip
    return out
