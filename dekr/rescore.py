"""Rescoring net: predicts a pose's OKS from its geometry and joint scores (official RESCORE).

Features (``rescore_features``) for L skeleton limbs (a, b) of the spec, from poses in original
image pixels: Δ = p_a − p_b (2 values per limb, interleaved) and |Δ|, all divided by the mean
length of the limbs ``spec.rescore_scale_limbs`` clamped to ≥ 1, then the K joint scores:
3·L + K inputs (74 for COCO, 59 for CrowdPose). The net is Linear–ReLU–Linear–ReLU–Linear with
layers named ``l1``, ``l2``, ``l3`` as the official ``PredictOKSNet``, so its
``final_rescore_coco_kpt.pth`` loads unchanged. Final score = predicted OKS × pose score, NaN → 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor, nn

from dekr.errors import CheckpointError
from dekr.keypoints import KeypointSpec
from dekr.models.weights import read_state_dict

__all__ = ["rescore_features", "RescoreNet", "Rescorer", "fit_rescore_net"]


def rescore_features(keypoints: Union[Tensor, np.ndarray], spec: KeypointSpec) -> Tensor:
    """(N, K, 3) poses (x, y, joint score) → (N, 3·L + K) float32 features."""
    kps = torch.as_tensor(keypoints).float().reshape(-1, spec.num_keypoints, 3)
    limbs = torch.tensor(spec.limbs, dtype=torch.long, device=kps.device).reshape(-1, 2)
    delta = kps[:, limbs[:, 0], :2] - kps[:, limbs[:, 1], :2]  # (N, L, 2)
    length = delta.norm(dim=-1)  # (N, L)
    if spec.rescore_scale_limbs:
        norm = length[:, list(spec.rescore_scale_limbs)].mean(-1, keepdim=True).clamp(min=1.0)
    else:
        norm = torch.ones_like(length[:, :1])
    feats = [(delta / norm[..., None]).flatten(1), length / norm, kps[..., 2]]
    return torch.cat(feats, dim=1)


class RescoreNet(nn.Module):
    """MLP (3·L + K) → hidden → hidden → 1, predicting OKS; official parameter names."""

    def __init__(self, in_features: int, hidden: int = 256) -> None:
        super().__init__()
        self.l1 = nn.Linear(in_features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)
        self.relu = nn.ReLU()

    @classmethod
    def from_spec(cls, spec: KeypointSpec, hidden: int = 256) -> RescoreNet:
        return cls(3 * len(spec.limbs) + spec.num_keypoints, hidden)

    def init_weights(self) -> None:
        """Official training init: kaiming_uniform(a=1), zero biases."""
        for m in (self.l1, self.l2, self.l3):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)

    def forward(self, features: Tensor) -> Tensor:
        """(N, F) → (N,) predicted OKS."""
        return self.l3(self.relu(self.l2(self.relu(self.l1(features)))))[:, 0]


class Rescorer:
    """Callable ``(keypoints (N, K, 3), scores (N,)) → rescored (N,)`` for the decoder/inference."""

    def __init__(self, net: RescoreNet, spec: KeypointSpec) -> None:
        self.net = net.eval()
        self.spec = spec

    @classmethod
    def load(cls, path: Union[str, Path], spec: KeypointSpec, hidden: int = 256) -> Rescorer:
        """From a state dict file (official ``final_rescore_*.pth`` or :func:`fit_rescore_net`)."""
        state = read_state_dict(path)  # safe load, clear errors, ``module.`` stripped
        net = RescoreNet.from_spec(spec, hidden)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:  # another K or not a rescoring net
            lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
            raise CheckpointError(
                f"{path}: not a rescoring net for {spec.num_keypoints} keypoints "
                f"({(lines or [str(err)])[0]})"
            ) from None
        return cls(net, spec)

    @torch.no_grad()
    def __call__(
        self, keypoints: Union[Tensor, np.ndarray], scores: Union[Tensor, np.ndarray]
    ) -> Union[Tensor, np.ndarray]:
        """Predicted OKS × ``scores`` (NaN → 0), same type and dtype as ``scores``."""
        param = next(self.net.parameters())
        oks = self.net(rescore_features(keypoints, self.spec).to(param))
        given = torch.as_tensor(scores)
        out = torch.nan_to_num(oks.to(given) * given, nan=0.0)
        return out.numpy() if isinstance(scores, np.ndarray) else out


def fit_rescore_net(
    features: Tensor,
    targets: Tensor,
    *,
    hidden: int = 256,
    epochs: int = 20,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[RescoreNet, list[float]]:
    """Train a :class:`RescoreNet` (MSE, Adam; official RESCORE settings); returns net, losses.

    Args:
        features: (N, F) from :func:`rescore_features`. targets: (N,) OKS with the ground truth.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = RescoreNet(features.shape[1], hidden)
    net.init_weights()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=gen)
        total, steps = 0.0, 0
        for start in range(0, len(features), batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.mse_loss(net(features[idx]), targets[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
    return net.eval(), losses
