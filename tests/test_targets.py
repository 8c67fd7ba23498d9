"""DEKR targets: heatmap peaks and σ, weights, offset decoding, overlap rule, numpy == torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dekr.targets import encode_targets, encode_targets_batch


def _person(points: list[tuple[float, float]], k: int | None = None) -> np.ndarray:
    """(K, 3) keypoints with the given labelled points first, the rest unlabelled."""
    k = k or len(points)
    out = np.zeros((k, 3), np.float32)
    out[: len(points), :2] = points
    out[: len(points), 2] = 2
    return out


def _encode(people: list[np.ndarray], areas=None, mask=None, size=64, **kw):
    kps = np.stack(people) if people else np.zeros((0, 3, 3), np.float32)
    areas = np.full(len(people), 5000.0) if areas is None else np.asarray(areas)
    return encode_targets(kps, areas, mask, output_size=size, **kw)


def test_peak_value_and_sigma_at_integer_keypoint() -> None:
    t = _encode([_person([(20, 30), (40, 10), (30, 20)])], sigma=2.0)
    hm = t["heatmaps"]
    assert hm.shape == (4, 64, 64)
    assert hm[0, 30, 20] == pytest.approx(1.0)
    assert hm[0].argmax() == 30 * 64 + 20
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        assert hm[0, 30 + dy, 20 + dx] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    # centre: mean of the keypoints (30, 20), σ = center_sigma = 4
    assert hm[3, 20, 30] == pytest.approx(1.0)
    assert hm[3, 20, 31] == pytest.approx(math.exp(-1 / 32), rel=1e-6)


@pytest.mark.parametrize("x0,y0", [(20.3, 30.7), (10.5, 12.25), (33.9, 5.1)])
def test_subpixel_peak(x0: float, y0: float) -> None:
    hm = _encode([_person([(x0, y0), (20, 20)])])["heatmaps"][0].astype(np.float64)
    j, i = int(round(x0)), int(round(y0))
    lx = np.log(hm[i, j - 1 : j + 2])
    ly = np.log(hm[i - 1 : i + 2, j])
    # the log of a Gaussian is a parabola: its vertex is the exact sub-pixel peak
    est_x = j + (lx[0] - lx[2]) / (2 * (lx[0] - 2 * lx[1] + lx[2]))
    est_y = i + (ly[0] - ly[2]) / (2 * (ly[0] - 2 * ly[1] + ly[2]))
    assert est_x == pytest.approx(x0, abs=1e-3) and est_y == pytest.approx(y0, abs=1e-3)
    assert hm[i, j] == pytest.approx(math.exp(-((j - x0) ** 2 + (i - y0) ** 2) / 8), rel=1e-5)


def test_weights_background_window_and_mask() -> None:
    mask = np.ones((64, 64), bool)
    mask[:, :10] = False
    t = _encode([_person([(8, 30), (40, 30), (24, 30)])], mask=mask, bg_weight=0.1)
    w = t["heatmap_weights"]
    np.testing.assert_allclose(np.unique(w), [0.0, 0.1, 1.0], rtol=1e-6)
    assert (w[:, :, :10] == 0).all()
    # official window [floor(x-3σ-1), ceil(x+3σ+2)): x ± 7 for an integer x and σ = 2
    assert w[1, 30, 40 - 7] == 1 and w[1, 30, 40 + 7] == 1 and w[1, 37, 40] == 1
    assert w[1, 30, 40 - 8] == pytest.approx(0.1) and w[1, 30, 40 + 8] == pytest.approx(0.1)
    assert w[0, 30, 12] == 1  # window of the keypoint at x=8 reaches x=15 (official extent)
    assert w[3, 30, 24] == 1 and w[3, 0, 63] == pytest.approx(0.1)


def test_offsets_decode_to_keypoints_and_weights() -> None:
    pts = [(20.25, 30.5), (40.0, 12.75), (27.5, 21.0)]
    t = _encode([_person(pts)], stride=4)
    off, ow = t["offsets"], t["offset_weights"]
    cx, cy = np.mean([p[0] for p in pts]), np.mean([p[1] for p in pts])
    ct = int(np.floor(cx + 0.5)), int(np.floor(cy + 0.5))
    diag = math.hypot(40.0 - 20.25, 30.5 - 12.75) * 4  # keypoint box diagonal, input pixels
    for k, (kx, ky) in enumerate(pts):
        ys, xs = np.nonzero(ow[2 * k])
        assert len(xs) == 81  # symmetric 9×9 window around the rounded centre
        assert xs.min() == ct[0] - 4 and xs.max() == ct[0] + 4
        assert ys.min() == ct[1] - 4 and ys.max() == ct[1] + 4
        np.testing.assert_allclose(xs - off[2 * k, ys, xs], kx, atol=1e-5)
        np.testing.assert_allclose(ys - off[2 * k + 1, ys, xs], ky, atol=1e-5)
        np.testing.assert_allclose(ow[2 * k, ys, xs], 1 / diag, rtol=1e-6)
        np.testing.assert_array_equal(ow[2 * k], ow[2 * k + 1])


@pytest.mark.parametrize("order", [0, 1])
def test_overlap_smaller_person_wins_per_joint(order: int) -> None:
    big = _person([(10, 10), (50, 50), (30, 30)])  # centre (30, 30)
    small = _person([(29, 31), (33, 33), (0, 0)])  # centre (31, 32), joint 2 unlabelled
    small[2, 2] = 0
    people = [big, small] if order == 0 else [small, big]
    t = _encode(people, size=64)
    off = t["offsets"]
    # joint 0 at pixel (31, 32): both cover it, the smaller person wins
    assert 31 - off[0, 32, 31] == pytest.approx(29) and 32 - off[1, 32, 31] == pytest.approx(31)
    # joint 2: only the big person labels it, so it keeps the shared pixels
    assert 31 - off[4, 32, 31] == pytest.approx(30) and 32 - off[5, 32, 31] == pytest.approx(30)
    # outside the small window the big person writes joint 0
    assert 26 - off[0, 26, 26] == pytest.approx(10)


def test_small_and_keypointless_people() -> None:
    p = _person([(20, 20), (30, 30), (25, 40)])
    t = _encode([p], areas=[100.0])  # < 32²: keypoint heatmaps only
    assert t["heatmaps"][:3].max() == pytest.approx(1.0)
    assert t["heatmaps"][3].max() == 0 and not t["offset_weights"].any()
    t = _encode([p], areas=[100.0], min_center_area=0)
    assert t["heatmaps"][3].max() == pytest.approx(1.0) and t["offset_weights"].any()
    t = _encode([np.zeros((3, 3), np.float32)], areas=[5000.0])  # no fake centre at (0, 0)
    assert not t["heatmaps"].any() and not t["offset_weights"].any()


def test_empty_and_out_of_map() -> None:
    mask = np.ones((64, 64), bool)
    mask[0, 0] = False
    t = _encode([], mask=mask)
    assert t["heatmaps"].shape == (4, 64, 64) and t["offsets"].shape == (6, 64, 64)
    assert not t["heatmaps"].any() and not t["offsets"].any() and not t["offset_weights"].any()
    assert t["heatmap_weights"][:, 0, 0].max() == 0 and t["heatmap_weights"][:, 1, 1].min() > 0
    t = _encode([_person([(-3, 10), (70, 10), (30, 10)])])
    assert not t["heatmaps"][:2].any() and t["heatmaps"][2].max() == pytest.approx(1.0)
    assert not t["offset_weights"][:4].any() and t["offset_weights"][4:].any()


@pytest.mark.parametrize("k", [3, 5, 14])
def test_any_number_of_keypoints(k: int) -> None:
    rng = np.random.default_rng(k)
    people = [_person([tuple(p) for p in rng.uniform(5, 55, (k, 2))]) for _ in range(3)]
    t = _encode(people, size=(64, 48))
    assert t["heatmaps"].shape == (k + 1, 64, 48) and t["offsets"].shape == (2 * k, 64, 48)
    # the centre channel always gets center_sigma (no K == 17 special case)
    c = np.stack(people)[:, :, :2].mean(1)
    c = c[(c[:, 0] < 48)][0]
    i, j = int(round(c[1])), int(round(c[0]))
    exp = math.exp(-((j - c[0]) ** 2 + (i - c[1]) ** 2) / 32)
    assert t["heatmaps"][k, i, j] >= exp - 1e-6


def _random_batch(rng: np.random.Generator, b: int, n: int, k: int, size: int):
    kps = np.zeros((b, n, k, 3), np.float32)
    kps[..., :2] = rng.uniform(-8, size + 8, (b, n, k, 2))
    kps[..., 2] = rng.integers(0, 3, (b, n, k))
    kps[0, n - 2 :, :, 2] = 0  # padded people
    areas = rng.uniform(200, 4000, (b, n)).astype(np.float32)
    mask = rng.random((b, size, size)) > 0.2
    return kps, areas, mask


@pytest.mark.parametrize("k", [3, 17])
def test_numpy_equals_torch_batch(k: int) -> None:
    rng = np.random.default_rng(k)
    kps, areas, mask = _random_batch(rng, 3, 6, k, 48)
    kw = dict(output_size=48, sigma=2.0, center_sigma=4.0, offset_radius=4)
    ref = [encode_targets(kps[i], areas[i], mask[i], **kw) for i in range(3)]
    out = encode_targets_batch(torch.from_numpy(kps), torch.from_numpy(areas),
                               torch.from_numpy(mask), **kw)  # fmt: skip
    for key, val in out.items():
        assert val.dtype == torch.float32
        np.testing.assert_allclose(val.numpy(), np.stack([r[key] for r in ref]), atol=1e-5)


def test_torch_batch_padding_produces_nothing() -> None:
    kps = torch.zeros(2, 4, 5, 3, dtype=torch.float64)
    kps[0, 0, :, :2] = torch.tensor([[10.0, 10], [20, 20], [15, 30], [12, 25], [18, 14]])
    kps[0, 0, :, 2] = 2
    out = encode_targets_batch(kps, torch.full((2, 4), 5000.0), None, output_size=40)
    assert out["heatmaps"].dtype == torch.float64
    assert not out["heatmaps"][1].any() and not out["offset_weights"][1].any()
    single = encode_targets(kps[0, :1].numpy(), np.array([5000.0]), None, output_size=40)
    for key in single:
        np.testing.assert_allclose(out[key][0].numpy(), single[key], atol=1e-6)


def _official_inputs(kps: np.ndarray, stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Official centres/areas of (N, K, 3) output-px people, as if output px = original px / 4."""
    from dekr.data.transforms import official_people

    to_out = np.array([[1 / stride, 0, 0], [0, 1 / stride, 0]])
    raw = kps.astype(np.float64).copy()
    raw[..., :2] *= stride
    return official_people(raw, to_out, stride)


@pytest.mark.parametrize("k", [3, 17, 20])
def test_official_numpy_equals_torch_batch(k: int) -> None:
    """Official rules: the sequential overlap loop in numpy and batched in torch agree, with
    padded people (area −1) producing nothing."""
    rng = np.random.default_rng(10 + k)
    kps, areas, mask = _random_batch(rng, 3, 6, k, 48)
    kps[..., :2] = np.clip(kps[..., :2], 0, 60)  # crowded: many overlapping windows
    kps[1, 0, :, 2] = 0  # a person without labelled keypoints: the official (0, 0) centre
    areas[1, 0] = 5000.0
    areas[0, -2:] = -1  # padding, as collate_train pads
    kw = dict(output_size=48, official=True)
    inputs = [_official_inputs(kps[i]) for i in range(3)]
    ref = [encode_targets(kps[i], areas[i], mask[i], official_centers=c, official_areas=a, **kw)
           for i, (c, a) in enumerate(inputs)]  # fmt: skip
    centers = torch.from_numpy(np.stack([c for c, _ in inputs]))
    official = torch.from_numpy(np.stack([a for _, a in inputs]))
    out = encode_targets_batch(torch.from_numpy(kps), torch.from_numpy(areas),
                               torch.from_numpy(mask), official_centers=centers,
                               official_areas=official, **kw)  # fmt: skip
    for key, val in out.items():
        np.testing.assert_allclose(val.numpy(), np.stack([r[key] for r in ref]), atol=1e-5)
    assert out["heatmaps"][1, k, 0, 0] == 1.0  # the (0, 0) centre
    alone = encode_targets(kps[0, :-2], areas[0, :-2], mask[0], official_centers=inputs[0][0][:-2],
                           official_areas=inputs[0][1][:-2], **kw)  # fmt: skip
    for key in alone:
        np.testing.assert_array_equal(ref[0][key], alone[key])
    with pytest.raises(ValueError, match="official_centers"):
        encode_targets(kps[0], areas[0], mask[0], **kw)


@pytest.mark.parametrize("k", [3, 17, 20])
def test_official_sigma_follows_the_literal_row_17(k: int) -> None:
    """HeatmapGenerator: σ = SIGMA for rows < 17, CENTER_SIGMA from row 17 on (so K = 3 puts
    σ = 2 on the centre, K = 20 puts σ = 4 on joints 17..19)."""
    person = _person([(20.0 + j % 5, 20.0 + j // 5) for j in range(k)])[None]
    person[0, :, :2] = [(20, 20)] * k  # every joint and the centre at (20, 20)
    c, a = _official_inputs(person)
    t = encode_targets(person, np.array([5000.0]), None, output_size=48, official=True,
                       official_centers=c, official_areas=a, min_center_area=0)  # fmt: skip
    near = t["heatmaps"][:, 20, 21]  # one pixel from every peak: exp(-1 / (2σ²))
    sig = np.where(np.arange(k + 1) < 17, 2.0, 4.0)
    np.testing.assert_allclose(near, np.exp(-1 / (2 * sig**2)), rtol=1e-6)
