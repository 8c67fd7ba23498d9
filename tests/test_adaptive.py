"""The grid_sample form's tap grid (``_tap_grid``) against the positions it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dekr.models.adaptive import _displacements, _tap_grid, adaptive_conv


def sample_taps(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The sampling ``_tap_grid`` replaced, as the reference: ``x`` sampled bilinearly at the
    nine tap positions, zeros outside.

    Args:
        x: features (B, C, H, W).
        positions: absolute sample positions (B, 9, 2, H, W) as ``(y, x)`` in pixels.

    Returns:
        (B, C*9, H, W), channel ``c*9 + k`` holding tap k of channel c.
    """
    b, c, h, w = x.shape
    py, px = positions[:, :, 0], positions[:, :, 1]  # (B, 9, H, W)
    # align_corners=False reads the normalised g at pixel ((g + 1)·size − 1) / 2, so g = (2p + 1) /
    # size − 1 puts pixel p at p for every size, 1 included (align_corners=True maps a 1-pixel
    # axis onto pixel 0 whatever p is, instead of the zeros outside).
    gx = (2.0 * px + 1.0) / w - 1.0
    gy = (2.0 * py + 1.0) / h - 1.0
    grid = torch.stack((gx, gy), dim=-1).reshape(b, 9 * h, w, 2)
    taps = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return taps.reshape(b, c * 9, h, w)


def _transform(b: int, g: int, h: int, w: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(b, g * 4, h, w, generator=gen, dtype=dtype) * 0.7
    matrix[:, 0::4] += 1.0
    matrix[:, 3::4] += 1.0
    translation = torch.randn(b, g * 2, h, w, generator=gen, dtype=dtype) * 2.5
    return matrix, translation


def _positions(matrix: torch.Tensor, translation: torch.Tensor, g: int) -> torch.Tensor:
    """The absolute tap positions (B·G, 9, 2, H, W), (y, x), as :func:`sample_taps` takes them."""
    b, _, h, w = matrix.shape
    ys = torch.arange(h, dtype=matrix.dtype).reshape(h, 1)
    xs = torch.arange(w, dtype=matrix.dtype).reshape(1, w)
    pixels = torch.stack(torch.broadcast_tensors(ys, xs))  # (2, H, W)
    return _displacements(matrix, translation, g).reshape(b * g, 9, 2, h, w) + pixels


SIZES = [(5, 7), (9, 11), (1, 1), (1, 6), (4, 1), (2, 1), (1, 2), (32, 32)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tap_grid_is_the_normalised_positions(
    size: tuple[int, int], groups: int, channels_last: bool
) -> None:
    """The grid holds the positions of ``_displacements`` + pixel, normalised as ``sample_taps``
    does (``(2p + 1) / size − 1``), in (y, x) order; also from channels-last maps (the
    coefficients are strided views of them)."""
    h, w = size
    matrix, translation = _transform(2, groups, h, w, torch.float64)
    if channels_last:
        matrix = matrix.contiguous(memory_format=torch.channels_last)
        translation = translation.contiguous(memory_format=torch.channels_last)
    grid = _tap_grid(matrix, translation, groups)
    assert grid.shape == (2 * groups, 9, h * w, 2)
    pos = _positions(matrix, translation, groups)  # (B·G, 9, 2, H, W)
    size_yx = torch.tensor([h, w], dtype=torch.float64).reshape(1, 1, 2, 1, 1)
    expected = ((2.0 * pos + 1.0) / size_yx - 1.0).flatten(3).transpose(2, 3)  # (B·G, 9, HW, 2)
    torch.testing.assert_close(grid, expected, atol=1e-13, rtol=1e-13)


@pytest.mark.parametrize("size", [(5, 7), (32, 32), (1, 6), (4, 1)])
def test_tap_grid_float32_rounding(size: tuple[int, int]) -> None:
    """In float32 the grid differs from the float64 positions by rounding only (well under a
    millionth of the map size)."""
    h, w = size
    m64, t64 = _transform(2, 3, h, w, torch.float64, seed=1)
    grid = _tap_grid(m64.float(), t64.float(), 3).double()
    exact = _tap_grid(m64.float().double(), t64.float().double(), 3)
    assert (grid - exact).abs().max().item() < 1e-6


@pytest.mark.parametrize("size", [(6, 9), (1, 5), (3, 1)])
def test_sampling_the_transposed_features_equals_sample_taps(size: tuple[int, int]) -> None:
    """Sampling the H/W-swapped features at the (y, x) grid reads what ``sample_taps`` reads at
    the positions, zeros outside the map included."""
    h, w = size
    g, c = 2, 3
    matrix, translation = _transform(2, g, h, w, torch.float64, seed=2)
    x = torch.randn(2 * g, c, h, w, dtype=torch.float64)
    grid = _tap_grid(matrix, translation, g)
    taps = F.grid_sample(x.transpose(2, 3), grid, align_corners=False)  # (B·G, C, 9, HW)
    expected = sample_taps(x, _positions(matrix, translation, g))  # (B·G, C·9, H, W)
    torch.testing.assert_close(taps.reshape(expected.shape), expected, atol=1e-12, rtol=1e-12)


def test_tap_grid_gradcheck() -> None:
    matrix, translation = _transform(1, 2, 2, 3, torch.float64, seed=3)
    matrix.requires_grad_(True)
    translation.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, t: _tap_grid(m, t, 2), (matrix, translation))


def test_grid_sample_adaptive_conv_gradcheck() -> None:
    """Gradients of the grid_sample form for every input (generic, non-integer positions)."""
    g, c, c_out, h, w = 2, 2, 3, 3, 4
    matrix, translation = _transform(1, g, h, w, torch.float64, seed=4)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, g * c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(g * c_out, c, 3, 3, generator=gen, dtype=torch.float64)
    inputs = tuple(t.requires_grad_(True) for t in (x, matrix, translation, weight))

    def conv(x, matrix, translation, weight):
        return adaptive_conv(x, matrix, translation, weight, impl="grid_sample", groups=g)

    assert torch.autograd.gradcheck(conv, inputs)
