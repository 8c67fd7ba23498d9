"""The DEKR adaptive convolution, in two numerically equivalent implementations.

Per output pixel ``p`` a 3x3 convolution samples its nine taps at ``p + M(p)·r_k + t(p)``, where
``r_k`` are the regular tap displacements ``(dy, dx)``, ``M(p)`` a predicted 2x2 matrix acting on
``(dy, dx)`` column vectors and ``t(p) = (t_y, t_x)`` a predicted translation (paper §3.2).

* ``"deform"``: ``torchvision.ops.deform_conv2d`` with offsets ``M·R − R + t`` (the kernel adds the
  regular grid itself). Fast on CUDA; its CPU backward is very slow.
* ``"grid_sample"``: bilinear sampling of the nine taps with ``F.grid_sample`` (zero padding,
  integer coordinates at pixel centres as in deform_conv2d, maps of any size including 1 pixel
  wide or high) and a 1x1 contraction with the same weight. 5-20x faster to train on CPU, and
  exports to ONNX.

Both read the same parameters (``adapt_conv.weight`` of shape (C_out, C_in, 3, 3)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from dekr.errors import OptionError

__all__ = [
    "AdaptiveConv",
    "AdaptBlock",
    "adaptive_conv",
    "deform_offsets",
    "grouped_adapt_blocks",
    "can_group",
    "resolve_impl",
    "ADAPTIVE_IMPLS",
]

ADAPTIVE_IMPLS = ("auto", "deform", "grid_sample")


def resolve_impl(impl: str, device: torch.device) -> str:
    """``"auto"`` picks ``deform`` on CUDA and ``grid_sample`` elsewhere (measured faster)."""
    if impl not in ADAPTIVE_IMPLS:
        raise OptionError(f"adaptive conv impl {impl!r} unknown; expected one of {ADAPTIVE_IMPLS}")
    if impl == "auto":
        return "deform" if device.type == "cuda" else "grid_sample"
    return impl


_TAPS = ((-1, -1, -1, 0, 0, 0, 1, 1, 1), (-1, 0, 1, -1, 0, 1, -1, 0, 1))  # rows dy, dx


def _displacements(matrix: Tensor, translation: Tensor, groups: int) -> Tensor:
    """Displacement ``M·r_k + t`` of tap k from its output pixel: (B, G, 9, 2, H, W), (dy, dx)."""
    b, _, h, w = matrix.shape
    r = torch.tensor(_TAPS, dtype=matrix.dtype, device=matrix.device)  # (2, 9)
    m = matrix.reshape(b, groups, 2, 2, h, w)
    return torch.einsum("bgijhw,jk->bgkihw", m, r) + translation.reshape(b, groups, 1, 2, h, w)


def _tap_grid(matrix: Tensor, translation: Tensor, groups: int) -> Tensor:
    """The nine tap positions of every group as a normalised ``grid_sample`` grid, (B·G, 9, H·W, 2)
    in ``(y, x)`` order, i.e. for sampling the features with H and W swapped.

    The positions are pixel ``p`` plus :func:`_displacements`, normalised for
    ``align_corners=False`` and computed as ``base(p) + s·t(p) + dy_k·s·M(p)[:, 0] +
    dx_k·s·M(p)[:, 1]`` with ``base(p) = (2p + 1) / size − 1`` and ``s = 2 / size`` per axis:
    the three per-pixel coefficient pairs (a third of the grid) take one gather and one
    multiply-add, the grid one matmul with the fixed (9, 3) matrix of rows ``(1, dy_k, dx_k)``
    (its backward one matmul too), instead of a dozen elementwise passes over the grid and their
    backward. In ``(y, x)`` order
    the pairs are plain strided views of ``translation`` and of the columns of M (no component
    swap, which no view can do); ``grid_sample`` reads ``(x, y)``, hence the swapped features.
    """
    b, _, h, w = matrix.shape
    hw = h * w
    dtype, device = matrix.dtype, matrix.device
    # align_corners=False reads the normalised g at pixel ((g + 1)·size − 1) / 2, so g = (2p + 1) /
    # size − 1 puts pixel p at p for every size, 1 included (align_corners=True maps a 1-pixel
    # axis onto pixel 0 whatever p is, instead of the zeros outside). The sizes come from the
    # traced shapes, so that an exported graph takes any input size.
    size = torch.stack([torch.as_tensor(n, dtype=dtype, device=device) for n in (h, w)])
    ys = torch.arange(h, dtype=dtype, device=device).reshape(h, 1)
    xs = torch.arange(w, dtype=dtype, device=device).reshape(1, w)
    pixels = torch.stack(torch.broadcast_tensors(ys, xs), -1).reshape(1, hw, 2)
    base = torch.cat(((2.0 * pixels + 1.0) / size - 1.0, pixels.new_zeros(2, hw, 2)))
    # materialised (it is tiny) so that the multiply-add runs over contiguous rows, not pairs
    scale = (2.0 / size).expand(3, hw, 2).contiguous()
    t = translation.reshape(b, groups, 1, 2, hw).transpose(3, 4)  # (B, G, 1, HW, 2)
    m = matrix.reshape(b, groups, 2, 2, hw).permute(0, 1, 3, 4, 2)  # (B, G, column, HW, 2)
    coef = torch.addcmul(base, torch.cat((t, m), 2), scale).reshape(b * groups, 3, hw * 2)
    r = torch.tensor(_TAPS, dtype=dtype, device=device)
    rows = torch.cat((r.new_ones(1, 9), r)).t()  # (9, 3): 1, dy, dx
    return torch.matmul(rows, coef).reshape(b * groups, 9, hw, 2)


def deform_offsets(matrix: Tensor, translation: Tensor, *, groups: int = 1) -> Tensor:
    """The offsets handed to ``deform_conv2d``: ``M·r_k + t − r_k`` (the kernel adds the regular
    grid ``r_k`` itself), as (B, G·18, H, W) with channel ``18g + 2k`` = dy and ``18g + 2k + 1`` =
    dx of tap k (taps row-major over the 3x3 kernel), the layout of the official AdaptBlock."""
    disp = _displacements(matrix, translation, groups)
    r = torch.tensor(_TAPS, dtype=disp.dtype, device=disp.device)
    b, _, _, _, h, w = disp.shape
    return (disp - r.t().reshape(1, 1, 9, 2, 1, 1)).reshape(b, groups * 18, h, w)


def adaptive_conv(
    x: Tensor,
    matrix: Tensor,
    translation: Tensor,
    weight: Tensor,
    *,
    impl: str = "auto",
    groups: int = 1,
) -> Tensor:
    """Adaptive 3x3 convolution of ``groups`` independent channel groups in one call.

    Args:
        x: (B, G·C, H, W) features; group g owns channels [gC, (g+1)C).
        matrix: (B, G·4, H, W), per group the row-major 2x2 matrix M acting on (dy, dx).
        translation: (B, G·2, H, W), per group (t_y, t_x).
        weight: (G·C_out, C, 3, 3), group g's kernel in rows [g·C_out, (g+1)·C_out).

    Returns:
        (B, G·C_out, H, W).
    """
    b, _, h, w = x.shape
    g = groups
    if resolve_impl(impl, x.device) == "deform":
        offsets = deform_offsets(matrix, translation, groups=g)
        return deform_conv2d(x, offsets, weight, padding=(1, 1))
    # At least fp32 and outside autocast: under bf16 autocast the transform arrives in bf16, whose
    # 8-bit mantissa would put the sample positions on a 1/8-pixel grid at 16-31 pixels, and
    # casting the taps (9x the input) to bf16 for the small matmul and their gradient back costs
    # more than the matmul itself (docs/benchmarks.md).
    dtype = torch.promote_types(x.dtype, torch.float32)
    on = x.device.type
    # torch.autocast raises on devices without it ("meta", where multiply-adds are counted)
    no_autocast = (
        torch.autocast(on, enabled=False)
        if torch.amp.is_autocast_available(on)
        else contextlib.nullcontext()
    )
    with no_autocast:
        x, matrix, translation = x.to(dtype), matrix.to(dtype), translation.to(dtype)
        grid = _tap_grid(matrix, translation, g)  # (y, x): sample the transposed features
        features = x.reshape(b * g, -1, h, w).transpose(2, 3)
        taps = F.grid_sample(
            features, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        ).reshape(b * g, -1, h * w)  # (B·G, C·9, H·W), channel c*9 + k, contiguous
        # The per-group 1x1 contraction as one batched matmul: the same sums as a grouped 1x1
        # convolution, whose CPU kernel is about 6x slower here forward + backward
        # (docs/benchmarks.md).
        kernel = weight.reshape(g, weight.shape[0] // g, -1).to(dtype)  # (G, C_out, C·9)
        out = torch.matmul(kernel, taps.reshape(b, g, -1, h * w))  # (B, G, C_out, H·W)
    return out.reshape(b, -1, h, w)


class AdaptiveConv(nn.Module):
    """3x3 convolution whose taps are moved by a per-pixel affine transform (no bias)."""

    def __init__(self, in_channels: int, out_channels: int, impl: str = "auto") -> None:
        super().__init__()
        resolve_impl(impl, torch.device("cpu"))  # validate early
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        # torchvision's DeformConv2d initialisation; the official init_weights leaves it alone
        # (it only re-initialises nn.Conv2d modules).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor, matrix: Tensor, translation: Tensor) -> Tensor:
        """``x`` (B, C, H, W), ``matrix`` (B, 4, H, W) row-major M, ``translation`` (B, 2, H, W)."""
        return adaptive_conv(x, matrix, translation, self.weight, impl=self.impl)


class AdaptBlock(nn.Module):
    """DEKR adaptive residual block: adaptive conv + BN + identity + ReLU.

    Parameter names follow the official ``AdaptBlock`` (``transform_matrix_conv``,
    ``translation_conv``, ``adapt_conv.weight``, ``bn``, buffer ``regular_matrix``).
    """

    def __init__(self, channels: int, impl: str = "auto") -> None:
        super().__init__()
        # Kept as a persistent buffer: official checkpoints contain it.
        self.register_buffer("regular_matrix", torch.tensor(_TAPS, dtype=torch.float32))
        self.transform_matrix_conv = nn.Conv2d(channels, 4, 3, 1, 1, bias=True)
        self.translation_conv = nn.Conv2d(channels, 2, 3, 1, 1, bias=True)
        self.adapt_conv = AdaptiveConv(channels, channels, impl)
        self.bn = nn.BatchNorm2d(channels, momentum=0.1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.adapt_conv(x, self.transform_matrix_conv(x), self.translation_conv(x))
        return self.relu(self.bn(out) + x)


def _cat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat(list(tensors))


def _grouped_batch_norm(bns: Sequence[nn.BatchNorm2d], x: Tensor) -> Tensor:
    """The BatchNorms of ``len(bns)`` channel groups as one call, running statistics included."""
    first = bns[0]
    mean, var = _cat([bn.running_mean for bn in bns]), _cat([bn.running_var for bn in bns])
    weight, bias = _cat([bn.weight for bn in bns]), _cat([bn.bias for bn in bns])
    out = F.batch_norm(x, mean, var, weight, bias, first.training, first.momentum, first.eps)
    if first.training:  # F.batch_norm updated the concatenated copies: write them back
        with torch.no_grad():
            for bn, m, v in zip(bns, mean.chunk(len(bns)), var.chunk(len(bns))):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
                bn.num_batches_tracked.add_(1)
    return out


def can_group(blocks: Sequence[AdaptBlock]) -> bool:
    """Whether :func:`grouped_adapt_blocks` reproduces these blocks (plain BatchNorm2d with
    running statistics and a fixed momentum; SyncBatchNorm needs the per-block path)."""
    return all(
        type(b.bn) is nn.BatchNorm2d and b.bn.track_running_stats and b.bn.momentum is not None
        for b in blocks
    )


def grouped_adapt_blocks(blocks: Sequence[AdaptBlock], x: Tensor) -> Tensor:
    """Block k applied to channels [kC, (k+1)C) of ``x`` (B, K·C, H, W), all in grouped calls.

    Same parameters, same result and same running-statistics updates as running the K blocks one
    by one, with ~K times fewer operator calls (the per-keypoint offset branches of DEKR).
    """
    g = len(blocks)
    convs = [(b.transform_matrix_conv, b.translation_conv) for b in blocks]
    matrix = F.conv2d(
        x, _cat([t.weight for t, _ in convs]), _cat([t.bias for t, _ in convs]), padding=1, groups=g
    )
    shift = F.conv2d(
        x, _cat([s.weight for _, s in convs]), _cat([s.bias for _, s in convs]), padding=1, groups=g
    )
    weight = _cat([b.adapt_conv.weight for b in blocks])
    out = adaptive_conv(x, matrix, shift, weight, impl=blocks[0].adapt_conv.impl, groups=g)
    return torch.relu(_grouped_batch_norm([b.bn for b in blocks], out) + x)
