"""Flip test internals against plain gathers: input mirror, map mirror, lazy pose average."""

from __future__ import annotations

import pytest
import torch

from dekr.decoder import DEKRDecoder, ScaleMaps
from dekr.inference import _flip_inputs, _mirror_maps, forward_scale
from dekr.keypoints import COCO_KEYPOINTS


def reference_flip(batch: torch.Tensor, widths: list, shift: int) -> torch.Tensor:
    x = torch.arange(batch.shape[-1])[None]
    w = torch.tensor(widths)[:, None]
    src = torch.where(x < w - shift, w - 1 - shift - x, torch.where(x < w, w - 1 - x, x))
    return batch.gather(3, src[:, None, None, :].expand_as(batch))


def reference_mirror(maps: torch.Tensor, c: torch.Tensor, widths: list, nearest: bool):
    u = torch.arange(maps.shape[-1], dtype=c.dtype)[None]
    src = c[:, None] - u
    src = torch.round(src) if nearest else src
    lo = src.floor()
    frac = (src - lo)[:, None, None, :]
    hi = torch.tensor(widths)[:, None].to(c.dtype) - 1

    def take(idx: torch.Tensor) -> torch.Tensor:
        idx = torch.minimum(idx.clamp(min=0), hi).long()
        return maps.gather(-1, idx[:, None, None, :].expand_as(maps))

    return take(lo) * (1 - frac) + take(lo + 1) * frac


@pytest.mark.parametrize("shift", [0, 1, 3, 5])
@pytest.mark.parametrize("widths", [[64], [61, 64], [50, 63, 33]])
def test_input_and_map_mirrors_match_gathers(shift, widths):
    torch.manual_seed(shift)
    batch = torch.randn(len(widths), 3, 8, max(widths))
    expect = reference_flip(batch, widths, shift)
    assert torch.equal(_flip_inputs(batch, torch.tensor(widths), shift), expect)
    assert torch.equal(
        _flip_inputs(batch.clone(), torch.tensor(widths), shift, inplace=True), expect
    )
    maps = torch.randn(len(widths), 5, 4, (max(widths) + 3) // 4)
    map_widths = [(w + 3) // 4 for w in widths]
    c = (torch.tensor(widths).float() - 1 - shift) / 4
    got = _mirror_maps(maps, c, torch.tensor(map_widths))
    torch.testing.assert_close(got, reference_mirror(maps, c, map_widths, nearest=False))


@pytest.mark.parametrize("shift", [0, 2, 3])
def test_lazy_pose_average_equals_full_mirror(shift):
    """Averaging poses at the candidates equals averaging the whole mirrored pose map first."""
    spec, k = COCO_KEYPOINTS, COCO_KEYPOINTS.num_keypoints
    widths, h = [183, 175], 20  # 183: a fraction of ½ in c − u for shift 0 (round half to even)
    w = (max(widths) + 3) // 4
    g = torch.Generator().manual_seed(shift)
    outputs = [
        (torch.rand(2, k + 1, h, w, generator=g) ** 3, torch.randn(2, 2 * k, h, w, generator=g))
        for _ in range(2)
    ]
    calls = iter(outputs)
    sizes = torch.tensor([[4 * h, wi] for wi in widths])
    maps = forward_scale(lambda x: next(calls), torch.zeros(2, 3, 4 * h, max(widths)), sizes,
                         spec=spec, scale=1.0, flip=True, flip_shift=shift)  # fmt: skip
    assert maps.flip_offsets is not None
    (_, off), (_, off_f) = outputs
    c = maps.flip_centers
    chans = torch.tensor([[2 * j, 2 * j + 1] for j in spec.flip_index]).flatten()
    map_widths = maps.sizes[:, 1].tolist()
    off_m = reference_mirror(off_f[:, chans], c, map_widths, nearest=True)
    u = torch.arange(w, dtype=c.dtype)[None]
    n = torch.minimum(torch.round(c[:, None] - u).clamp(min=0), maps.sizes[:, 1, None] - 1)
    corr = (u - c[:, None] + n)[:, None, None, :]
    full = torch.stack([(off[:, 0::2] - off_m[:, 0::2] + corr) / 2,
                        (off[:, 1::2] + off_m[:, 1::2]) / 2], dim=2).flatten(1, 2)  # fmt: skip
    decoder = DEKRDecoder(spec, center_threshold=0.0)
    lazy = decoder.decode([maps])
    eager = decoder.decode([ScaleMaps(maps.heatmaps, full, maps.sizes, 1.0)])
    for a, b in zip(lazy, eager):
        assert len(a["scores"]) > 5
        torch.testing.assert_close(a["keypoints"], b["keypoints"], atol=1e-5, rtol=0)
