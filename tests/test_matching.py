"""Heatmap matching (TEST.MATCH_HMP): absorb to peaks, Gaussian refinement, decoder wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SPEC3

from dekr.decoder import DEKRDecoder, ScaleMaps, max_filter
from dekr.keypoints import COCO_KEYPOINTS
from dekr.matching import (
    MatchSettings,
    absorb_to_peaks,
    average_heatmaps,
    match_poses_to_heatmaps,
    refine_joints,
)
from dekr.targets import encode_targets


def gaussian(h: int, w: int, peaks: list, sigma: float = 2.0) -> torch.Tensor:
    """(h, w) max of unit Gaussians at map (x, y) ``peaks``."""
    ys, xs = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    out = torch.zeros(h, w, dtype=torch.float64)
    for x, y in peaks:
        out = torch.maximum(out, torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return out.float()


def pose(*joints: tuple) -> torch.Tensor:
    """(1, K, 3) from (x, y, score) tuples."""
    return torch.tensor([list(j) for j in joints], dtype=torch.float32)[None]


@pytest.mark.parametrize("stride", [4.0, 1.0])
def test_joint_moves_onto_an_off_grid_peak(stride):
    peak = torch.tensor([20.3, 15.6])  # map px
    sigma = 2.0 * (4 / stride)  # the same blob in input pixels at either resolution
    size = (int(40 * 4 / stride), int(50 * 4 / stride))
    maps = gaussian(*size, [(peak * 4 / stride).tolist()], sigma)[None]
    target = peak * 4  # input px
    start = target + torch.tensor([3.0, -2.0])  # 3 px off
    out = match_poses_to_heatmaps(pose((*start.tolist(), 0.9)), maps, stride=stride)
    assert (out[0, 0, :2] - target).abs().max() < 0.1
    assert out[0, 0, 2] == pytest.approx(0.9)


def test_low_score_joints_are_absorbed_but_not_refined():
    maps = gaussian(40, 50, [(20.3, 15.6)])[None]
    out = match_poses_to_heatmaps(pose((84.0, 61.0, 0.04)), maps, stride=4.0)
    assert out[0, 0, :2].tolist() == [80.0, 64.0]  # the peak's output pixel (20, 16) × 4
    moved = match_poses_to_heatmaps(pose((84.0, 61.0, 0.06)), maps, stride=4.0)
    assert (moved[0, 0, :2] - torch.tensor([81.2, 62.4])).abs().max() < 0.1


def test_far_joints_and_other_types_do_not_attract():
    maps = torch.stack([gaussian(40, 50, [(10, 10)]), gaussian(40, 50, [(25, 20)])])
    # joint 0 is 89 px from its peak (> 75): unchanged (its window holds only the far tail, the
    # fitted peak lies outside the window); joint 1 lies on the peak of type 0, but only type-1
    # peaks count, and the one 72 px away absorbs it
    poses = pose((120.0, 80.0, 0.9), (40.0, 40.0, 0.9))
    out = match_poses_to_heatmaps(poses, maps, stride=4.0)
    assert out[0, 0].tolist() == poses[0, 0].tolist()
    assert out[0, 1, :2].tolist() == pytest.approx([100.0, 80.0], abs=1e-3)
    near = match_poses_to_heatmaps(
        poses, maps, stride=4.0, settings=MatchSettings(max_absorb_distance=50.0)
    )
    assert near[0, 1].tolist() == poses[0, 1].tolist()


def test_absorb_picks_the_nearest_of_several_peaks():
    maps = gaussian(40, 60, [(10, 10), (30, 10), (50, 30)])[None]
    joints = torch.tensor([[[70.0, 42.0]], [[110.0, 35.0]], [[190.0, 130.0]]])
    out = absorb_to_peaks(joints, maps, stride=4.0)
    assert out[:, 0].tolist() == [[40.0, 40.0], [120.0, 40.0], [200.0, 120.0]]
    few = absorb_to_peaks(joints, maps, stride=4.0, settings=MatchSettings(num_candidates=1))
    assert few[:, 0].tolist() == [[40.0, 40.0]] * 2 + [[190.0, 130.0]]  # the rest > 75 px


def test_failed_fits_leave_joints():
    maps = torch.zeros(2, 20, 20)
    maps[1, 5:8, 5:8] = 1.0  # a plateau: no curvature to fit
    joints = torch.tensor([[[24.0, 24.0], [24.0, 24.0]]])
    refined, ok = refine_joints(joints, maps, stride=4.0)
    assert ok.tolist() == [[False, False]]
    assert torch.equal(refined, joints)


@pytest.mark.parametrize("k", [1, 3, 17])
def test_any_keypoint_count_and_centre_channel(k):
    g = torch.Generator().manual_seed(k)
    peaks = torch.rand(k, 2, generator=g) * torch.tensor([40.0, 30.0]) + 5
    maps = torch.stack([gaussian(40, 50, [p.tolist()]) for p in peaks] + [torch.rand(40, 50)])
    poses = torch.cat([peaks * 4 + 2.5, torch.full((k, 1), 0.5)], -1)[None].repeat(3, 1, 1)
    out = match_poses_to_heatmaps(poses, maps, stride=4.0)  # K+1 channels: centre ignored
    assert out.shape == (3, k, 3)
    assert (out[..., :2] - peaks * 4).abs().max() < 0.1
    assert torch.equal(match_poses_to_heatmaps(poses, maps[:k], stride=4.0), out)


def test_empty_inputs():
    maps = torch.rand(4, 20, 30)
    assert match_poses_to_heatmaps(torch.zeros(0, 3, 3), maps).shape == (0, 3, 3)
    poses = torch.rand(2, 3, 3) * 50
    assert torch.equal(match_poses_to_heatmaps(poses, maps[:, :0]), poses)
    decoder = DEKRDecoder(SPEC3, match_heatmaps=True)
    out = decoder(torch.zeros(2, 4, 16, 24), torch.zeros(2, 6, 16, 24))
    assert [len(o["scores"]) for o in out] == [0, 0]


def test_average_heatmaps_matches_official_upsampling():
    torch.manual_seed(0)
    maps = [torch.rand(1, 4, 24, 32), torch.rand(1, 4, 12, 16)]
    sizes = [torch.tensor([[24, 32]]), torch.tensor([[12, 16]])]
    assert average_heatmaps(maps[1:], sizes[1:], [1.0]) is maps[1]
    got = average_heatmaps(maps, sizes, [2.0, 1.0])  # on the scale-1 grid (12, 16)

    def up(x: torch.Tensor, rate: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = [h * rate - rate + 1, w * rate - rate + 1]
        y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return torch.nn.functional.pad(y, (0, rate - 1, 0, rate - 1), mode="replicate")

    full = (up(maps[0], 2) + up(maps[1], 4)) / 2  # (1, 4, 48, 64) at input resolution
    torch.testing.assert_close(got, full[..., ::4, ::4], atol=1e-5, rtol=0)


def test_decoder_with_matching_on_random_maps():
    torch.manual_seed(1)
    heat = torch.rand(2, 4, 32, 40) ** 4
    off = torch.randn(2, 6, 32, 40) * 3
    sizes = torch.tensor([[32, 40], [24, 30]])
    plain = DEKRDecoder(SPEC3)(heat, off, sizes)
    matched = DEKRDecoder(SPEC3, match_heatmaps=True)(heat, off, sizes)
    for p, m in zip(plain, matched):
        assert m["keypoints"].shape == p["keypoints"].shape
        assert torch.isfinite(m["keypoints"]).all()
        torch.testing.assert_close(m["scores"], p["scores"])
        assert (m["keypoints"][..., :2] != p["keypoints"][..., :2]).any()
    multi = DEKRDecoder(SPEC3, match_heatmaps=True, nms_threshold=0.15).decode([
        ScaleMaps(heat, off, sizes, 1.0),
        ScaleMaps(torch.rand(2, 4, 64, 80), torch.randn(2, 6, 64, 80), sizes * 2, 2.0),
    ])  # fmt: skip
    assert all(torch.isfinite(m["keypoints"]).all() for m in multi)


def test_encode_decode_round_trip_keeps_accuracy():
    rng = np.random.default_rng(0)
    h, w, n = 64, 96, 6
    centers = np.stack(np.meshgrid([16, 48, 80], [18, 46]), -1).reshape(-1, 1, 2)
    kps = centers + rng.uniform(-7, 7, size=(n, 17, 2))  # sub-pixel, output px
    kps = np.concatenate([kps, np.full((n, 17, 1), 2.0)], axis=-1)
    t = encode_targets(kps, np.full(n, 1e4), None, output_size=(h, w))
    heat, off = torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]
    truth = torch.from_numpy(kps[..., :2] * 4).float()

    def error(match: bool) -> torch.Tensor:
        out = DEKRDecoder(COCO_KEYPOINTS, match_heatmaps=match)(heat, off)[0]["keypoints"]
        assert len(out) == n
        order = out[:, :, 0].mean(1).argsort()
        truth_order = truth[:, :, 0].mean(1).argsort()
        return (out[order, :, :2] - truth[truth_order]).norm(dim=-1)

    assert error(False).max() < 1e-3
    assert error(True).max() < 0.05  # absorbed to the grid, then refined back onto the peaks


@pytest.mark.parametrize("size", [3, 5, 7])
def test_max_filter_equals_max_pool(size):
    x = torch.randn(2, 3, 23, 31)
    x[0, 0, :4] = float("-inf")  # masked padding, as find_centers uses it
    expect = torch.nn.functional.max_pool2d(x, size, stride=1, padding=size // 2)
    assert torch.equal(max_filter(x, size), expect)
    assert torch.equal(max_filter(x[0, 0], size), expect[0, 0])
