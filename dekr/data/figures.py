"""Articulated figures and textured backgrounds for the synthetic dataset.

A figure is built in local units (figure height 1, y down, origin at the pelvis), then scaled,
rotated and moved into the image. It is a list of drawing primitives (lines, discs, convex
polygons) plus its keypoints, so the same figure can be drawn in colour into the image and as an
instance id into a label map that decides occlusion.

Figures face the viewer: the person's LEFT side is on the image RIGHT, and a left part always has
the colour of its right counterpart, so a horizontal flip with left/right swap gives a valid
sample. Specs whose names are all body points of :data:`HUMAN_POINTS` (COCO, CrowdPose) get a
stick person; any other spec gets a generic figure built from a template of its keypoints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from dekr.keypoints import KeypointSpec

__all__ = [
    "HUMAN_POINTS",
    "Figure",
    "FigureMaker",
    "add_pixel_noise",
    "draw_background",
    "draw_crowd",
    "draw_figure",
    "draw_occluders",
]

# (kind, points (P, 2), size, colour): kind is "line" (size = thickness), "disc" (size = radius)
# or "poly" (filled convex polygon, size unused). Points and sizes are in image pixels once placed.
Primitive = tuple[str, np.ndarray, float, tuple[int, ...]]

HUMAN_POINTS = frozenset(
    ["nose", "head", "neck"]
    + [f"{s}_{p}" for s in ("left", "right")
       for p in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")]
)  # fmt: skip

_SHIFT = 4  # sub-pixel bits for OpenCV drawing: keypoints are floats
_SKIN = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
         (90, 56, 37))  # fmt: skip


@dataclass
class Figure:
    """One placed figure: ``keypoints (K, 2)`` image pixels, primitives, box padding (pixels)."""

    keypoints: np.ndarray
    primitives: list[Primitive]
    pad: float


def _color(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    r, g, b = rng.integers(low, high, 3)
    return int(r), int(g), int(b)


def _shade(color: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    r, g, b = (int(min(255, c * factor)) for c in color)
    return r, g, b


def _rotation(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _step(start: np.ndarray, angle: float, length: float, side: int) -> np.ndarray:
    """End of a limb leaving ``start``; ``angle`` in degrees from straight down, + = outward."""
    a = np.radians(angle)
    return start + length * np.array([side * np.sin(a), np.cos(a)])


def _human_points(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Named body points of a random frontal pose, local units (head top y=0, feet y~1)."""
    width = rng.uniform(0.85, 1.15)
    r = 0.065
    neck = np.array([0.0, 0.16])
    centre = np.array([0.0, r])
    tilt = _rotation(rng.uniform(-15, 15))
    face = {"head_centre": (0, 0), "head": (0, -r), "nose": (0, 0.3 * r),
            "left_eye": (0.4 * r, -0.1 * r), "right_eye": (-0.4 * r, -0.1 * r),
            "left_ear": (r, 0.05 * r), "right_ear": (-r, 0.05 * r)}  # fmt: skip
    pts = {k: neck + tilt @ (centre + np.array(v) - neck) for k, v in face.items()}
    pts["neck"] = neck
    for side, s in (("left", 1), ("right", -1)):
        shoulder = np.array([s * 0.11 * width, 0.19])
        hip = np.array([s * 0.065 * width, 0.52])
        upper = rng.uniform(-20, 170)
        elbow = _step(shoulder, upper, 0.165, s)
        wrist = _step(elbow, upper + rng.uniform(-120, 120), 0.145, s)
        thigh = rng.uniform(-15, 45)
        knee = _step(hip, thigh, 0.235, s)
        ankle = _step(knee, thigh + rng.uniform(-45, 30), 0.225, s)
        for name, p in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist),
                        ("hip", hip), ("knee", knee), ("ankle", ankle)):  # fmt: skip
            pts[f"{side}_{name}"] = p
    return pts


def _human_primitives(rng: np.random.Generator, p: dict[str, np.ndarray]) -> list[Primitive]:
    """Legs, torso, arms, then head; left and right parts share colours (flip symmetry)."""
    skin = _shade(_SKIN[int(rng.integers(len(_SKIN)))], rng.uniform(0.9, 1.1))
    shirt, pants, shoe, hair = _color(rng), _color(rng), _color(rng, 0, 90), _color(rng, 0, 120)
    sleeve = shirt if rng.random() < 0.5 else skin
    out: list[Primitive] = []
    line = lambda a, b, t, c: out.append(("line", np.stack([p[a], p[b]]), t, c))
    for s in ("left", "right"):
        side = 1 if s == "left" else -1
        line(f"{s}_hip", f"{s}_knee", 0.06, pants)
        line(f"{s}_knee", f"{s}_ankle", 0.05, pants)
        foot = p[f"{s}_ankle"] + np.array([side * 0.045, 0.012])
        out.append(("line", np.stack([p[f"{s}_ankle"], foot]), 0.035, shoe))
    line("left_hip", "right_hip", 0.06, pants)
    torso = np.stack([p["right_shoulder"], p["left_shoulder"], p["left_hip"], p["right_hip"]])
    out.append(("poly", torso, 0.0, shirt))
    line("left_shoulder", "right_shoulder", 0.05, shirt)
    line("neck", "head_centre", 0.035, skin)
    for s in ("left", "right"):
        line(f"{s}_shoulder", f"{s}_elbow", 0.045, shirt)
        line(f"{s}_elbow", f"{s}_wrist", 0.038, sleeve)
        out.append(("disc", p[f"{s}_wrist"][None], 0.025, skin))
    r, c = 0.065, p["head_centre"]
    for s in ("left", "right"):
        out.append(("disc", p[f"{s}_ear"][None], 0.3 * r, _shade(skin, 0.8)))
    out.append(("disc", c[None], r, skin))
    up = (p["head"] - c) / r  # the head's up direction (tilted)
    ang = np.radians(np.linspace(-70, 70, 9))
    cap = c + r * (np.outer(np.cos(ang), up) + np.outer(np.sin(ang), [-up[1], up[0]]))
    out.append(("poly", cap, 0.0, hair))
    for s in ("left", "right"):
        out.append(("disc", p[f"{s}_eye"][None], 0.16 * r, (25, 25, 25)))
    out.append(("disc", p["nose"][None], 0.13 * r, _shade(skin, 0.65)))
    return out


def _template(spec: KeypointSpec) -> np.ndarray:
    """Fixed mirror-symmetric layout ``(K, 2)`` of a spec's keypoints, derived from its names.

    The first member of each flip pair goes to +x (image right, the "left" side of a frontal
    figure), its partner to the mirrored position; unpaired keypoints lie on the axis x = 0.
    """
    digest = hashlib.sha256("|".join(spec.names).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    pts = np.full((spec.num_keypoints, 2), np.nan)
    partner = {spec.index(a): spec.index(b) for a, b in spec.flip_pairs}
    paired = set(partner) | set(partner.values())
    for k in range(spec.num_keypoints):
        if k in paired and k not in partner:
            continue  # placed with its pair's first member
        for _ in range(100):  # keep keypoints apart so every one is identifiable
            cand = np.array(
                [rng.uniform(0.1, 0.45) if k in partner else 0.0, rng.uniform(-0.5, 0.5)]
            )
            others = pts[~np.isnan(pts[:, 0])]
            if len(others) == 0 or np.min(np.linalg.norm(others - cand, axis=1)) > 0.15:
                break
        pts[k] = cand
        if k in partner:
            pts[partner[k]] = cand * np.array([-1.0, 1.0])
    return pts


class FigureMaker:
    """Builds random figures for one :class:`KeypointSpec`.

    Args:
        spec: the keypoint set; a stick person when all names are in :data:`HUMAN_POINTS`.
        max_rotation: largest in-plane rotation of a figure, degrees.
    """

    def __init__(self, spec: KeypointSpec, *, max_rotation: float = 12.0) -> None:
        self.spec = spec
        self.max_rotation = max_rotation
        self.human = set(spec.names) <= HUMAN_POINTS
        self.template = None if self.human else _template(spec)
        flip = spec.flip_index
        # symmetric colouring: a keypoint type and its mirror partner share one colour
        canon = [min(k, flip[k]) for k in range(spec.num_keypoints)]
        hues = np.linspace(0, 180, spec.num_keypoints, endpoint=False).astype(np.uint8)
        hsv = np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], 1)[None]
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
        self.blob_colors = [tuple(int(v) for v in rgb[c]) for c in canon]

    def make(self, rng: np.random.Generator, centre: np.ndarray, height: float) -> Figure:
        """A random figure of ``height`` pixels whose pelvis/centre is at ``centre (x, y)``."""
        if self.human:
            named = _human_points(rng)
            prims = _human_primitives(rng, named)
            local = np.stack([named[n] for n in self.spec.names]) - np.array([0.0, 0.5])
            prims = [(k, q - np.array([0.0, 0.5]), s, c) for k, q, s, c in prims]
        else:
            local, prims = self._generic(rng)
        m = height * _rotation(rng.uniform(-self.max_rotation, self.max_rotation))
        place = lambda q: q @ m.T + centre
        prims = [(k, place(q), s * height, c) for k, q, s, c in prims]
        return Figure(keypoints=place(local), primitives=prims, pad=0.05 * height)

    def _generic(self, rng: np.random.Generator) -> tuple[np.ndarray, list[Primitive]]:
        """Template keypoints with per-instance aspect and jitter; limbs plus keypoint blobs."""
        assert self.template is not None
        pts = self.template * np.array([rng.uniform(0.8, 1.2), 1.0])
        pts = pts + rng.normal(0.0, 0.03, pts.shape)
        body = _color(rng)
        prims: list[Primitive] = [("line", pts[[a, b]], 0.05, body) for a, b in self.spec.limbs]
        prims += [("disc", pts[k][None], 0.05, c) for k, c in enumerate(self.blob_colors)]
        return pts, prims


def draw_figure(image: np.ndarray, figure: Figure, color: int | None = None) -> None:
    """Draw ``figure`` into ``image`` in place: its own colours (anti-aliased), or ``color``
    everywhere without anti-aliasing (for label maps)."""
    line_type = cv2.LINE_AA if color is None else cv2.LINE_8
    scale = float(1 << _SHIFT)
    for kind, pts, size, col in figure.primitives:
        c = col if color is None else color
        q = np.round(pts * scale).astype(np.int32)
        if kind == "line":
            t = max(1, int(round(size)))
            cv2.line(image, tuple(map(int, q[0])), tuple(map(int, q[1])), c, t, line_type, _SHIFT)
        elif kind == "disc":
            radius = max(int(round(size * scale)), int(scale))
            cv2.circle(image, tuple(map(int, q[0])), radius, c, -1, line_type, _SHIFT)
        else:
            cv2.fillConvexPoly(image, q, c, line_type, _SHIFT)


def draw_background(rng: np.random.Generator, *, height: int, width: int) -> np.ndarray:
    """Textured RGB background ``uint8 (height, width, 3)``: gradient, low-frequency noise,
    random rectangles, ellipses, stripes and limb-like lines."""
    t = np.linspace(0, 1, width, dtype=np.float32)[None, :] * rng.uniform(-1, 1)
    t = t + np.linspace(0, 1, height, dtype=np.float32)[:, None] * rng.uniform(-1, 1)
    c0, c1 = np.array(_color(rng), np.float32), np.array(_color(rng), np.float32)
    img = c0 + (t[..., None] - t.min()) / max(float(np.ptp(t)), 1e-6) * (c1 - c0)
    coarse = rng.normal(0, 30, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3))
    img += cv2.resize(coarse.astype(np.float32), (width, height),  # cv2 sizes are (w, h)
                      interpolation=cv2.INTER_CUBIC)  # fmt: skip
    img = np.clip(img, 0, 255).astype(np.uint8)
    size = float(min(width, height))
    for _ in range(int(rng.integers(0, 7))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        a, b = rng.uniform(0.03, 0.3, 2) * size
        if rng.random() < 0.5:
            cv2.rectangle(img, (int(x), int(y)), (int(x + a), int(y + b)), _color(rng), -1)
        else:
            axes = (int(a / 2) + 1, int(b / 2) + 1)
            cv2.ellipse(img, (int(x), int(y)), axes, rng.uniform(0, 180), 0, 360, _color(rng), -1)
    if rng.random() < 0.3:  # stripes
        d = _rotation(rng.uniform(0, 180))[:, 0] * 2 * size
        gap, col, thick = rng.uniform(0.05, 0.15) * size, _color(rng), int(rng.integers(1, 6))
        for off in np.arange(-size, 2 * size, gap):
            o = np.array([off, 0.0]) if abs(d[1]) > abs(d[0]) else np.array([0.0, off])
            p0, p1 = (o - d).astype(int), (o + d).astype(int)
            cv2.line(img, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), col, thick)
    for _ in range(int(rng.integers(0, 4))):  # limb-like distractor lines
        p = rng.uniform(0, 1, 4) * np.array([width, height, width, height])
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), _color(rng),
                 int(rng.integers(1, 5)), cv2.LINE_AA)  # fmt: skip
    return img


def add_pixel_noise(rng: np.random.Generator, image: np.ndarray, max_sigma: float = 6.0) -> None:
    """Add Gaussian pixel noise of a random strength to ``image`` in place."""
    sigma = rng.uniform(0, max_sigma)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * sigma
    np.copyto(image, np.clip(image + noise, 0, 255).astype(np.uint8))


def draw_crowd(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, maker: FigureMaker, label: int
) -> None:
    """Draw a cluttered patch of tiny figures; their pixels get ``label`` in ``labels``."""
    h, w = labels.shape
    pw, ph = rng.uniform(0.2, 0.4) * w, rng.uniform(0.15, 0.3) * h
    x0, y0 = rng.uniform(0, w - pw), rng.uniform(0, h - ph)
    for _ in range(int(rng.integers(5, 16))):
        height = rng.uniform(0.06, 0.12) * h
        centre = np.array([rng.uniform(x0, x0 + pw), rng.uniform(y0, y0 + ph)])
        fig = maker.make(rng, centre, height)
        draw_figure(image, fig)
        draw_figure(labels, fig, label)


def draw_occluders(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, label: int
) -> None:
    """1-2 solid shapes drawn over everything (``label`` in ``labels``)."""
    h, w = labels.shape
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        a, b = rng.uniform(0.04, 0.15) * w, rng.uniform(0.04, 0.15) * h
        box = cv2.boxPoints(((cx, cy), (2 * a, 2 * b), rng.uniform(0, 180))).astype(np.int32)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.fillConvexPoly(image, box, color, cv2.LINE_AA)
        cv2.fillConvexPoly(labels, box, label)
