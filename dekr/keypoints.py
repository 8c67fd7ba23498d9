"""Keypoint metadata shared by targets, heads, decoder, loss, metric and drawing.

A :class:`KeypointSpec` is the only place where a keypoint set is described. Nothing else in the
package knows how many keypoints there are or which ones are left/right: it asks the spec.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dekr.errors import SpecError

__all__ = ["KeypointSpec", "COCO_KEYPOINTS", "CROWDPOSE_KEYPOINTS", "get_keypoint_spec"]


def _default_colors(n: int) -> tuple[tuple[int, int, int], ...]:
    """``n`` well separated RGB colours (evenly spaced hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return tuple(out)


@dataclass(frozen=True)
class KeypointSpec:
    """A keypoint set: names, left/right flip pairs, OKS sigmas and a skeleton.

    Args:
        names: keypoint names, in the order of the annotation arrays (K entries).
        sigmas: OKS sigma of every keypoint (K entries), as in COCO's ``kpt_oks_sigmas``.
        flip_pairs: pairs of keypoint names swapped by a horizontal flip.
        skeleton: limbs as pairs of keypoint names; used for drawing and rescoring features.
        colors: one RGB colour per limb (default: evenly spaced hues).
        rescore_scale_limbs: indices into ``skeleton`` of the limbs whose mean length normalises
            the rescoring features (the official COCO net uses shoulder-hip limbs 9 and 11).
        name: a short name for logs and checkpoints.
    """

    names: tuple[str, ...]
    sigmas: tuple[float, ...]
    flip_pairs: tuple[tuple[str, str], ...] = ()
    skeleton: tuple[tuple[str, str], ...] = ()
    colors: tuple[tuple[int, int, int], ...] = ()
    rescore_scale_limbs: tuple[int, ...] = ()
    name: str = "custom"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "names", tuple(str(n) for n in self.names))
        set_(self, "sigmas", tuple(float(s) for s in self.sigmas))
        set_(self, "flip_pairs", tuple((str(a), str(b)) for a, b in self.flip_pairs))
        set_(self, "skeleton", tuple((str(a), str(b)) for a, b in self.skeleton))
        set_(self, "rescore_scale_limbs", tuple(int(i) for i in self.rescore_scale_limbs))
        if not self.colors:
            set_(self, "colors", _default_colors(len(self.skeleton)))
        set_(self, "colors", tuple(tuple(int(c) for c in col) for col in self.colors))
        self._validate()
        set_(self, "_index", {n: i for i, n in enumerate(self.names)})

    def _validate(self) -> None:
        k = len(self.names)
        if k == 0:
            raise SpecError(f"KeypointSpec '{self.name}': 'names' is empty; expected >= 1 keypoint")
        if len(set(self.names)) != k:
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise SpecError(f"KeypointSpec '{self.name}': duplicate keypoint names {dup}")
        if len(self.sigmas) != k:
            raise SpecError(
                f"KeypointSpec '{self.name}': {len(self.sigmas)} sigmas for {k} keypoints; "
                "expected one OKS sigma per keypoint"
            )
        if any(not (s > 0) for s in self.sigmas):
            raise SpecError(f"KeypointSpec '{self.name}': sigmas must be > 0, got {self.sigmas}")
        known = set(self.names)
        seen: set[str] = set()
        for field_name, pairs in (("flip_pairs", self.flip_pairs), ("skeleton", self.skeleton)):
            for a, b in pairs:
                for n in (a, b):
                    if n not in known:
                        raise SpecError(
                            f"KeypointSpec '{self.name}': {field_name} entry ({a!r}, {b!r}) names "
                            f"unknown keypoint {n!r}; known keypoints: {list(self.names)}"
                        )
                if field_name == "flip_pairs":
                    if a == b or a in seen or b in seen:
                        raise SpecError(
                            f"KeypointSpec '{self.name}': flip pair ({a!r}, {b!r}) repeats a "
                            "keypoint; each keypoint may appear in at most one pair"
                        )
                    seen.update((a, b))
        if len(self.colors) != len(self.skeleton):
            raise SpecError(
                f"KeypointSpec '{self.name}': {len(self.colors)} colors for "
                f"{len(self.skeleton)} limbs; expected one colour per skeleton limb"
            )
        for i in self.rescore_scale_limbs:
            if not 0 <= i < len(self.skeleton):
                raise SpecError(
                    f"KeypointSpec '{self.name}': rescore_scale_limbs index {i} is outside the "
                    f"skeleton (0..{len(self.skeleton) - 1})"
                )

    # ---------------------------------------------------------------- derived views
    @property
    def num_keypoints(self) -> int:
        """K, the number of keypoints."""
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of keypoint ``name``."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown keypoint {name!r}; known: {list(self.names)}") from None

    @property
    def flip_index(self) -> list[int]:
        """Permutation ``p`` so that ``flipped[..., k] = original[..., p[k]]`` (K entries)."""
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            ia, ib = self.index(a), self.index(b)
            perm[ia], perm[ib] = ib, ia
        return perm

    @property
    def flip_index_with_center(self) -> list[int]:
        """:attr:`flip_index` extended by the centre channel (K+1 entries, centre last)."""
        return self.flip_index + [self.num_keypoints]

    @property
    def limbs(self) -> list[tuple[int, int]]:
        """Skeleton as index pairs."""
        return [(self.index(a), self.index(b)) for a, b in self.skeleton]

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-python form, saved in checkpoints and output folders."""
        return {
            "name": self.name,
            "names": list(self.names),
            "sigmas": list(self.sigmas),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "skeleton": [list(p) for p in self.skeleton],
            "colors": [list(c) for c in self.colors],
            "rescore_scale_limbs": list(self.rescore_scale_limbs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeypointSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        allowed = {
            "name",
            "names",
            "sigmas",
            "flip_pairs",
            "skeleton",
            "colors",
            "rescore_scale_limbs",
        }
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise SpecError(
                f"KeypointSpec: unknown keys {unknown}; expected some of {sorted(allowed)}"
            )
        for key in ("names", "sigmas"):
            if key not in data:
                raise SpecError(f"KeypointSpec: missing required key {key!r}")
        return cls(
            names=tuple(data["names"]),
            sigmas=tuple(data["sigmas"]),
            flip_pairs=tuple(tuple(p) for p in data.get("flip_pairs", ()) or ()),
            skeleton=tuple(tuple(p) for p in data.get("skeleton", ()) or ()),
            colors=tuple(tuple(c) for c in data.get("colors", ()) or ()),
            rescore_scale_limbs=tuple(data.get("rescore_scale_limbs", ()) or ()),
            name=str(data.get("name", "custom")),
        )


def _left_right(*parts: str) -> tuple[tuple[str, str], ...]:
    """Flip pairs ``("left_<part>", "right_<part>")`` of ``parts``."""
    return tuple((f"left_{p}", f"right_{p}") for p in parts)


def _pairs(names: Sequence[str], idx: Sequence[tuple[int, int]]) -> tuple[tuple[str, str], ...]:
    return tuple((names[a], names[b]) for a, b in idx)


_COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# The 19 limbs in the order the official rescoring net was trained with (utils/rescore.py
# JOINT_COCO_LINK_1/2); limbs 9 and 11 (left/right shoulder-hip) normalise its features.
_COCO_LIMBS = (
    (0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 6), (5, 7), (5, 11),
    (6, 8), (6, 12), (7, 9), (8, 10), (11, 12), (11, 13), (12, 14), (13, 15), (14, 16),
)  # fmt: skip

_COCO_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

COCO_KEYPOINTS = KeypointSpec(
    name="coco",
    names=_COCO_NAMES,
    # pycocotools COCOeval.kpt_oks_sigmas
    sigmas=_COCO_SIGMAS,
    flip_pairs=_left_right("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"),
    skeleton=_pairs(_COCO_NAMES, _COCO_LIMBS),
    rescore_scale_limbs=(9, 11),
)

_CROWDPOSE_NAMES = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "head", "neck",
)  # fmt: skip

# Official rescore limb order (JOINT_CROWDPOSE_LINK_1/2); limbs 9 and 11 normalise the features.
_CROWDPOSE_LIMBS = (
    (12, 13), (13, 0), (13, 1), (0, 2), (1, 3), (2, 4), (3, 5), (0, 6), (1, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (6, 7), (0, 1),
)  # fmt: skip

_CROWDPOSE_SIGMAS = (
    0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107,
    0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079,
)  # fmt: skip

CROWDPOSE_KEYPOINTS = KeypointSpec(
    name="crowdpose",
    names=_CROWDPOSE_NAMES,
    # CrowdPose evaluation sigmas (crowdposetools), in the order of the names above.
    sigmas=_CROWDPOSE_SIGMAS,
    flip_pairs=_left_right("shoulder", "elbow", "wrist", "hip", "knee", "ankle"),
    skeleton=_pairs(_CROWDPOSE_NAMES, _CROWDPOSE_LIMBS),
    rescore_scale_limbs=(9, 11),
)

_BUILTIN = {"coco": COCO_KEYPOINTS, "crowdpose": CROWDPOSE_KEYPOINTS}


def get_keypoint_spec(name_or_dict: str | Mapping[str, Any] | KeypointSpec) -> KeypointSpec:
    """A built-in spec by name (``"coco"``, ``"crowdpose"``), or one built from a mapping."""
    if isinstance(name_or_dict, KeypointSpec):
        return name_or_dict
    if isinstance(name_or_dict, str):
        try:
            return _BUILTIN[name_or_dict]
        except KeyError:
            raise SpecError(
                f"unknown keypoint spec {name_or_dict!r}; built-ins are {sorted(_BUILTIN)}, "
                "or give the spec inline (names, sigmas, flip_pairs, skeleton)"
            ) from None
    return KeypointSpec.from_dict(name_or_dict)
