"""DEKR losses (official lib/core/loss.py semantics, reference §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["heatmap_loss", "offset_loss", "DEKRLoss"]


def heatmap_loss(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Masked MSE: mean over (B, K+1, H, W) of ``weights · (pred − target)²``.

    ``weights`` carries the background weight (0.1) and the ignore mask (0).
    """
    return (weights * (pred.float() - target) ** 2).mean()


def offset_loss(pred: Tensor, target: Tensor, weights: Tensor, beta: float = 1.0 / 9) -> Tensor:
    """Weighted smooth-L1, summed, divided by the count of positive weights in the batch.

    ``weights`` (B, 2K, H, W) holds 1/√area per person in each offset window (x and y channels are
    counted separately, as the official loss does); a batch without offsets gives 0.
    """
    per_pixel = F.smooth_l1_loss(pred.float(), target, reduction="none", beta=beta)
    count = torch.count_nonzero(weights > 0).clamp(min=1)
    return (per_pixel * weights).sum() / count


class DEKRLoss(nn.Module):
    """``heatmap_factor · heatmap_loss + offset_factor · offset_loss`` (official 1.0 and 0.03)."""

    def __init__(
        self, heatmap_factor: float = 1.0, offset_factor: float = 0.03, offset_beta: float = 1.0 / 9
    ) -> None:
        super().__init__()
        self.heatmap_factor = heatmap_factor
        self.offset_factor = offset_factor
        self.offset_beta = offset_beta

    def forward(
        self, heatmaps: Tensor, offsets: Tensor, targets: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Loss terms for network outputs and a batch of targets (keys of ``encode_targets``)."""
        hm = heatmap_loss(heatmaps, targets["heatmaps"], targets["heatmap_weights"])
        off = offset_loss(offsets, targets["offsets"], targets["offset_weights"], self.offset_beta)
        total = self.heatmap_factor * hm + self.offset_factor * off
        return {"loss": total, "heatmap_loss": hm.detach(), "offset_loss": off.detach()}
