"""Map primitives (dekr.maps) on tiny tensors: the conventions their docstrings state."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dekr.maps import (
    bilinear_grid,
    bilinear_points,
    max_filter,
    pool_kernel_for,
    reference_index,
    suppress_non_maxima,
    upsample_source,
    upsampled_grid,
    upsampled_points,
)


def max_pool(maps: Tensor, size: int) -> Tensor:
    """``max_pool2d`` with stride 1 and implicit −inf padding, for any leading axes."""
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    return F.max_pool2d(flat, size, stride=1, padding=size // 2).reshape(maps.shape)


@pytest.mark.parametrize("size", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", [(6, 9), (2, 3, 5, 4), (3, 1, 2)])
def test_max_filter_equals_max_pool(size: int, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(size)
    maps = torch.randint(0, 4, shape, generator=g).float()  # many ties
    maps.view(-1)[::5] = float("-inf")
    got = max_filter(maps, size)
    assert got.shape == maps.shape
    assert torch.equal(got, max_pool(maps, size))


def test_max_filter_window_is_cut_at_the_border() -> None:
    maps = torch.tensor([[5.0, 1.0, 0.0, 0.0, 2.0]])
    assert max_filter(maps, 3).tolist() == [[5.0, 5.0, 1.0, 2.0, 2.0]]
    assert max_filter(-maps - 1, 3).tolist() == [[-2.0, -1.0, -1.0, -1.0, -1.0]]  # no zero pad


def test_suppress_non_maxima() -> None:
    maps = torch.tensor(
        [[0.1, 0.9, 0.2, 0.0], [0.3, 0.4, 0.2, 0.7], [0.5, 0.5, 0.1, 0.7]]
    )  # fmt: skip
    got = suppress_non_maxima(maps, 3)
    expect = [[0.0, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.7], [0.5, 0.5, 0.0, 0.7]]  # ties stay
    assert torch.equal(got, torch.tensor(expect))
    low = suppress_non_maxima(maps, 3, fill=float("-inf"))
    assert torch.equal(low, torch.where(got > 0, maps, float("-inf")))
    inf = float("-inf")
    masked = maps.masked_fill(torch.tensor([False, False, True, True]), inf)
    expect = [[0.0, 0.9, 0.0, inf], [0.0, 0.0, 0.0, inf], [0.5, 0.5, 0.0, inf]]
    assert torch.equal(suppress_non_maxima(masked, 3), torch.tensor(expect))
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(2, 3, 7, 8, generator=g)
    pooled = max_pool(batch, 5)
    assert torch.equal(suppress_non_maxima(batch, 5), torch.where(pooled == batch, batch, 0.0))


def test_pool_kernel_for() -> None:
    assert pool_kernel_for((200, 200)) == 3  # strict: a mean side of 200 is not above 200
    assert pool_kernel_for((201, 200)) == 5
    assert pool_kernel_for((300, 300)) == 5
    assert pool_kernel_for((301, 300)) == 7
    assert pool_kernel_for((128, 128), thresholds=(100, 127)) == 7
    assert pool_kernel_for((8, 2), thresholds=(4, 6)) == 5
    assert pool_kernel_for((4, 2), thresholds=(4, 6)) == 3


def test_reference_index() -> None:
    assert reference_index([2.0, 1.0, 0.5]) == 1
    assert reference_index([1.0]) == 0
    assert reference_index([2.0, 0.5]) == 0  # no scale 1: the first


def official_upsample(maps: Tensor, scale: float, stride: int) -> Tensor:
    """The official ``up_interpolate``: bilinear (align_corners) to T − r + 1, replicate pad."""
    h, w = maps.shape[-2:]
    th, tw = int(stride / scale * h), int(stride / scale * w)
    rh, rw = int(th / h), int(tw / w)
    up = F.interpolate(maps, size=(th - rh + 1, tw - rw + 1), mode="bilinear", align_corners=True)
    return F.pad(up, (0, rw - 1, 0, rh - 1), mode="replicate")


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5, 0.75])
def test_upsampled_grid_and_points_equal_official_upsampling(scale: float) -> None:
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 3, 5, 7, generator=g, dtype=torch.float64)
    sizes = torch.tensor([[5, 7], [5, 7]])
    full = official_upsample(maps, scale, 4)
    th, tw = full.shape[-2:]
    rows = torch.arange(th, dtype=torch.float64)[None]
    cols = torch.arange(tw, dtype=torch.float64)[None]
    got = upsampled_grid(maps, sizes, scale, 4, rows, cols)
    torch.testing.assert_close(got, full, atol=1e-12, rtol=0)
    x = torch.randint(0, tw, (2, 3, 11), generator=g).double()
    y = torch.randint(0, th, (2, 3, 11), generator=g).double()
    expect = full.flatten(2).gather(2, (y * tw + x).long())
    points = upsampled_points(maps, sizes, scale, 4, x, y)
    torch.testing.assert_close(points, expect, atol=1e-12, rtol=0)


def test_upsample_source() -> None:
    n = torch.tensor(6.0)
    coord = torch.arange(0.0, 30.0)
    # scale 1: output pixel u ↔ input pixel 4u; beyond 4 (n − 1) = 20 the last pixel
    assert torch.equal(upsample_source(coord, n, 1.0, 4), coord.clamp(max=20) / 4)
    # scale 2: T = 12, r = 2, align_corners over 11 pixels, then one replicated pixel
    assert torch.equal(upsample_source(coord, n, 2.0, 4), coord.clamp(max=10) * 5 / 10)
    assert torch.equal(upsample_source(coord, torch.tensor(1.0), 1.0, 4), torch.zeros(30))
    per_image = upsample_source(coord[None, :3], torch.tensor([[6.0], [2.0]]), 1.0, 4)
    assert per_image.tolist() == [[0.0, 0.25, 0.5], [0.0, 0.25, 0.5]]


def integer_maps() -> Tensor:
    """(2, 3, 4, 5) integer-valued maps: bilinear means of them are exact in float32."""
    return torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 2 % 17


def test_bilinear_points_at_pixels_half_way_and_outside() -> None:
    maps = integer_maps()
    yy, xx = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), indexing="ij")
    x = xx.flatten().expand(2, 3, -1)
    y = yy.flatten().expand(2, 3, -1)
    assert torch.equal(bilinear_points(maps, x, y), maps.flatten(2))  # pixel centres
    half = bilinear_points(maps, x[..., :4] + 0.5, y[..., :4])  # row 0, between columns
    assert torch.equal(half, (maps[:, :, 0, :4] + maps[:, :, 0, 1:]) / 2)
    mid = bilinear_points(maps, torch.full((2, 3, 1), 1.5), torch.full((2, 3, 1), 2.5))
    assert torch.equal(mid[..., 0], maps[:, :, 2:4, 1:3].sum((-1, -2)) / 4)
    # outside the map: the nearest border pixel (clamp), not zero
    ox = torch.tensor([-0.5, -3.0, 4.5, 7.25, 2.0, 2.0, -1.0, 9.0])
    oy = torch.tensor([1.0, 2.0, 0.0, 3.0, -0.75, 5.5, -2.0, 8.0])
    out = bilinear_points(maps, ox.expand(2, 3, -1), oy.expand(2, 3, -1))
    cx, cy = ox.clamp(0, 4).long(), oy.clamp(0, 3).long()
    torch.testing.assert_close(out, maps[:, :, cy, cx], atol=1e-5, rtol=0)
    assert (maps[:, :, cy, cx] > 0).any()


def test_bilinear_points_reads_each_channel_at_its_own_points() -> None:
    maps = integer_maps()
    x = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 3, 1).expand(2, -1, -1)  # channel c at x = c
    y = torch.zeros(2, 3, 1)
    got = bilinear_points(maps, x, y)[..., 0]
    assert torch.equal(got, maps[:, [0, 1, 2], 0, [0, 1, 2]])


def test_bilinear_grid_agrees_with_points() -> None:
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 3, 4, 5, generator=g)
    rows = torch.rand(2, 6, generator=g) * 6 - 1  # some outside [0, 3]
    cols = torch.rand(2, 7, generator=g) * 7 - 1  # some outside [0, 4]
    grid = bilinear_grid(maps, rows, cols)
    assert grid.shape == (2, 3, 6, 7)
    y = rows[:, None, :, None].expand(-1, 3, -1, 7).flatten(2)
    x = cols[:, None, None, :].expand(-1, 3, 6, -1).flatten(2)
    torch.testing.assert_close(grid.flatten(2), bilinear_points(maps, x, y), atol=1e-6, rtol=0)
    whole = bilinear_grid(maps, torch.arange(4.0).expand(2, -1), torch.arange(5.0).expand(2, -1))
    assert torch.equal(whole, maps)


class Primitives(nn.Module):
    """The traceable primitives in one graph, map sizes taken from the input."""

    def forward(self, maps: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, _, h, w = maps.shape
        one = x.new_ones(())
        sizes = torch.stack((one * h, one * w))[None].expand(b, -1)
        return (
            bilinear_points(maps, x, y),
            upsampled_points(maps, sizes, 0.5, 4, x.floor().clamp(min=0), y.floor().clamp(min=0)),
            suppress_non_maxima(maps, 3),
        )


def test_exported_primitives_agree_with_eager(tmp_path: Path) -> None:
    """ONNX graph traced at one size, run at others: the same numbers as eager torch."""
    import onnxruntime

    module = Primitives()
    g = torch.Generator().manual_seed(3)

    def inputs(b: int, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        maps = torch.rand(b, 3, h, w, generator=g)
        x = torch.rand(b, 3, 10, generator=g) * (w + 4) - 2
        y = torch.rand(b, 3, 10, generator=g) * (h + 4) - 2
        return maps, x, y

    path = tmp_path / "maps.onnx"
    axes = {"maps": {0: "b", 2: "h", 3: "w"}, "x": {0: "b"}, "y": {0: "b"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation of the TorchScript exporter
        torch.onnx.export(
            module, inputs(1, 6, 8), str(path), dynamo=False, opset_version=17,
            input_names=["maps", "x", "y"], output_names=["points", "up", "nms"],
            dynamic_axes=axes,
        )  # fmt: skip
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, h, w in [(2, 5, 7), (1, 9, 4), (3, 12, 16)]:
        args = inputs(b, h, w)
        feed = {name: t.numpy() for name, t in zip(["maps", "x", "y"], args)}
        for got, expect in zip(session.run(None, feed), module(*args)):
            torch.testing.assert_close(torch.from_numpy(got), expect, atol=1e-6, rtol=0)
