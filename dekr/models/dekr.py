"""The DEKR network: HRNet backbone + heatmap head + per-keypoint adaptive offset regression.

Parameter names equal the official ``PoseHigherResolutionNet`` (lib/models/hrnet_dekr.py), so
``model.load_state_dict(official_state_dict, strict=True)`` works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dekr.errors import OptionError
from dekr.models.adaptive import AdaptBlock, AdaptiveConv, can_group, grouped_adapt_blocks
from dekr.models.hrnet import HRNET_SPECS, BasicBlock, HRNet, HRNetSpec, conv_bn

__all__ = ["DEKR", "build_model", "init_official", "init_from_scratch", "INITS"]

INITS = ("official", "scratch")


class DEKR(HRNet):
    """DEKR pose network.

    ``forward(images (B, 3, H, W))`` returns ``(heatmaps (B, K+1, H/4, W/4), offsets (B, 2K, H/4,
    W/4))`` in train and eval mode alike: K keypoint heatmaps with the person centre last (no
    sigmoid), and offsets ``pixel − keypoint`` in output pixels, x at channel 2k, y at 2k+1.

    Args:
        spec: HRNet variant (see :data:`dekr.models.hrnet.HRNET_SPECS`).
        num_keypoints: K.
        adaptive_impl: ``"auto"``, ``"deform"`` or ``"grid_sample"`` (see
            :mod:`dekr.models.adaptive`); the choice does not change the parameters.
        offset_scale: output pixels per unit of the offset branches' final convolutions
            (official: 1). The offsets are still returned in output pixels. With the official
            N(0, 0.001²) initialisation and Adam, whose steps are bounded by the learning rate,
            offsets of tens of pixels take about a thousand steps to reach at scale 1; a larger
            scale shortens that for short runs (``recipes/quickstart.yaml``).
        offset_blocks: adaptive blocks in each keypoint's offset branch (official: 2). On the
            CPU they are about half of a training step of the quickstart network; one block
            trains 1.33x faster there and reached a higher AP in the same minutes
            (docs/benchmarks.md).
    """

    def __init__(
        self,
        spec: HRNetSpec,
        num_keypoints: int,
        adaptive_impl: str = "auto",
        offset_scale: float = 1.0,
        offset_blocks: int = 2,
    ) -> None:
        super().__init__(spec)
        if num_keypoints < 1:
            raise OptionError(f"num_keypoints must be >= 1, got {num_keypoints}")
        if not offset_scale > 0:
            raise OptionError(f"offset_scale must be > 0, got {offset_scale}")
        if (
            isinstance(offset_blocks, bool)
            or not isinstance(offset_blocks, int)
            or offset_blocks < 1
        ):
            raise OptionError(f"model.offset_blocks must be an integer >= 1, got {offset_blocks!r}")
        self.num_keypoints = num_keypoints
        self.offset_scale = float(offset_scale)
        feat = self.out_channels
        hc, oc = spec.head_channels, spec.offset_channels_per_keypoint
        # Official layer order and names (hrnet_dekr.py:63-137); transitions use default BN.
        self.transition_heatmap = conv_bn(feat, hc, 1)
        self.transition_offset = conv_bn(feat, num_keypoints * oc, 1)
        self.head_heatmap = nn.ModuleList(
            [nn.Sequential(BasicBlock(hc, hc)), nn.Conv2d(hc, num_keypoints + 1, 1)]
        )
        # Built keypoint by keypoint (two AdaptBlocks, then the final conv), in the official
        # construction order (hrnet_dekr.py _make_separete_regression_head), so that a seeded
        # construction draws the same default initial values as the official network.
        features, finals = [], []
        for _ in range(num_keypoints):
            features.append(
                nn.Sequential(*(AdaptBlock(oc, adaptive_impl) for _ in range(offset_blocks)))
            )
            finals.append(nn.Conv2d(oc, 2, 1))
        self.offset_feature_layers = nn.ModuleList(features)
        self.offset_final_layer = nn.ModuleList(finals)
        # Run the K branches as grouped operations (~K times fewer calls, same result).
        self.grouped_offsets = True

    def set_adaptive_impl(self, impl: str) -> None:
        """Switch every adaptive convolution to ``impl`` (weights are shared by both)."""
        for m in self.modules():
            if isinstance(m, AdaptiveConv):
                m.impl = impl

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.concat(super().forward(images))
        heatmaps = self.head_heatmap[1](self.head_heatmap[0](self.transition_heatmap(feature)))
        offsets = self._offsets(self.transition_offset(feature))
        return heatmaps, offsets if self.offset_scale == 1.0 else offsets * self.offset_scale

    def _offsets(self, feature: Tensor) -> Tensor:
        """The K offset branches: as grouped calls (one per block, same parameters and result)
        or, when a block cannot be grouped (e.g. SyncBatchNorm), one branch at a time."""
        depth = len(self.offset_feature_layers[0])
        stages = [[layers[j] for layers in self.offset_feature_layers] for j in range(depth)]
        if self.grouped_offsets and all(can_group(blocks) for blocks in stages):
            for blocks in stages:
                feature = grouped_adapt_blocks(blocks, feature)
            finals = self.offset_final_layer
            weight = torch.cat([c.weight for c in finals])
            return F.conv2d(
                feature, weight, torch.cat([c.bias for c in finals]), groups=self.num_keypoints
            )
        # split (not slicing): its backward is one concatenation instead of K zero-filled copies
        chunks = feature.split(self.spec.offset_channels_per_keypoint, dim=1)
        offsets = [
            final(layers(chunk))
            for chunk, layers, final in zip(
                chunks, self.offset_feature_layers, self.offset_final_layer
            )
        ]
        return torch.cat(offsets, dim=1)


def init_official(model: nn.Module) -> None:
    """The official training initialisation (hrnet_dekr.py ``init_weights``, before loading).

    Conv2d weights ~ N(0, 0.001²) and biases 0; BN γ=1, β=0; the adaptive blocks' transform and
    translation convs all zero, so every adaptive conv starts as a 1x1 conv (M = 0, t = 0).
    ``AdaptiveConv`` weights keep their kaiming-uniform default, as the official DeformConv2d does.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, AdaptBlock):
            for conv in (m.transform_matrix_conv, m.translation_conv):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)


def init_from_scratch(model: DEKR) -> None:
    """:func:`init_official`, but every convolution that a BatchNorm follows (the backbone, the
    transitions, the heads' blocks) drawn as torchvision's ResNets draw theirs (Kaiming normal,
    fan-out, ReLU gain) instead of N(0, 0.001²).

    The official scale suits a network whose backbone is then loaded from ImageNet weights. From
    scratch, a BatchNorm makes its convolution's output independent of the weights' scale while
    Adam moves every weight by about the learning rate per step, so weights of 0.001 change
    several times their own size in one step at the quickstart's learning rate; at Kaiming scale
    (0.03-0.3 at these widths) a step changes them by a few percent. The output convolutions
    (heatmaps, offsets; no BatchNorm after them) keep N(0, 0.001²) and the adaptive blocks'
    transform and translation convolutions stay 0, as official.
    """
    init_official(model)
    kept = {id(model.head_heatmap[1]), *(id(c) for c in model.offset_final_layer)}
    for m in model.modules():
        if isinstance(m, AdaptBlock):
            kept.update((id(m.transform_matrix_conv), id(m.translation_conv)))
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in kept:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_model(
    backbone: str | HRNetSpec = "hrnet_w32",
    *,
    num_keypoints: int,
    adaptive_impl: str = "auto",
    offset_scale: float = 1.0,
    offset_blocks: int = 2,
    init: str = "official",
) -> DEKR:
    """A DEKR network, initialised.

    Args:
        backbone: a name from :data:`HRNET_SPECS` or an :class:`HRNetSpec`.
        num_keypoints: K (from the :class:`~dekr.keypoints.KeypointSpec`).
        adaptive_impl: adaptive convolution implementation.
        offset_scale: see :class:`DEKR` (official: 1).
        offset_blocks: see :class:`DEKR` (official: 2).
        init: ``"official"`` (:func:`init_official`, for a backbone then loaded from ImageNet
            weights) or ``"scratch"`` (:func:`init_from_scratch`, for training without them).
    """
    if init not in INITS:
        raise OptionError(f"model.init={init!r} unknown; expected one of {INITS}")
    if isinstance(backbone, str):
        try:
            spec = HRNET_SPECS[backbone]
        except KeyError:
            raise OptionError(
                f"unknown backbone {backbone!r}; expected one of {sorted(HRNET_SPECS)}"
            ) from None
    else:
        spec = backbone
    model = DEKR(spec, num_keypoints, adaptive_impl, offset_scale, offset_blocks)
    (init_official if init == "official" else init_from_scratch)(model)
    return model
