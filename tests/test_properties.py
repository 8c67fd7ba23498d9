"""Property tests (hypothesis): targets, decoder, transforms and the encode→decode round trip."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dekr.data.transforms import (
    flip_keypoints,
    get_affine_matrix,
    invert_affine,
    warp_points,
)
from dekr.decoder import DEKRDecoder
from dekr.keypoints import KeypointSpec
from dekr.targets import encode_targets, encode_targets_batch

FAST = settings(max_examples=40, deadline=None, database=None)  # no .hypothesis/ folder


def _spec(k: int, pairs: list[tuple[int, int]] = ()) -> KeypointSpec:
    names = tuple(f"j{i}" for i in range(k))
    flips = tuple((names[a], names[b]) for a, b in pairs)
    return KeypointSpec(names=names, sigmas=(0.05,) * k, flip_pairs=flips)


@st.composite
def scenes(draw: st.DrawFn) -> dict:
    """Random people (N 0..40, K 1..20) inside, partly outside and outside a random map."""
    n, k = draw(st.integers(0, 40)), draw(st.integers(1, 20))
    h, w = draw(st.integers(4, 40)), draw(st.integers(4, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([0.0, 0.5, 3.0]))  # 0: inside; 3: mostly outside
    xy = rng.uniform(-spread, 1 + spread, size=(n, k, 2)) * [w - 1, h - 1]
    v = rng.integers(0, 3, size=(n, k, 1)).astype(np.float64)
    mask = rng.random((h, w)) > 0.2 if draw(st.booleans()) else None
    return {
        "keypoints": np.concatenate([xy, v], -1),
        "areas": rng.choice([0.0, 100.0, 5000.0], size=n),
        "mask": mask,
        "size": (h, w),
        "kwargs": {
            "sigma": draw(st.sampled_from([1.0, 2.0])),
            "center_sigma": draw(st.sampled_from([2.0, 4.0])),
            "bg_weight": 0.1,
            "offset_radius": draw(st.integers(1, 4)),
            "min_center_area": draw(st.sampled_from([0.0, 1024.0])),
        },
    }


@FAST
@given(scene=scenes())
def test_targets_are_finite_bounded_and_numpy_equals_torch(scene: dict) -> None:
    kw = scene["kwargs"]
    maps = encode_targets(
        scene["keypoints"], scene["areas"], scene["mask"], output_size=scene["size"], **kw
    )
    k = scene["keypoints"].shape[1]
    h, w = scene["size"]
    assert maps["heatmaps"].shape == (k + 1, h, w) and maps["offsets"].shape == (2 * k, h, w)
    for value in maps.values():
        assert np.isfinite(value).all()
    assert (maps["heatmaps"] >= 0).all() and (maps["heatmaps"] <= 1).all()
    weights = np.unique(maps["heatmap_weights"])
    assert np.isin(weights, np.float32([0.0, kw["bg_weight"], 1.0])).all(), weights
    assert (maps["offset_weights"] >= 0).all() and (maps["offset_weights"] <= 1 / 32).all()
    mask = None if scene["mask"] is None else torch.from_numpy(scene["mask"])[None]
    batch = encode_targets_batch(
        torch.from_numpy(scene["keypoints"])[None],
        torch.from_numpy(scene["areas"])[None],
        mask,
        output_size=scene["size"],
        **kw,
    )
    for name, value in maps.items():
        np.testing.assert_allclose(batch[name][0].numpy(), value, atol=1e-5, err_msg=name)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 2),
    k=st.integers(1, 6),
    h=st.integers(2, 24),
    w=st.integers(2, 24),
    max_people=st.integers(1, 12),
)
def test_decoder_outputs_are_finite_and_bounded(
    seed: int, b: int, k: int, h: int, w: int, max_people: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    heatmaps = torch.rand(b, k + 1, h, w, generator=g)
    offsets = (torch.rand(b, 2 * k, h, w, generator=g) - 0.5) * 4 * max(h, w)
    decoder = DEKRDecoder(_spec(k), max_people=max_people, center_threshold=0.0)
    for result in decoder(heatmaps, offsets):
        n = len(result["scores"])
        assert n <= max_people and result["keypoints"].shape == (n, k, 3)
        assert torch.isfinite(result["keypoints"]).all() and torch.isfinite(result["scores"]).all()


@st.composite
def flip_cases(draw: st.DrawFn) -> tuple[KeypointSpec, np.ndarray, float]:
    k = draw(st.integers(1, 20))
    order = draw(st.permutations(range(k)))
    pairs = [(order[2 * i], order[2 * i + 1]) for i in range(draw(st.integers(0, k // 2)))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(0, 5))
    kps = np.concatenate(
        [rng.uniform(-50, 300, size=(n, k, 2)), rng.integers(0, 3, size=(n, k, 1))], -1
    ).astype(draw(st.sampled_from([np.float32, np.float64])))
    return _spec(k, pairs), kps, float(draw(st.integers(1, 1024)))


@FAST
@given(case=flip_cases())
def test_flip_twice_is_identity(case: tuple[KeypointSpec, np.ndarray, float]) -> None:
    spec, kps, width = case
    once = flip_keypoints(kps, width, spec.flip_index)
    twice = flip_keypoints(once, width, spec.flip_index)
    assert twice.dtype == kps.dtype
    np.testing.assert_array_equal(twice[..., 1:], kps[..., 1:])  # y, v and the joint order
    # x' = (w - 1) - x rounds once in each flip: identity up to the dtype's resolution
    tolerance = 4 * np.finfo(kps.dtype).eps * max(width, 300.0)
    np.testing.assert_allclose(twice[..., 0], kps[..., 0], rtol=0, atol=tolerance)


@FAST
@given(
    cx=st.floats(-100, 1000),
    cy=st.floats(-100, 1000),
    crop=st.floats(8, 2000),
    rotation=st.floats(-180, 180),
    size=st.integers(8, 1024),
    seed=st.integers(0, 2**32 - 1),
)
def test_affine_then_inverse_is_identity(
    cx: float, cy: float, crop: float, rotation: float, size: int, seed: int
) -> None:
    points = np.random.default_rng(seed).uniform(-500, 1500, size=(7, 2))
    matrix = get_affine_matrix((cx, cy), crop, rotation, size)
    back = warp_points(warp_points(points, matrix), invert_affine(matrix))
    np.testing.assert_allclose(back, points, atol=1e-6 * max(1.0, crop / size) * 2000)


@st.composite
def separated_people(draw: st.DrawFn) -> np.ndarray:
    """1..4 people, K 1..8, centres on a 24-output-px grid, joints within 5 px of the centre."""
    k = draw(st.integers(1, 8))
    cells = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    people = []
    for cell in cells:
        base = np.array([12.3 + 24 * (cell % 2), 11.8 + 24 * (cell // 2)])
        xy = base + rng.uniform(-5, 5, size=(k, 2))
        people.append(np.concatenate([xy, np.full((k, 1), 2.0)], 1))
    return np.stack(people)


@FAST
@given(kps=separated_people())
def test_encode_decode_round_trip_within_one_pixel(kps: np.ndarray) -> None:
    n, k = kps.shape[:2]
    maps = encode_targets(kps, np.full(n, 1e4), None, output_size=48, min_center_area=0.0)
    decoder = DEKRDecoder(_spec(k), max_people=8, center_threshold=0.1, nms_num=max(k // 2, 1))
    heat = torch.from_numpy(maps["heatmaps"])[None]
    result = decoder(heat, torch.from_numpy(maps["offsets"])[None])[0]
    assert len(result["scores"]) == n
    truth = kps[..., :2] * 4  # input pixels (stride 4)
    found = result["keypoints"][..., :2].numpy()
    for person in truth:
        error = np.abs(found - person[None]).max(axis=(1, 2)).min()
        assert error <= 1.0, (error, person)
