"""Model size: parameters and multiply-adds, counted as the official model summary does."""

from __future__ import annotations

import torch
from torch import nn

from dekr.models.adaptive import AdaptiveConv

__all__ = ["count_parameters", "count_multiply_adds"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_multiply_adds(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Multiply-adds of Conv2d, Linear and adaptive convolutions for one ``(H, W)`` image.

    As in the official ``get_model_summary``: weight numel × output H·W per convolution (the
    adaptive convolution counted like a plain 3x3 conv); BN, up-sampling, bilinear sampling and
    post-processing are not counted. W32 at 512²: 45,385,056,256.
    """
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        spatial = output[0, 0].numel() if output.dim() == 4 else 1
        total += module.weight.numel() * spatial

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, AdaptiveConv))
    ]
    was_training = model.training
    grouped = getattr(model, "grouped_offsets", None)
    try:
        model.eval()
        if grouped is not None:
            model.grouped_offsets = False  # count the branches module by module
        param = next(model.parameters())
        model(torch.zeros(1, 3, *input_size, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if grouped is not None:
            model.grouped_offsets = grouped
    return total
