"""HRNet backbone with the official parameter names.

The module tree (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``, ``transition{1,2,3}``,
``stage{2,3,4}`` with ``branches`` and ``fuse_layers``) reproduces the official HRNet / DEKR
backbone key for key, so official DEKR checkpoints and ImageNet classification HRNets (official or
timm ``hrnet_w*``) load without any key mapping. Variants are data: :data:`HRNET_SPECS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HRNetSpec", "HRNET_SPECS", "HRNet", "BasicBlock", "Bottleneck"]

BN_MOMENTUM = 0.1  # official conv_block.py BN_MOMENTUM


@dataclass(frozen=True)
class HRNetSpec:
    """One HRNet variant.

    Args:
        channels: branch widths of the last stage (4 entries); stage i uses the first i+1.
        num_modules: HighResolutionModules in stages 2, 3 and 4 (official: 1, 4, 3).
        num_blocks: BasicBlocks per branch in every module (official: 4).
        stem_channels: width of the two stride-2 stem convolutions (official: 64).
        stage1_planes: bottleneck planes of ``layer1`` (output is 4x this; official: 64).
        stage1_blocks: bottlenecks in ``layer1`` (official: 4).
        head_channels: width of the heatmap head (official: 32 for W32, 48 for W48).
        offset_channels_per_keypoint: width of each keypoint's offset branch (official: 15).
    """

    channels: tuple[int, int, int, int]
    num_modules: tuple[int, int, int] = (1, 4, 3)
    num_blocks: int = 4
    stem_channels: int = 64
    stage1_planes: int = 64
    stage1_blocks: int = 4
    head_channels: int = 32
    offset_channels_per_keypoint: int = 15


HRNET_SPECS: dict[str, HRNetSpec] = {
    # Official DEKR / HRNet-ImageNet variants (experiments/coco/w32, w48 yaml MODEL.SPEC).
    "hrnet_w18": HRNetSpec(channels=(18, 36, 72, 144), head_channels=18),
    "hrnet_w32": HRNetSpec(channels=(32, 64, 128, 256), head_channels=32),
    "hrnet_w48": HRNetSpec(channels=(48, 96, 192, 384), head_channels=48),
    # Narrow CPU presets for tests and the quickstart (no official weights exist for these).
    "hrnet_w16_small": HRNetSpec(
        channels=(16, 32, 64, 128), num_modules=(1, 1, 1), num_blocks=2, stem_channels=32,
        stage1_planes=32, stage1_blocks=1, head_channels=16, offset_channels_per_keypoint=8,
    ),
    "hrnet_w8_tiny": HRNetSpec(
        channels=(8, 16, 32, 64), num_modules=(1, 1, 1), num_blocks=1, stem_channels=16,
        stage1_planes=16, stage1_blocks=1, head_channels=8, offset_channels_per_keypoint=4,
    ),
    # hrnet_w8_tiny at 3x the branch widths: the quickstart's network. On a 2-core CPU a step
    # costs about 1.4x hrnet_w8_tiny's, and ten epochs reach far more AP (docs/benchmarks.md).
    "hrnet_w24_tiny": HRNetSpec(
        channels=(24, 48, 96, 192), num_modules=(1, 1, 1), num_blocks=1, stem_channels=32,
        stage1_planes=32, stage1_blocks=1, head_channels=24, offset_channels_per_keypoint=4,
    ),
}  # fmt: skip


def conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True
) -> nn.Sequential:
    """conv (no bias) + BN (+ ReLU) as a ``Sequential`` (keys ``0`` conv, ``1`` BN)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual connection (``expansion`` 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with a residual connection (``expansion`` 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


def make_layer(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int
) -> nn.Sequential:
    """``blocks`` residual blocks; the first gets a 1x1 projection when the width changes."""
    downsample = None
    if inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, bias=False),
            nn.BatchNorm2d(planes * block.expansion, momentum=BN_MOMENTUM),
        )
    layers = [block(inplanes, planes, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by SUM fusion across resolutions."""

    def __init__(self, channels: tuple[int, ...], num_blocks: int) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(make_layer(BasicBlock, c, c, num_blocks) for c in channels)
        fuse_layers = []
        for i in range(n):
            row: list[nn.Module] = []
            for j in range(n):
                if j > i:  # lower resolution: 1x1 conv + BN, then nearest up-sampling in forward
                    row.append(conv_bn(channels[j], channels[i], 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution: i-j stride-2 3x3 convs, ReLU on all but the last
                    steps = [conv_bn(channels[j], channels[j], 3, 2) for _ in range(i - j - 1)]
                    steps.append(conv_bn(channels[j], channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            y = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                z = layer(xs[j])
                if j > i:
                    z = F.interpolate(z, size=size, mode="nearest")
                y = y + z
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """HRNet feature extractor: 4 branches at strides 4, 8, 16, 32.

    ``forward(images (B, 3, H, W))`` returns the list of the four branch maps; :meth:`concat`
    turns it into the DEKR feature (bilinear up-sampling to stride 4 and concatenation).
    """

    def __init__(self, spec: HRNetSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.stem_channels
        self.conv1 = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(c, c, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, c, spec.stage1_planes, spec.stage1_blocks)
        previous = [spec.stage1_planes * Bottleneck.expansion]
        for s in range(3):
            current = spec.channels[: s + 2]
            setattr(self, f"transition{s + 1}", self._transition(previous, current))
            modules = [
                HighResolutionModule(current, spec.num_blocks) for _ in range(spec.num_modules[s])
            ]
            setattr(self, f"stage{s + 2}", nn.Sequential(*modules))
            previous = list(current)

    @staticmethod
    def _transition(previous: list[int], current: tuple[int, ...]) -> nn.ModuleList:
        layers: list[nn.Module] = []
        for i, c in enumerate(current):
            if i < len(previous):
                same = c == previous[i]
                layers.append(nn.Identity() if same else conv_bn(previous[i], c, 3))
            else:  # a new branch from the last existing one (official: one stride-2 conv)
                layers.append(nn.Sequential(conv_bn(previous[-1], c, 3, 2)))
        return nn.ModuleList(layers)

    @property
    def out_channels(self) -> int:
        """Channels of the concatenated feature (480 for W32)."""
        return sum(self.spec.channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in range(3):
            transition = getattr(self, f"transition{s + 1}")
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            for module in getattr(self, f"stage{s + 2}"):
                xs = module(xs)
        return xs

    @staticmethod
    def concat(features: list[Tensor]) -> Tensor:
        """Up-sample branches 1..3 bilinearly (align_corners=False) to stride 4 and concatenate."""
        size = features[0].shape[-2:]
        ups = [
            _dense_grad(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
            for f in features[1:]
        ]
        return torch.cat([features[0], *ups], dim=1)


class _DenseChannelsLastGrad(torch.autograd.Function):
    """The identity, whose backward hands on its gradient as a dense channels-last tensor.

    The gradient of one part of a channel concatenation is a channel slice of the whole one:
    neither NCHW- nor channels-last-contiguous, so the CPU bilinear up-sampling backward copies it
    to NCHW and takes its slow path there (17 of 370 ms of the quickstart's training step, against
    under 1 ms channels-last: docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def _dense_grad(x: Tensor) -> Tensor:
    """``x`` (B, C, H, W), with a dense channels-last gradient where a channels-last tensor is
    trained (eager autograd only: traced, scripted and exported graphs see the plain tensor)."""
    if (
        x.requires_grad
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
    ):
        return _DenseChannelsLastGrad.apply(x)
    return x
