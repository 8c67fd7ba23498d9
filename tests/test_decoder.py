"""Decoder: centre NMS, poses from offsets, heat scores, pose NMS, multi-scale, padding."""

from __future__ import annotations

import torch
from conftest import SPEC3

from dekr.decoder import (
    DEKRDecoder,
    ScaleMaps,
    find_centers,
    offsets_to_poses,
    pose_nms_keep,
    sample_heat_values,
)
from dekr.keypoints import COCO_KEYPOINTS


def render_maps(people: torch.Tensor, h: int, w: int, radius: int = 4) -> tuple:
    """Hand-made network outputs for people (N, K, 2) in output px: (K+1, h, w), (2K, h, w)."""
    n, k, _ = people.shape
    ys, xs = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    heat = torch.zeros(k + 1, h, w, dtype=torch.float64)
    offsets = torch.zeros(2 * k, h, w, dtype=torch.float64)
    for p in people.double():
        center = p.mean(0)
        pts = torch.cat([p, center[None]])
        for j, (x, y) in enumerate(pts.tolist()):
            sigma = 4.0 if j == k else 2.0
            g = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
            heat[j] = torch.maximum(heat[j], g)
        cx, cy = int(center[0]), int(center[1])
        y0, y1, x0, x1 = max(cy - radius, 0), cy + radius, max(cx - radius, 0), cx + radius
        for j in range(k):
            offsets[2 * j, y0:y1, x0:x1] = xs[y0:y1, x0:x1] - p[j, 0]
            offsets[2 * j + 1, y0:y1, x0:x1] = ys[y0:y1, x0:x1] - p[j, 1]
    return heat.float(), offsets.float()


def random_people(n: int, k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """n people of K joints on a jittered grid (well separated), output px."""
    g = torch.Generator().manual_seed(seed)
    cols = int(n**0.5 + 0.999)
    rows = (n + cols - 1) // cols
    ij = torch.stack([torch.arange(n) % cols, torch.arange(n) // cols], -1).float()
    cell = torch.tensor([w / cols, h / rows])
    centers = (ij + 0.5) * cell + (torch.rand(n, 2, generator=g) - 0.5) * cell * 0.2
    return centers[:, None] + torch.randn(n, k, 2, generator=g) * cell.min() * 0.12


def test_offsets_to_poses_is_pixel_minus_offset():
    offsets = torch.zeros(1, 4, 3, 5)
    offsets[0, 0, 1, 2] = 1.5  # joint 0, x at pixel (x=2, y=1)
    offsets[0, 3, 2, 4] = -2.0  # joint 1, y at pixel (x=4, y=2)
    poses = offsets_to_poses(offsets)
    assert poses.shape == (1, 3, 5, 2, 2)
    assert poses[0, 1, 2, 0].tolist() == [0.5, 1.0]
    assert poses[0, 2, 4, 1].tolist() == [4.0, 4.0]
    assert poses[0, 0, 3, 0].tolist() == [3.0, 0.0]


def test_decoder_recovers_people_in_input_pixels():
    people = torch.tensor(
        [[[10.0, 12.0], [14.0, 20.0], [6.0, 20.0]], [[40.0, 30.0], [45.0, 38.0], [35.0, 38.0]]]
    )
    heat, off = render_maps(people, 48, 64)
    out = DEKRDecoder(SPEC3)(heat[None], off[None])[0]
    assert out["keypoints"].shape == (2, 3, 3)
    found = out["keypoints"][..., :2] / 4
    order = found[:, 0, 0].argsort()
    torch.testing.assert_close(found[order], people, atol=1e-4, rtol=0)
    assert (out["scores"] > 0.9).all()


def test_find_centers_ignores_padding_and_thresholds():
    maps = torch.zeros(2, 20, 30)
    maps[0, 5, 5] = 0.8
    maps[0, 5, 6] = 0.5  # not a local maximum
    maps[0, 15, 25] = 0.9  # inside the padding of image 0
    maps[1, 15, 25] = 0.9
    maps[1, 2, 2] = 0.005  # below threshold
    sizes = torch.tensor([[10, 10], [20, 30]])
    scores, idx, valid = find_centers(maps, sizes, max_people=4, threshold=0.01)
    assert valid.sum(1).tolist() == [1, 1]
    assert idx[0, 0].item() == 5 * 30 + 5 and idx[1, 0].item() == 15 * 30 + 25
    assert scores[valid].tolist() == [0.800000011920929, 0.8999999761581421]


def test_centre_kernel_grows_with_map_size():
    maps = torch.zeros(1, 400, 400)
    maps[0, 50, 50] = 1.0
    maps[0, 50, 53] = 0.9  # 3 px apart: separate peaks for kernels 3 and 5, not for 7
    big = find_centers(maps, torch.tensor([[400, 400]]), max_people=5, threshold=0.01)
    small = find_centers(maps, torch.tensor([[100, 110]]), max_people=5, threshold=0.01)
    assert big[2].sum().item() == 1
    assert small[2].sum().item() == 2


def test_pose_nms_greedy_keeps_best_of_group():
    base = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    poses = torch.stack([base, base + 0.1, base + 50.0, base + 0.2])
    heat = torch.tensor([0.5, 0.9, 0.7, 0.1])
    valid = torch.tensor([True, True, True, True])
    keep = pose_nms_keep(poses, heat, valid, threshold=0.05, num_joints=2)
    assert keep == [1, 2]
    # the winner of the first group is suppressed already: the second group keeps nothing new
    keep = pose_nms_keep(poses, heat, torch.tensor([True, True, True, False]), threshold=0.05,
                         num_joints=2)  # fmt: skip
    assert keep == [1, 2]
    # below the joint count no pose is a duplicate
    assert pose_nms_keep(poses, heat, valid, threshold=0.05, num_joints=4) == [0, 1, 2, 3]


def test_heat_values_match_full_upsampling():
    torch.manual_seed(0)
    maps = [torch.rand(1, 4, 12, 16), torch.rand(1, 4, 24, 32)]
    sizes = [torch.tensor([[12, 16]]), torch.tensor([[24, 32]])]
    points = torch.rand(1, 5, 3, 2) * torch.tensor([70.0, 50.0]) - 3
    got = sample_heat_values(maps, sizes, [1.0, 2.0], points)

    def up(x: torch.Tensor, rate: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = [h * rate - rate + 1, w * rate - rate + 1]
        y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return torch.nn.functional.pad(y, (0, rate - 1, 0, rate - 1), mode="replicate")

    avg = (up(maps[0], 4) + up(maps[1], 2)) / 2  # (1, 4, 48, 64)
    x = points[0, ..., 0].floor().clamp(0, 63).long()
    y = points[0, ..., 1].floor().clamp(0, 47).long()
    expect = avg[0, torch.arange(3)[None].expand(5, -1), y, x]
    torch.testing.assert_close(got[0], expect, atol=1e-5, rtol=0)


def test_padding_does_not_change_results():
    people = random_people(4, 3, 40, 56, seed=1)
    heat, off = render_maps(people, 40, 56)
    dec = DEKRDecoder(SPEC3)
    alone = dec(heat[None], off[None])[0]
    big_h = torch.zeros(2, 4, 64, 80)
    big_o = torch.zeros(2, 6, 64, 80)
    big_h[0, :, :40, :56], big_o[0, :, :40, :56] = heat, off
    big_h[0, :, 50, 70] = 1.0  # garbage in the padding
    other = render_maps(random_people(3, 3, 64, 80, seed=2), 64, 80)
    big_h[1], big_o[1] = other
    out = dec(big_h, big_o, torch.tensor([[40, 56], [64, 80]]))
    torch.testing.assert_close(out[0]["keypoints"], alone["keypoints"])
    assert len(out[1]["scores"]) == 3


def test_multi_scale_poses_merge_in_scale_1_pixels():
    people = random_people(3, 3, 32, 48, seed=3)
    h1, o1 = render_maps(people, 32, 48)
    h2, o2 = render_maps(people * 2, 64, 96)
    h2 = h2 * 0.5  # weaker scale
    dec = DEKRDecoder(SPEC3, nms_threshold=0.15)
    maps = [
        ScaleMaps(h2[None], o2[None], torch.tensor([[64, 96]]), 2.0),
        ScaleMaps(h1[None], o1[None], torch.tensor([[32, 48]]), 1.0),
    ]
    out = dec.decode(maps)[0]
    assert len(out["scores"]) == 3
    order = out["keypoints"][:, 0, 0].argsort()
    expect = people[people[:, 0, 0].argsort()] * 4
    torch.testing.assert_close(out["keypoints"][order, :, :2], expect, atol=0.05, rtol=0)


def test_multi_scale_scores_are_renormalised_to_scale_1():
    """Scale ≠ 1 centre scores × max(scale-1 centres) / max(this scale) × scale_decrease."""
    people = random_people(3, 3, 32, 48, seed=3)
    h1, o1 = render_maps(people, 32, 48)
    h2, o2 = render_maps(people * 2, 64, 96)
    h2 = h2 * 0.5  # half the amplitude at scale 2: renormalisation must undo it
    maps = [
        ScaleMaps(h2[None], o2[None], torch.tensor([[64, 96]]), 2.0),
        ScaleMaps(h1[None], o1[None], torch.tensor([[32, 48]]), 1.0),
    ]
    scores = {}
    for decrease in (1.0, 0.9):
        # no pose NMS: both scales' poses of each person are kept, scale 2's first
        out = DEKRDecoder(SPEC3, nms_threshold=0.0, scale_decrease=decrease).decode(maps)[0]
        assert len(out["scores"]) == 6
        xy = out["keypoints"][:, 0, :2]
        pair = torch.cdist(xy[:3], xy[3:]).argmin(1)  # scale-2 pose i ↔ scale-1 pose pair[i]
        scores[decrease] = (out["scores"][:3], out["scores"][3:][pair])
    scale2, scale1 = scores[1.0]
    torch.testing.assert_close(scale2, scale1, rtol=0.02, atol=0)  # not halved
    torch.testing.assert_close(scores[0.9][0], 0.9 * scale2, rtol=1e-5, atol=0)
    torch.testing.assert_close(scores[0.9][1], scale1, rtol=1e-6, atol=0)  # scale 1 untouched


def test_default_nms_num_and_max_people():
    assert DEKRDecoder(COCO_KEYPOINTS).nms_num == 8
    heat, off = render_maps(random_people(12, 3, 96, 96, seed=4), 96, 96)
    assert len(DEKRDecoder(SPEC3)(heat[None], off[None])[0]["scores"]) == 12
    assert len(DEKRDecoder(SPEC3, max_people=5)(heat[None], off[None])[0]["scores"]) == 5
