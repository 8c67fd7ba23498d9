"""Map primitives shared by the decoder, heatmap matching and the ONNX export (a leaf module).

Conventions, for every function here:

* Maps are torch tensors whose last two axes are (h, w): rows first. Points are given as
  separate ``x`` (column) and ``y`` (row) tensors; sizes are (h, w) pairs.
* Pixel centres lie at integer coordinates: pixel (row i, column j) is the point (x=j, y=i), as
  everywhere in the package (no half-pixel offset; ``align_corners=True`` in torch terms).
* Up-sampling follows the official DEKR ``up_interpolate``, see :func:`upsample_source`.

Only torch and the standard library are imported, so any module of the package can use this one
without forming an import cycle. :func:`max_filter`, :func:`suppress_non_maxima`,
:func:`upsample_source`, :func:`bilinear_points` and :func:`upsampled_points` trace into ONNX
graphs (TorchScript exporter) with dynamic map sizes, since the bounds that depend on a map size
are tensors there, and give the same numbers in eager torch and in the exported graph; the grid
forms :func:`bilinear_grid` and :func:`upsampled_grid` are for eager use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "max_filter",
    "suppress_non_maxima",
    "pool_kernel_for",
    "reference_index",
    "upsample_source",
    "bilinear_points",
    "bilinear_grid",
    "upsampled_points",
    "upsampled_grid",
]


def max_filter(maps: Tensor, size: int) -> Tensor:
    """Maximum over the ``size × size`` neighbourhood of every pixel of (..., h, w) maps.

    The same values as ``F.max_pool2d(maps, size, stride=1, padding=size // 2)`` for odd
    ``size``: the window is centred on the pixel and pixels beyond the border count as −inf (the
    window is cut at the border). Computed as separable maxima of shifted slices, which on CPU is
    many times faster than ``max_pool2d`` with stride 1 (about 0.4 ms for one 128×176 map), works
    on any number of leading axes and exports to ONNX (Pad, Slice, Max) with dynamic sizes.
    """
    r = size // 2
    h, w = maps.shape[-2:]
    padded = F.pad(maps, (r, r, r, r), value=float("-inf"))
    rows = padded[..., :, :w]
    for i in range(1, size):
        rows = torch.maximum(rows, padded[..., :, i : i + w])
    out = rows[..., :h, :]
    for i in range(1, size):
        out = torch.maximum(out, rows[..., i : i + h, :])
    return out


def suppress_non_maxima(maps: Tensor, size: int, *, fill: float = 0.0) -> Tensor:
    """``maps`` where a pixel equals the :func:`max_filter` of its neighbourhood, else ``fill``.

    Plateaus keep all their pixels (ties are maxima). A −inf pixel (masked out by the caller)
    whose whole neighbourhood is −inf stays −inf; next to a finite pixel it becomes ``fill``.
    (..., h, w) → (..., h, w).
    """
    return torch.where(max_filter(maps, size) == maps, maps, fill)


def pool_kernel_for(map_size: Sequence[int], thresholds: Sequence[int] = (200, 300)) -> int:
    """Centre NMS kernel 3 / 5 / 7 from a map size (h, w) (official POOL_THRESHOLD2/1).

    The mean side ``(h + w) / 2`` above ``thresholds[1]`` gives 7, above ``thresholds[0]`` 5,
    otherwise 3 (strict comparisons, as the official code).
    """
    side = (map_size[0] + map_size[1]) / 2.0
    small, large = thresholds
    return 7 if side > large else 5 if side > small else 3


def reference_index(scales: Sequence[float]) -> int:
    """Index of the reference test scale: the one equal to 1.0, else the first.

    Multi-scale maps are averaged on the grid of the reference scale, and its scores are the ones
    the other scales are renormalised to.
    """
    return list(scales).index(1.0) if 1.0 in scales else 0


def upsample_source(coord: Tensor, size: Tensor, scale: float, stride: int) -> Tensor:
    """Source coordinate in a scale-s map of an integer pixel of its official up-sampled map.

    The official ``up_interpolate`` brings a map of ``n`` pixels along an axis (at test scale s)
    to the scale-1 input resolution: bilinear with ``align_corners=True`` to ``T − r + 1`` pixels,
    T = ⌊stride / s · n⌋, r = ⌊T / n⌋, then replicate padding of ``r − 1`` pixels at the end.
    Pixel ``coord`` of the result reads the source at ``min(coord, T − r) · (n − 1) / (T − r)``
    (0 when ``T − r = 0``); coordinates beyond the padded end therefore read the last pixel.
    At s = 1 this is ``min(coord, stride · (n − 1)) / stride``.

    Args:
        coord: integer-valued coordinates (float) along one axis, ≥ 0.
        size: ``n``, the true (unpadded) map length along that axis, broadcastable to ``coord``.
        scale: test scale s. stride: input pixels per output pixel at scale 1.

    Returns:
        source coordinates in pixels of the scale-s map, same shape and dtype as ``coord``.
    """
    n = size.to(coord.dtype)
    target = torch.floor(stride / scale * n)
    ratio = torch.floor(target / n)
    last = target - ratio  # last interpolated index
    coord = torch.minimum(coord, last)
    return torch.where(last > 0, coord * (n - 1) / last.clamp(min=1), torch.zeros_like(coord))


def _lerp(low: Tensor, high: Tensor, frac: Tensor) -> Tensor:
    """``low · (1 − frac) + high · frac`` (the one interpolation formula of this module)."""
    return low * (1 - frac) + high * frac


def bilinear_points(maps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Bilinear values of maps (B, C, h, w) at per-channel points x, y (B, C, N) → (B, C, N).

    Channel c of image b is sampled at its own points ``(x[b, c, n], y[b, c, n])`` (pixel
    centres at integer coordinates): a point on a pixel centre returns that pixel, a point
    half-way between two pixels their mean. The four taps ⌊x⌋, ⌊x⌋ + 1 (and the same in y) are
    clamped to the map, so a point outside ``[0, w − 1] × [0, h − 1]`` reads the nearest border
    pixel (up to rounding): replicate padding, not zeros. Interpolates along x first, then y.
    The bounds are tensors, so a traced graph keeps them dynamic.
    """
    b, c, h, w = maps.shape
    one = x.new_ones(())  # keeps traced sizes in the graph (dynamic shapes)
    x_max, y_max = one * (w - 1), one * (h - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    flat = maps.flatten(2)  # (B, C, h·w)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        xx = torch.minimum(xx.clamp(min=0), x_max).long()
        yy = torch.minimum(yy.clamp(min=0), y_max).long()
        return flat.gather(2, yy * w + xx)

    top = _lerp(at(y0, x0), at(y0, x0 + 1), fx)
    bottom = _lerp(at(y0 + 1, x0), at(y0 + 1, x0 + 1), fx)
    return _lerp(top, bottom, fy)


def bilinear_grid(maps: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Bilinear resampling of maps (B, C, h, w) on the grid ``rows × cols`` → (B, C, H, W).

    Output pixel (i, j) of image b is the bilinear value at ``(x=cols[b, j], y=rows[b, i])``;
    rows (B, H) and cols (B, W) are source coordinates with pixel centres at integers. The
    same values as :func:`bilinear_points` at those points up to rounding (separable: along y
    first, then x). Taps are clamped to the map: points outside read the nearest border pixel.
    """
    b = maps.shape[0]

    def along(m: Tensor, src: Tensor, dim: int) -> Tensor:
        n = m.shape[dim]
        low = src.floor()
        shape = [b, 1, 1, 1]
        shape[dim] = src.shape[1]
        frac = (src - low).to(m.dtype).reshape(shape)

        def take(index: Tensor) -> Tensor:
            size = list(m.shape)
            size[dim] = src.shape[1]
            return m.gather(dim, index.clamp(0, n - 1).long().reshape(shape).expand(size))

        return _lerp(take(low), take(low + 1), frac)

    return along(along(maps, rows, 2), cols, 3)


def upsampled_points(
    maps: Tensor, sizes: Tensor, scale: float, stride: int, x: Tensor, y: Tensor
) -> Tensor:
    """Official up-sampled maps (see :func:`upsample_source`) at integer points → (B, C, N).

    Only the points are evaluated; no full-resolution map is formed.

    Args:
        maps: (B, C, h, w) at test scale ``scale``; sizes: (B, 2) true (h, w) of every image.
        x, y: (B, C, N) integer-valued pixels of the scale-1 input-resolution map, ≥ 0; beyond
            the up-sampled size they read its last row / column.
    """
    sx = upsample_source(x, sizes[:, 1, None, None], scale, stride)
    sy = upsample_source(y, sizes[:, 0, None, None], scale, stride)
    return bilinear_points(maps, sx, sy)


def upsampled_grid(
    maps: Tensor, sizes: Tensor, scale: float, stride: int, rows: Tensor, cols: Tensor
) -> Tensor:
    """Official up-sampled maps (see :func:`upsample_source`) on a grid → (B, C, H, W).

    Args:
        maps: (B, C, h, w) at test scale ``scale``; sizes: (B, 2) true (h, w) of every image.
        rows (1 or B, H), cols (1 or B, W): integer-valued pixels of the scale-1
            input-resolution map, ≥ 0.
    """
    sy = upsample_source(rows, sizes[:, 0, None].to(rows.dtype), scale, stride)
    sx = upsample_source(cols, sizes[:, 1, None].to(cols.dtype), scale, stride)
    return bilinear_grid(maps, sy, sx)
