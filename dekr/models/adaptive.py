"""The DEKR adaptive convolution, in two numerically equivalent implementations.

Per output pixel ``p`` a 3x3 convolution samples its nine taps at ``p + M(p)·r_k + t(p)``, where
``r_k`` are the regular tap displacements ``(dy, dx)``, ``M(p)`` a predicted 2x2 matrix acting on
``(dy, dx)`` column vectors and ``t(p) = (t_y, t_x)`` a predicted translation (paper §3.2).

* ``"deform"``: ``torchvision.ops.deform_conv2d`` with offsets ``M·R − R + t`` (the kernel adds the
  regular grid itself). Fast on CUDA; its CPU backward is very slow.
* ``"grid_sample"``: bilinear sampling of the nine taps with ``F.grid_sample`` (zero padding,
  ``align_corners=True`` so that integer coordinates are pixel centres, as in deform_conv2d) and a
  1x1 contraction with the same weight. 5-20x faster to train on CPU, and exports to ONNX.

Both read the same parameters (``adapt_conv.weight`` of shape (C_out, C_in, 3, 3)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = ["AdaptiveConv", "AdaptBlock", "resolve_impl", "ADAPTIVE_IMPLS"]

ADAPTIVE_IMPLS = ("auto", "deform", "grid_sample")


def resolve_impl(impl: str, device: torch.device) -> str:
    """``"auto"`` picks ``deform`` on CUDA and ``grid_sample`` elsewhere (measured faster)."""
    if impl not in ADAPTIVE_IMPLS:
        raise ValueError(f"adaptive conv impl {impl!r} unknown; expected one of {ADAPTIVE_IMPLS}")
    if impl == "auto":
        return "deform" if device.type == "cuda" else "grid_sample"
    return impl


def sample_taps(x: Tensor, positions: Tensor) -> Tensor:
    """Bilinearly sample ``x`` at the nine tap positions, zeros outside.

    Args:
        x: features (B, C, H, W).
        positions: absolute sample positions (B, 9, 2, H, W) as ``(y, x)`` in pixels.

    Returns:
        (B, C*9, H, W), channel ``c*9 + k`` holding tap k of channel c.
    """
    b, c, h, w = x.shape
    py, px = positions[:, :, 0], positions[:, :, 1]  # (B, 9, H, W)
    gx = px * (2.0 / max(w - 1, 1)) - 1.0
    gy = py * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).reshape(b, 9 * h, w, 2)
    taps = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return taps.reshape(b, c * 9, h, w)


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
        grid = torch.tensor([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]])
        self.register_buffer("_taps", grid.float(), persistent=False)

    def forward(self, x: Tensor, matrix: Tensor, translation: Tensor) -> Tensor:
        """``x`` (B, C, H, W), ``matrix`` (B, 4, H, W) row-major M, ``translation`` (B, 2, H, W)."""
        b, _, h, w = x.shape
        m = matrix.reshape(b, 2, 2, h, w)
        r = self._taps.to(x.dtype)  # (2, 9): rows dy, dx
        # displacement of tap k: M·r_k + t  -> (B, 9, 2, H, W)
        disp = torch.einsum("bijhw,jk->bkihw", m, r) + translation.unsqueeze(1)
        impl = resolve_impl(self.impl, x.device)
        if impl == "deform":
            offsets = disp - r.t().reshape(1, 9, 2, 1, 1)  # deform_conv2d adds the grid itself
            return deform_conv2d(x, offsets.reshape(b, 18, h, w), self.weight, padding=(1, 1))
        ys = torch.arange(h, device=x.device, dtype=x.dtype).reshape(1, 1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).reshape(1, 1, 1, w)
        positions = disp + torch.stack(torch.broadcast_tensors(ys, xs), dim=2)  # (1, 1, 2, H, W)
        taps = sample_taps(x, positions)
        weight = self.weight.reshape(self.weight.shape[0], -1, 1, 1)
        return F.conv2d(taps, weight)


class AdaptBlock(nn.Module):
    """DEKR adaptive residual block: adaptive conv + BN + identity + ReLU.

    Parameter names follow the official ``AdaptBlock`` (``transform_matrix_conv``,
    ``translation_conv``, ``adapt_conv.weight``, ``bn``, buffer ``regular_matrix``).
    """

    def __init__(self, channels: int, impl: str = "auto") -> None:
        super().__init__()
        grid = torch.tensor([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]])
        # Kept as a persistent buffer: official checkpoints contain it.
        self.register_buffer("regular_matrix", grid.float())
        self.transform_matrix_conv = nn.Conv2d(channels, 4, 3, 1, 1, bias=True)
        self.translation_conv = nn.Conv2d(channels, 2, 3, 1, 1, bias=True)
        self.adapt_conv = AdaptiveConv(channels, channels, impl)
        self.bn = nn.BatchNorm2d(channels, momentum=0.1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.adapt_conv(x, self.transform_matrix_conv(x), self.translation_conv(x))
        return self.relu(self.bn(out) + x)
